"""Writes corpora from the embedded Bible in the local format: a user's stand-in, or the base model's.

    .venv/bin/python launch/own_corpus_bible.py OUT_DIR [--high-size 5800] [--low-size 600]
    .venv/bin/python launch/own_corpus_bible.py OUT_DIR --base
    .venv/bin/python launch/own_corpus_bible.py OUT_DIR --group fr,pt=5800 --group ro,vi=600 [--allow-restricted]

The default is the size of corpus in issue 15 part 5: four high-resource languages (es fr ar ru)
with about 5,800 training pairs each, four low-resource ones (it tl fa de) with about 600, every
one into English, valid and test whole (376 and 954 pairs per language). docs/own_corpus.md
trains on it.

--group LANGS=SIZE (repeatable) writes any other shape: each group's languages with SIZE training
pairs each (SIZE "all": every training pair); --allow-restricted admits the restricted Bibles.

--base writes the corpus of the base model (docs/results/base_cpu/): the 16 languages of BASE
into English, every training pair of each. Six of those Bibles are restricted (copyrighted per the
app that ships them, or of unclear licence, docs/data.md), so this corpus, and the model trained on
it, are for local use only and never committed. ko, zh, ja, hi and bn stay out of the base: five
languages, four of them in scripts the base never sees, left for fine-tuning.

Reproducible without a network once the Bible is in the cache ($CATS_DS_CACHE). OUT_DIR gets
only the .tsv files and no manifest, as a user's own directory would: the run config names the
low-resource tasks (data.low_resource), since nothing in the directory says which they are.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cats_ds.data import bible

HIGH = ("es", "fr", "ar", "ru")
LOW = ("it", "tl", "fa", "de")
BASE = ("fr", "es", "it", "de", "ar", "ru", "fa", "vi", "tl", "pl", "ro", "tr", "sw", "id", "pt", "uk")


def write_groups(out_dir: Path, groups: Sequence[tuple[tuple[str, ...], int | None]], seed: int = 1,
                 db_path: Path | None = None, allow_restricted: bool = False) -> list[Path]:
    """Writes each group of languages with `size` training pairs each (the verses prepare_bible
    keeps for a low-resource language at that size), or all of them for size None; valid and test
    whole. Returns the .tsv files written into out_dir. db_path: another bible.db than the cached
    one (tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as staging:
        for index, (languages, size) in enumerate(groups):
            whole, subsampled = (languages, ()) if size is None else ((), languages)
            preset = bible.BiblePreset(f"corpus-group-{index}", high=whole, low=subsampled)
            part = bible.prepare_bible(preset, "x2en", Path(staging) / str(index), low_resource_size=size or 1,
                                       seed=seed, db_path=db_path, allow_restricted=allow_restricted)
            for path in sorted(part.glob("*.tsv")):
                written.append(Path(shutil.copy2(path, out_dir / path.name)))
    return written


def write_corpus(out_dir: Path, high_size: int, low_size: int, seed: int = 1,
                 db_path: Path | None = None) -> list[Path]:
    """The own-corpus stand-in: HIGH with high_size training pairs each, LOW with low_size."""
    return write_groups(out_dir, [(HIGH, high_size), (LOW, low_size)], seed, db_path)


def write_base_corpus(out_dir: Path, db_path: Path | None = None) -> list[Path]:
    """The base model's corpus: every training pair of the BASE languages (restricted Bibles included)."""
    return write_groups(out_dir, [(BASE, None)], db_path=db_path, allow_restricted=True)


def parse_group(text: str) -> tuple[tuple[str, ...], int | None]:
    """'fr,pt=5800' -> (("fr", "pt"), 5800); 'fr=all' -> (("fr",), None)."""
    languages, sep, size = text.partition("=")
    if not sep or not languages or not (size == "all" or size.isdigit() and int(size) > 0):
        raise argparse.ArgumentTypeError(f"--group {text!r}: expected LANGS=SIZE, e.g. fr,pt=5800 or fr=all")
    return tuple(languages.split(",")), None if size == "all" else int(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--high-size", type=int, default=5800, help="train pairs per high-resource language")
    parser.add_argument("--low-size", type=int, default=600, help="train pairs per low-resource language")
    parser.add_argument("--base", action="store_true", help="the base model's corpus (local use only)")
    parser.add_argument("--group", type=parse_group, action="append", default=[],
                        help="LANGS=SIZE: these languages with SIZE train pairs each ('all': every pair)")
    parser.add_argument("--allow-restricted", action="store_true",
                        help="admit the restricted Bibles (the corpus is then for local use only)")
    args = parser.parse_args()
    if (args.out_dir / "manifest.json").exists():
        parser.error(f"{args.out_dir}: holds a manifest.json (a prepared corpus); choose another directory")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.base and args.group:
        parser.error("--base and --group: choose one")
    if args.base:
        written = write_base_corpus(args.out_dir)
    elif args.group:
        written = write_groups(args.out_dir, args.group, allow_restricted=args.allow_restricted)
    else:
        written = write_corpus(args.out_dir, args.high_size, args.low_size)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
