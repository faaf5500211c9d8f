"""Writes a stand-in for a user's own corpus, from the embedded Bible, in the local format.

    .venv/bin/python launch/own_corpus_bible.py OUT_DIR [--high-size 5800] [--low-size 600]

The size of the corpus in issue 15 part 5: four high-resource languages (es fr ar ru) with about
5,800 training pairs each, four low-resource ones (it tl fa de) with about 600, every one into
English, valid and test whole (376 and 954 pairs per language). It is reproducible without a
network once the Bible is in the cache ($CATS_DS_CACHE). OUT_DIR gets only the .tsv files and no
manifest, as a user's own directory would: the run config names the low-resource tasks
(data.low_resource), since nothing in the directory says which they are. docs/own_corpus.md
trains on it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from cats_ds.data import bible

HIGH = ("es", "fr", "ar", "ru")
LOW = ("it", "tl", "fa", "de")


def write_corpus(out_dir: Path, high_size: int, low_size: int, seed: int = 1,
                 db_path: Path | None = None) -> list[Path]:
    """Each group is prepared as a Bible preset of only subsampled languages (the verses
    prepare_bible picks for a low-resource language), then its .tsv files are copied into
    out_dir; returns them. db_path: another bible.db than the cached one (tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as staging:
        for group, languages, size in (("high", HIGH, high_size), ("low", LOW, low_size)):
            preset = bible.BiblePreset(f"own-corpus-{group}", high=(), low=languages)
            part = bible.prepare_bible(preset, "x2en", Path(staging) / group, low_resource_size=size, seed=seed,
                                       db_path=db_path)
            for path in sorted(part.glob("*.tsv")):
                written.append(Path(shutil.copy2(path, out_dir / path.name)))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--high-size", type=int, default=5800, help="train pairs per high-resource language")
    parser.add_argument("--low-size", type=int, default=600, help="train pairs per low-resource language")
    args = parser.parse_args()
    if (args.out_dir / "manifest.json").exists():
        parser.error(f"{args.out_dir}: holds a manifest.json (a prepared corpus); choose another directory")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in write_corpus(args.out_dir, args.high_size, args.low_size):
        print(path)


if __name__ == "__main__":
    main()
