"""The local corpus format: parsing both layouts, every error case, writing and reading back."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from cats_ds.data.corpus import (
    Bitext,
    CorpusError,
    Direction,
    clean_text,
    find_directions,
    manifest_matches,
    read_split,
    remove_manifest_files,
    unread_files,
    write_direction,
    write_manifest,
)
from cats_ds.data.languages import KNOWN_LANGUAGES, UnknownLanguageError, check_language

FR_EN = Direction("fr", "en")


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- languages and text


def test_language_list_is_complete_iso_639_1_plus_extras() -> None:
    two_letter = {code for code in KNOWN_LANGUAGES if len(code) == 2}
    assert len(two_letter) == 184  # 183 current ISO 639-1 codes + the deprecated "sh" of OPUS-100
    assert {"en", "fr", "zh", "tl", "sh", "fil", "ast", "ceb"} <= KNOWN_LANGUAGES
    assert all(code.isascii() and code.islower() for code in KNOWN_LANGUAGES)


def test_check_language_names_where_and_suggests() -> None:
    assert check_language("fr", "x") == "fr"
    with pytest.raises(UnknownLanguageError, match=r"config\.yaml:data\.langs\[2\].*'xq'"):
        check_language("xq", "config.yaml:data.langs[2]")
    with pytest.raises(UnknownLanguageError, match=r"did you mean 'fr'\?"):
        check_language("FR", "somewhere")
    with pytest.raises(UnknownLanguageError, match="did you mean.*'fil'"):
        check_language("fill", "somewhere")
    assert issubclass(UnknownLanguageError, ValueError)


def test_clean_text() -> None:
    assert clean_text("Ele\u0301onore") == "El\u00e9onore"  # NFC
    assert clean_text("\ufeff a\u200bb\u200e c\u2060d \u200f") == "ab cd"
    assert clean_text("a\t\tb\n c\u00a0 d\r") == "a b c d"
    assert clean_text("soft\u00adhyphen") == "softhyphen"
    # zero width non-joiner is Persian spelling: kept
    assert clean_text("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") == "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


def test_direction_parse_and_validation() -> None:
    assert Direction.parse("fr-en", where="k") == FR_EN
    assert FR_EN.name == "fr-en"
    assert sorted([Direction("fr", "en"), Direction("de", "en"), Direction("en", "de")]) == [
        Direction("de", "en"), Direction("en", "de"), Direction("fr", "en")]
    for bad in ("fren", "fr-en-de", "-en", "fr-"):
        with pytest.raises(ValueError, match=r"data\.directions\[0\].*SRC-TGT"):
            Direction.parse(bad, where="data.directions[0]")
    with pytest.raises(UnknownLanguageError, match=r"data\.directions\[1\].*'fe'"):
        Direction.parse("fe-en", where="data.directions[1]")
    with pytest.raises(ValueError, match="same source and target"):
        Direction.parse("en-en", where="k")
    with pytest.raises(UnknownLanguageError):
        Direction("zz", "en")


# --------------------------------------------------------------------------- reading


def test_read_tsv_normalizes_and_strips_crlf(tmp_path: Path) -> None:
    write_bytes(tmp_path / "train.fr-en.tsv",
                "\ufeffBonjour  le monde\tHello world\r\n"
                "Cafe\u0301\tCoffee\r\n"
                "  \u00e0 demain \t see you\u200b tomorrow\n".encode())
    bitexts = read_split(tmp_path, "train")
    assert list(bitexts) == [FR_EN]
    bitext = bitexts[FR_EN]
    assert bitext.src == ["Bonjour le monde", "Caf\u00e9", "\u00e0 demain"]
    assert bitext.tgt == ["Hello world", "Coffee", "see you tomorrow"]
    assert bitext.origin == str(tmp_path / "train.fr-en.tsv")


def test_read_fairseq_pair(tmp_path: Path) -> None:
    write_bytes(tmp_path / "valid.en-de.en", b"one\r\ntwo\nthree")
    write_bytes(tmp_path / "valid.en-de.de", b"eins\nzwei\ndrei\n")
    bitext = read_split(tmp_path, "valid")[Direction("en", "de")]
    assert (bitext.src, bitext.tgt) == (["one", "two", "three"], ["eins", "zwei", "drei"])
    assert str(tmp_path / "valid.en-de.en") in bitext.origin and str(tmp_path / "valid.en-de.de") in bitext.origin


def test_find_directions_mixed_layouts_and_other_files(tmp_path: Path) -> None:
    write_bytes(tmp_path / "train.fr-en.tsv", b"a\tb\n")
    write_bytes(tmp_path / "train.de-en.de", b"a\n")
    write_bytes(tmp_path / "train.de-en.en", b"b\n")
    write_bytes(tmp_path / "valid.es-en.tsv", b"a\tb\n")  # another split
    write_bytes(tmp_path / "manifest.json", b"{}")
    write_bytes(tmp_path / ".train.it-en.tsv.tmp123", b"a\tb\n")  # a write in progress (hidden)
    assert find_directions(tmp_path, "train") == [Direction("de", "en"), Direction("fr", "en")]
    assert find_directions(tmp_path, "valid") == [Direction("es", "en")]
    chosen = read_split(tmp_path, "train", [Direction("de", "en")])
    assert list(chosen) == [Direction("de", "en")]


def test_both_formats_for_one_direction(tmp_path: Path) -> None:
    write_bytes(tmp_path / "train.fr-en.tsv", b"a\tb\n")
    write_bytes(tmp_path / "train.fr-en.fr", b"a\n")
    write_bytes(tmp_path / "train.fr-en.en", b"b\n")
    with pytest.raises(CorpusError, match="both formats") as err:
        read_split(tmp_path, "train")
    for name in ("train.fr-en.tsv", "train.fr-en.fr", "train.fr-en.en"):
        assert str(tmp_path / name) in str(err.value)


def test_missing_requested_direction_names_expected_paths(tmp_path: Path) -> None:
    write_bytes(tmp_path / "test.fr-en.tsv", b"a\tb\n")
    with pytest.raises(CorpusError) as err:
        read_split(tmp_path, "test", [FR_EN, Direction("de", "en")])
    message = str(err.value)
    for name in ("test.de-en.tsv", "test.de-en.de", "test.de-en.en"):
        assert str(tmp_path / name) in message


def test_no_data_at_all(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=re.escape(f"{tmp_path}: no train data")):
        read_split(tmp_path, "train")
    with pytest.raises(CorpusError, match="does not exist"):
        read_split(tmp_path / "nope", "train")


def test_undecodable_bytes_name_file_and_line(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "train.fr-en.tsv", b"a\tb\nc\td\ne\xff\xfe\tf\n")
    with pytest.raises(CorpusError, match=re.escape(f"{path}:3: not valid UTF-8")):
        read_split(tmp_path, "train")
    write_bytes(tmp_path / "train.fr-en.tsv", b"a\tb\n")
    tmp_path.joinpath("train.fr-en.tsv").unlink()
    write_bytes(tmp_path / "train.fr-en.fr", b"a\nb\n")
    bad = write_bytes(tmp_path / "train.fr-en.en", b"a\n\xc3\n")
    with pytest.raises(CorpusError, match=re.escape(f"{bad}:2: not valid UTF-8")):
        read_split(tmp_path, "train")


@pytest.mark.parametrize("line, tabs", [(b"no tab here", 0), (b"one\ttwo\tthree", 2)])
def test_tsv_tab_count_errors(tmp_path: Path, line: bytes, tabs: int) -> None:
    path = write_bytes(tmp_path / "train.fr-en.tsv", b"a\tb\n" + line + b"\nc\td\n")
    with pytest.raises(CorpusError, match=re.escape(f"{path}:2: expected exactly one tab") + f".*found {tabs}"):
        read_split(tmp_path, "train")


@pytest.mark.parametrize("src_lines, tgt_lines", [(3, 5), (4, 2), (0, 1)])
def test_fairseq_line_count_mismatch(tmp_path: Path, src_lines: int, tgt_lines: int) -> None:
    src = write_bytes(tmp_path / "train.fr-en.fr", b"".join(b"s%d\n" % i for i in range(src_lines)))
    tgt = write_bytes(tmp_path / "train.fr-en.en", b"".join(b"t%d\n" % i for i in range(tgt_lines)))
    expected = f"line-count mismatch: {src} has {src_lines} lines, {tgt} has {tgt_lines}"
    with pytest.raises(CorpusError, match=re.escape(expected)):
        read_split(tmp_path, "train")


def test_fairseq_partner_missing(tmp_path: Path) -> None:
    write_bytes(tmp_path / "train.fr-en.en", b"a\n")
    with pytest.raises(CorpusError, match=re.escape(f"{tmp_path / 'train.fr-en.fr'} is missing")):
        read_split(tmp_path, "train")


def test_empty_lines_dropped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [b"a\tA", b" \tB", b"c\tC", "d\t\u200b".encode(), b"", b"e\tE"]
    lines += [b"\t"] * 6 + [b"f\tF"]
    path = write_bytes(tmp_path / "train.fr-en.tsv", b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="cats_ds.data.corpus"):
        bitext = read_split(tmp_path, "train")[FR_EN]
    assert bitext.src == ["a", "c", "e", "f"] and bitext.tgt == ["A", "C", "E", "F"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message and "dropped 9 line(s)" in message
    assert "lines 2, 4, 5, 7, 8, ..." in message


def test_fairseq_empty_lines_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_bytes(tmp_path / "train.fr-en.fr", b"a\n\nc\n")
    write_bytes(tmp_path / "train.fr-en.en", b"A\nB\n  \n")
    with caplog.at_level(logging.WARNING, logger="cats_ds.data.corpus"):
        bitext = read_split(tmp_path, "train")[FR_EN]
    assert bitext.src == ["a"]
    assert "dropped 2 line(s)" in caplog.text and "lines 2, 3)" in caplog.text


def test_direction_empty_after_dropping(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "train.fr-en.tsv", b"\tA\nb\t\n")
    with pytest.raises(CorpusError, match=re.escape(f"{path}: no non-empty sentence pairs for fr-en")):
        read_split(tmp_path, "train")


def test_unknown_language_in_file_name(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "train.fe-en.tsv", b"a\tb\n")
    with pytest.raises(UnknownLanguageError, match=re.escape(str(path)) + ".*'fe'.*did you mean"):
        read_split(tmp_path, "train")
    path.unlink()
    path = write_bytes(tmp_path / "train.en-en.tsv", b"a\tb\n")
    with pytest.raises(CorpusError, match=re.escape(str(path)) + ".*same"):
        find_directions(tmp_path, "train")


def test_read_30k_lines(tmp_path: Path) -> None:
    lines = "".join(f"phrase num\u00e9ro {i}\tsentence number {i}\n" for i in range(30_000))
    (tmp_path / "train.fr-en.tsv").write_text(lines, encoding="utf-8")
    bitext = read_split(tmp_path, "train")[FR_EN]
    assert len(bitext) == 30_000
    assert bitext.src[12345] == "phrase num\u00e9ro 12345" and bitext.tgt[-1] == "sentence number 29999"


# --------------------------------------------------------------------------- writing


def test_write_read_round_trip(tmp_path: Path) -> None:
    bitexts = [
        Bitext(FR_EN, ["Caf\u00e9 cr\u00e8me", "deux\tmots", "ligne\nbris\u00e9e"], ["coffee", "two words", "broken line"], "mem"),
        Bitext(Direction("en", "ko"), ["hello"], ["\uc548\ub155"], "mem"),
    ]
    for bitext in bitexts:
        write_direction(tmp_path, "train", bitext.direction, zip(bitext.src, bitext.tgt))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.en-ko.tsv", "train.fr-en.tsv"]  # no tmp left
    back = read_split(tmp_path, "train")
    assert back[FR_EN].src == ["Caf\u00e9 cr\u00e8me", "deux mots", "ligne bris\u00e9e"]
    assert back[FR_EN].tgt == ["coffee", "two words", "broken line"]
    assert back[Direction("en", "ko")].tgt == ["\uc548\ub155"]
    # writing what was read gives the same bytes
    before = (tmp_path / "train.fr-en.tsv").read_bytes()
    write_direction(tmp_path, "train", FR_EN, zip(back[FR_EN].src, back[FR_EN].tgt))
    assert (tmp_path / "train.fr-en.tsv").read_bytes() == before


def test_write_drops_empty_pairs_and_refuses_nothing_or_conflicts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cats_ds.data.corpus"):
        assert write_direction(tmp_path, "train", FR_EN, [("a", "b"), ("", "x"), ("y", " \u200b")]) == 1
    assert "dropped 2 pair(s)" in caplog.text
    with pytest.raises(CorpusError, match="no non-empty sentence pairs"):
        write_direction(tmp_path, "valid", FR_EN, [(" ", "x")])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert not (tmp_path / "valid.fr-en.tsv").exists()
    write_bytes(tmp_path / "test.fr-en.fr", b"a\n")
    with pytest.raises(CorpusError, match="fairseq files exist"):
        write_direction(tmp_path, "test", FR_EN, [("a", "b")])


def test_bitext_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="origin.txt.*2 source and 1 target"):
        Bitext(FR_EN, ["a", "b"], ["c"], "origin.txt")


def test_manifest_helpers(tmp_path: Path) -> None:
    write_direction(tmp_path, "train", FR_EN, [("a", "b")])
    params = {"seed": 1, "langs": ("fr",)}
    assert not manifest_matches(tmp_path, params)
    write_manifest(tmp_path, {"params": params, "files": ["train.fr-en.tsv"]})
    assert manifest_matches(tmp_path, params)
    assert not manifest_matches(tmp_path, {"seed": 2, "langs": ("fr",)})
    remove_manifest_files(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(CorpusError, match="manifest.json: not valid JSON"):
        manifest_matches(tmp_path, params)


@pytest.mark.parametrize("name", ["train.de-en.tsv.gz", "train.de_en.tsv", "train.it-en.txt", "valid.de-en.tsv.bak",
                                  "test.de-en"])
def test_unrecognised_corpus_files_are_refused_by_name_with_the_expected_pattern(tmp_path: Path, name: str) -> None:
    for split in ("train", "valid", "test"):
        write_bytes(tmp_path / f"{split}.fr-en.tsv", b"a\tb\n")
    write_bytes(tmp_path / name, b"a\tb\n")
    split = name.split(".")[0]
    with pytest.raises(CorpusError, match=re.escape(str(tmp_path / name)) + f".*{split}\\.SRC-TGT\\.tsv"):
        read_split(tmp_path, split)


@pytest.mark.parametrize("name", ["train-de-en.tsv", "train_de-en.tsv", "Train.de-en.tsv", "VALID.de-en.tsv",
                                  "train_fra_Latn-eng_Latn.tsv"])
def test_files_named_like_data_in_another_form_are_refused_not_dropped(tmp_path: Path, name: str) -> None:
    """A direction in a file whose name differs from split.SRC-TGT only in case or separator would
    silently not be trained on (issue 29 part 3)."""
    for split in ("train", "valid", "test"):
        write_bytes(tmp_path / f"{split}.fr-en.tsv", b"a\tb\n")
    write_bytes(tmp_path / name, b"a\tb\n")
    with pytest.raises(CorpusError, match=re.escape(str(tmp_path / name)) + ".*named like corpus data.*"
                                          r"train\.SRC-TGT\.tsv"):
        unread_files(tmp_path)


def test_every_file_not_read_is_reported_with_why(tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        write_bytes(tmp_path / f"{split}.fr-en.tsv", b"a\tb\n")
    write_bytes(tmp_path / "valid.de-en.tsv", b"a\tb\n")    # no train data for de-en
    write_bytes(tmp_path / "README.md", b"notes")
    write_bytes(tmp_path / "test_notes.txt", b"notes")       # starts like a split, is no data file
    write_bytes(tmp_path / "manifest.json", b"{}")
    write_bytes(tmp_path / ".train.it-en.tsv.tmp1", b"a\tb\n")   # hidden: a write in progress
    assert unread_files(tmp_path) == [(tmp_path / "README.md", "not a corpus file"),
                                      (tmp_path / "test_notes.txt", "not a corpus file"),
                                      (tmp_path / "valid.de-en.tsv", "no train data for de-en")]
