"""The local parallel-corpus format: per-direction files in one directory, read and written.

Every corpus source (the embedded Bible, Hugging Face datasets, a user's own
files) is converted into this format once; the rest of the pipeline reads only
this format. A corpus directory holds, for each split and direction, either

    {split}.{src}-{tgt}.tsv                  one "src<TAB>tgt" per line, UTF-8
or
    {split}.{src}-{tgt}.{src} and {split}.{src}-{tgt}.{tgt}
                                             fairseq style, line-aligned, UTF-8

never both, and optionally a manifest.json written last by the tool that
prepared the directory (its parameters, counts and the files it wrote), so a
directory with a manifest is complete. Any other file whose name starts with a split
name (``train.de-en.tsv.gz``, ``train.de_en.tsv``) is refused by name: skipping it would
silently remove its direction. Reading normalizes every line with `clean_text`, drops pairs that
are empty on either side (one warning per file, with the count and the first
line numbers) and refuses everything else that is wrong with an error naming
the file and line.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from cats_ds.data.languages import check_language

logger = logging.getLogger(__name__)

# Invisible characters that only get in the way of tokenization: zero width
# space, left-to-right / right-to-left marks, byte order mark / zero width
# no-break space, word joiner and soft hyphen. U+200C/U+200D (zero width
# non-joiner / joiner) are kept on purpose: they are part of Persian and Indic
# spelling, and deleting them changes the words.
_INVISIBLE = re.compile("[\u200b\u200e\u200f\ufeff\u2060\u00ad]")
_SHOWN_LINE_NUMBERS = 5
MANIFEST_NAME = "manifest.json"


class CorpusError(ValueError):
    """Bad corpus data or layout; the message names the file (and line)."""


def clean_text(text: str) -> str:
    """NFC-normalize, delete invisible marks, collapse whitespace runs to one space, strip."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFC", text))
    return " ".join(text.split())  # str.split() splits on every Unicode whitespace


@dataclass(frozen=True, order=True)
class Direction:
    """A translation direction, e.g. fr-en (source French, target English)."""

    src: str
    tgt: str

    def __post_init__(self) -> None:
        where = f"direction {self.src}-{self.tgt}"
        check_language(self.src, where)
        check_language(self.tgt, where)
        if self.src == self.tgt:
            raise ValueError(f"{where}: source and target language are the same")

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"

    @classmethod
    def parse(cls, text: str, where: str) -> Direction:
        """Parse "src-tgt"; `where` (file or config key) is named in any error."""
        parts = text.split("-")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{where}: direction {text!r} is not of the form SRC-TGT, e.g. 'fr-en'")
        src, tgt = (check_language(code, where) for code in parts)
        if src == tgt:
            raise ValueError(f"{where}: direction {text!r} has the same source and target language")
        return cls(src, tgt)


@dataclass
class Bitext:
    """One split of one direction: aligned source and target sentences."""

    direction: Direction
    src: list[str]
    tgt: list[str]
    origin: str  # the file(s) it came from, for messages
    dropped_empty: int = 0  # pairs dropped while reading for being empty on a side

    def __post_init__(self) -> None:
        if len(self.src) != len(self.tgt):
            raise ValueError(
                f"{self.origin}: Bitext {self.direction.name} has {len(self.src)} source and "
                f"{len(self.tgt)} target sentences"
            )

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class _DirectionFiles:
    """The files found for one direction of one split."""

    tsv: Path | None = None
    sides: dict[str, Path] = field(default_factory=dict)  # language -> fairseq file


def tsv_path(root: Path, split: str, direction: Direction) -> Path:
    return root / f"{split}.{direction.name}.tsv"


def fairseq_paths(root: Path, split: str, direction: Direction) -> tuple[Path, Path]:
    stem = f"{split}.{direction.name}"
    return root / f"{stem}.{direction.src}", root / f"{stem}.{direction.tgt}"


def _scan(root: Path, split: str) -> dict[Direction, _DirectionFiles]:
    """Find and validate every corpus file of `split` in `root`."""
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus directory does not exist")
    pattern = re.compile(rf"{re.escape(split)}\.([^.]+)-([^.]+)\.([^.]+)")
    found: dict[Direction, _DirectionFiles] = {}
    # another split's files, the manifest and hidden temporary files are not this split's business;
    # a file named like this split's data that does not fit the pattern would silently lose a direction
    for path in sorted(p for p in root.iterdir() if p.name.startswith(f"{split}.")):
        match = pattern.fullmatch(path.name)
        if match is None or match[3] not in ("tsv", match[1], match[2]):
            raise CorpusError(f"{path}: not a corpus file name; expected {_expected_names(split)} "
                              "(rename it, or move it out of the corpus directory)")
        src, tgt, ext = match.groups()
        direction = _direction_of(path, src, tgt)
        files = found.setdefault(direction, _DirectionFiles())
        if ext == "tsv":
            files.tsv = path
        else:
            files.sides[ext] = path
    for direction, files in found.items():
        _check_complete(root, split, direction, files)
    return found


def _expected_names(split: str) -> str:
    return f"{split}.SRC-TGT.tsv or the pair {split}.SRC-TGT.SRC + {split}.SRC-TGT.TGT"


def _direction_of(path: Path, src: str, tgt: str) -> Direction:
    check_language(src, str(path))
    check_language(tgt, str(path))
    if src == tgt:
        raise CorpusError(f"{path}: source and target language are the same")
    return Direction(src, tgt)


def _check_complete(root: Path, split: str, direction: Direction, files: _DirectionFiles) -> None:
    src_path, tgt_path = fairseq_paths(root, split, direction)
    if files.tsv is not None and files.sides:
        present = " and ".join(str(p) for p in files.sides.values())
        raise CorpusError(
            f"{files.tsv} and {present}: both formats present for {direction.name}; keep one"
        )
    if files.tsv is None and len(files.sides) != 2:
        have, missing = (src_path, tgt_path) if direction.src in files.sides else (tgt_path, src_path)
        raise CorpusError(f"{have}: its fairseq partner {missing} is missing")


# a name like a split's data file with another case or separator (Train.de-en.tsv, train-de-en.tsv,
# train_fra_Latn-eng_Latn.tsv), not any file that starts with "test"
_LIKE_A_SPLIT_FILE = re.compile(r"(train|valid|test)[^a-z0-9]+[a-z]{2,3}(_[a-z]{4})?[-_][a-z]{2,3}",
                                re.IGNORECASE)


def unread_files(root: Path, splits: Sequence[str] = ("train", "valid", "test")) -> list[tuple[Path, str]]:
    """The files in ``root`` a run would not read, each with why, for a warning: a run reads the
    splits' files of the directions that have train data, and the manifest. A file named like a
    split's data but not in the expected form is an error instead: it would lose a direction."""
    root = Path(root)
    scanned = {split: _scan(root, split) for split in splits}
    trained = set(scanned.get("train", {}))
    read, unread = {root / MANIFEST_NAME}, []
    for split, found in scanned.items():
        for direction, files in found.items():
            paths = [path for path in (files.tsv, *files.sides.values()) if path is not None]
            if direction in trained:
                read.update(paths)
            else:
                unread += [(path, f"no train data for {direction.name}") for path in paths]
    listed = {path for path, _ in unread}
    for path in sorted(root.iterdir()):
        if path in read or path in listed or path.name.startswith("."):
            continue
        if _LIKE_A_SPLIT_FILE.match(path.name):
            raise CorpusError(f"{path}: named like corpus data but not in the expected form, so it would not be "
                              f"read; expected {_expected_names('train')} (likewise valid., test.)")
        unread.append((path, "not a corpus file"))
    return sorted(unread)


def find_directions(root: Path, split: str) -> list[Direction]:
    """The directions that have `split` data in `root`, sorted."""
    return sorted(_scan(Path(root), split))


def read_split(
    root: Path, split: str, directions: Sequence[Direction] | None = None
) -> dict[Direction, Bitext]:
    """Read one split: the given directions, or every direction found when None."""
    root = Path(root)
    found = _scan(root, split)
    wanted = sorted(found) if directions is None else list(directions)
    if not wanted:
        raise CorpusError(f"{root}: no {split} data (expected {_expected_names(split)})")
    bitexts = {}
    for direction in wanted:
        if direction not in found:
            src_path, tgt_path = fairseq_paths(root, split, direction)
            raise CorpusError(
                f"no {split} data for {direction.name}: expected {tsv_path(root, split, direction)} "
                f"or the pair {src_path} + {tgt_path}"
            )
        bitexts[direction] = _read_direction(direction, found[direction])
    return bitexts


def _read_direction(direction: Direction, files: _DirectionFiles) -> Bitext:
    if files.tsv is not None:
        origin = str(files.tsv)
        src, tgt, dropped = _read_tsv(files.tsv)
    else:
        src_path, tgt_path = files.sides[direction.src], files.sides[direction.tgt]
        origin = f"{src_path} + {tgt_path}"
        src, tgt, dropped = _read_fairseq(src_path, tgt_path)
    if dropped:
        shown = ", ".join(map(str, dropped[:_SHOWN_LINE_NUMBERS]))
        more = ", ..." if len(dropped) > _SHOWN_LINE_NUMBERS else ""
        logger.warning(
            "%s: dropped %d line(s) empty on one or both sides (lines %s%s)",
            origin, len(dropped), shown, more,
        )
    if not src:
        raise CorpusError(f"{origin}: no non-empty sentence pairs for {direction.name}")
    return Bitext(direction, src, tgt, origin, dropped_empty=len(dropped))


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start} of the line: "
            f"{raw[err.start:err.start + 4]!r})"
        ) from None


def _read_tsv(path: Path) -> tuple[list[str], list[str], list[int]]:
    """Source lines, target lines, numbers of the lines dropped as empty."""
    src: list[str] = []
    tgt: list[str] = []
    dropped: list[int] = []
    with path.open("rb") as lines:
        for lineno, raw in enumerate(lines, 1):
            line = _decode(raw, path, lineno)
            fields = line.split("\t")
            if len(fields) != 2:
                if not line.strip():
                    dropped.append(lineno)  # a blank line is an empty pair, not a format error
                    continue
                raise CorpusError(
                    f"{path}:{lineno}: expected exactly one tab (source<TAB>target), found {len(fields) - 1}"
                )
            _append_pair(src, tgt, dropped, lineno, fields[0], fields[1])
    return src, tgt, dropped


def _read_fairseq(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str], list[int]]:
    """Source lines, target lines, numbers of the lines dropped as empty."""
    src: list[str] = []
    tgt: list[str] = []
    dropped: list[int] = []
    with src_path.open("rb") as src_lines, tgt_path.open("rb") as tgt_lines:
        numbered = enumerate(itertools.zip_longest(src_lines, tgt_lines), 1)
        for lineno, (src_raw, tgt_raw) in numbered:
            if src_raw is None or tgt_raw is None:
                _raise_count_mismatch(src_path, tgt_path, lineno, src_raw is None, numbered)
            _append_pair(
                src, tgt, dropped, lineno,
                _decode(src_raw, src_path, lineno), _decode(tgt_raw, tgt_path, lineno),
            )
    return src, tgt, dropped


def _raise_count_mismatch(
    src_path: Path, tgt_path: Path, lineno: int, src_ended: bool, rest: Iterator[object]
) -> NoReturn:
    common = lineno - 1
    longer = common + 1 + sum(1 for _ in rest)
    src_count, tgt_count = (common, longer) if src_ended else (longer, common)
    raise CorpusError(
        f"line-count mismatch: {src_path} has {src_count} lines, {tgt_path} has {tgt_count}"
    )


def _append_pair(
    src: list[str], tgt: list[str], dropped: list[int], lineno: int, src_text: str, tgt_text: str
) -> None:
    src_clean, tgt_clean = clean_text(src_text), clean_text(tgt_text)
    if src_clean and tgt_clean:
        src.append(src_clean)
        tgt.append(tgt_clean)
    else:
        dropped.append(lineno)


def write_direction(
    root: Path, split: str, direction: Direction, pairs: Iterable[tuple[str, str]]
) -> int:
    """Stream pairs into {root}/{split}.{src}-{tgt}.tsv (tmp file + os.replace); return the count.

    Text is passed through clean_text, which also turns tabs and newlines into
    spaces so a line can never break the format; pairs empty on a side after
    that are dropped, with a logged count.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _refuse_fairseq_conflict(root, split, direction)
    final = tsv_path(root, split, direction)
    tmp = root / f".{final.name}.tmp{os.getpid()}"
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as out:
            written, dropped = _write_pairs(out, pairs)
        if not written:
            raise CorpusError(f"{final}: no non-empty sentence pairs to write for {direction.name}")
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    if dropped:
        logger.warning("%s: dropped %d pair(s) empty on one or both sides", final, dropped)
    return written


def _write_pairs(out: TextIO, pairs: Iterable[tuple[str, str]]) -> tuple[int, int]:
    written = dropped = 0
    for src_text, tgt_text in pairs:
        src_clean, tgt_clean = clean_text(src_text), clean_text(tgt_text)
        if src_clean and tgt_clean:
            out.write(f"{src_clean}\t{tgt_clean}\n")
            written += 1
        else:
            dropped += 1
    return written, dropped


def _refuse_fairseq_conflict(root: Path, split: str, direction: Direction) -> None:
    """Writing a .tsv next to a fairseq pair would make the direction unreadable."""
    sides = [path for path in fairseq_paths(root, split, direction) if path.exists()]
    if sides:
        raise CorpusError(
            f"{' and '.join(map(str, sides))}: fairseq files exist for {direction.name}; "
            f"refusing to write {tsv_path(root, split, direction)} next to them"
        )


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The directory's manifest.json, or None when there is none."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}: not valid JSON ({err}); delete it to prepare the corpus again") from None


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json atomically; write it last, as the mark of a complete directory."""
    path = Path(root) / MANIFEST_NAME
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def manifest_matches(root: Path, params: Any) -> bool:
    """True when the manifest records exactly `params` (JSON-compared) and all its files exist."""
    manifest = read_manifest(root)
    if manifest is None or manifest.get("params") != json.loads(json.dumps(params)):
        return False
    return all((Path(root) / name).is_file() for name in manifest.get("files", []))


def remove_manifest_files(root: Path) -> None:
    """Delete the manifest and the files it lists, so no stale direction survives a rebuild."""
    manifest = read_manifest(root)
    if manifest is None:
        return
    (Path(root) / MANIFEST_NAME).unlink()
    for name in manifest.get("files", []):
        (Path(root) / name).unlink(missing_ok=True)
