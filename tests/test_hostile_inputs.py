"""Hostile inputs (hypothesis): corpus files, text cleaning, config files and overrides.

The properties: a clear error (CorpusError / ConfigError / ValueError naming the file, line or
key) or a correct result; never another exception, never a line dropped without a logged count.
"""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cats_ds.config import load_config
from cats_ds.configio import ConfigError
from cats_ds.data.corpus import CorpusError, Direction, clean_text, read_split
from cats_ds.metrics import run_file

FR_EN = Direction("fr", "en")
FIXTURES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# lines built from pieces that stress the reader: tabs, CR, invisible marks, invalid UTF-8, long runs
_PIECES = st.sampled_from([b"a", b"word ", b"\t", b"\r", b" ", b"\xc3\xa9", b"\xe2\x80\x8b", b"\xff", b"\xc3",
                           b"\xef\xbb\xbf", b"\x00", "\u0301".encode(), "\U0001f600".encode(), b"x" * 1000])
_LINES = st.lists(st.lists(_PIECES, max_size=8).map(b"".join), max_size=12)


def _count_lines(data: bytes) -> int:
    """Lines as a file reader sees them: split at LF only, a final LF ends the last line."""
    return len(data.split(b"\n")) - data.endswith(b"\n") if data else 0


def _read_logged(root, caplog):
    """(bitext, None) or (None, the CorpusError), with the log of the read in caplog."""
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING):
            return read_split(root, "train")[FR_EN], None
    except CorpusError as err:
        return None, err


def _assert_drops_logged(line_count: int, bitext, caplog) -> None:
    assert len(bitext.src) == len(bitext.tgt) > 0
    dropped = line_count - len(bitext.src)
    if dropped:
        assert f"dropped {dropped} line(s)" in caplog.text, caplog.text
    assert all(not re.search(r"[\t\n\r]", s) for s in bitext.src + bitext.tgt)


@FIXTURES
@given(lines=_LINES)
def test_tsv_reader_errors_clearly_or_accounts_for_every_line(tmp_path_factory, caplog, lines):
    root = tmp_path_factory.mktemp("tsv")
    data = b"\n".join(lines)
    (root / "train.fr-en.tsv").write_bytes(data)
    bitext, error = _read_logged(root, caplog)
    if error:
        assert str(root / "train.fr-en.tsv") in str(error)
    else:
        _assert_drops_logged(_count_lines(data), bitext, caplog)


@FIXTURES
@given(src=_LINES, tgt=_LINES)
def test_fairseq_pair_reader_errors_clearly_or_accounts_for_every_line(tmp_path_factory, caplog, src, tgt):
    root = tmp_path_factory.mktemp("pair")
    src_data, tgt_data = b"\n".join(src), b"\n".join(tgt)
    (root / "train.fr-en.fr").write_bytes(src_data)
    (root / "train.fr-en.en").write_bytes(tgt_data)
    bitext, error = _read_logged(root, caplog)
    if error:
        assert "train.fr-en." in str(error)
        if _count_lines(src_data) != _count_lines(tgt_data):
            assert "line-count mismatch" in str(error) or "not valid UTF-8" in str(error)
    else:
        assert _count_lines(src_data) == _count_lines(tgt_data)
        _assert_drops_logged(_count_lines(src_data), bitext, caplog)


def test_a_huge_line_is_read_whole(tmp_path):
    sentence = "mot " * 500_000
    (tmp_path / "train.fr-en.tsv").write_text(f"{sentence}\tword\n")
    assert read_split(tmp_path, "train")[FR_EN].src == [sentence.strip()]


def test_latin1_bytes_in_a_utf8_corpus_name_the_file_and_line(tmp_path):
    (tmp_path / "train.fr-en.tsv").write_bytes("bonjour\thello\n".encode() + "été\tsummer\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"train\.fr-en\.tsv:2: not valid UTF-8"):
        read_split(tmp_path, "train")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_clean_text_is_idempotent_and_single_line(text):
    cleaned = clean_text(text)
    assert clean_text(cleaned) == cleaned
    assert cleaned == cleaned.strip() and not re.search(r"[\t\n\r]|  ", cleaned)


_YAML_LIKE = st.one_of(
    st.text(max_size=200),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                 lambda children: st.dictionaries(st.sampled_from(["data", "model", "train", "optim", "cats", "lr",
                                                                   "preset", "max_steps", "temperature", "x"]),
                                                  children, max_size=4), max_leaves=12).map(repr),
)


@FIXTURES
@given(text=_YAML_LIKE)
def test_config_loading_never_fails_obscurely(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ValueError as err:      # ConfigError, or a section's own validation naming its key
        assert str(err)


@FIXTURES
@given(data=st.binary(max_size=300))
def test_config_files_of_random_bytes_get_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ValueError as err:
        assert str(err)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=4))
def test_overrides_never_fail_obscurely(overrides):
    try:
        load_config(None, overrides)
    except ValueError as err:
        assert str(err)


def test_config_files_cannot_execute_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "run.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "hypotheses/../../x", "a/../../b"])
def test_run_outputs_cannot_escape_the_run_directory(tmp_path, name):
    with pytest.raises(ValueError, match="outside the run directory"):
        run_file(tmp_path / "run", name)
    assert run_file(tmp_path / "run", "hypotheses/test.fr-en.txt") == tmp_path / "run" / "hypotheses" / "test.fr-en.txt"
