"""From a data config to prepared tasks: errors that name the corpus and the config key."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import sentencepiece as spm

from cats_ds.config import load_config
from cats_ds.configio import ConfigError
from cats_ds.data import pipeline, tokenizer
from cats_ds.data.corpus import read_split
from cats_ds.data.pipeline import AUTO_MAX_LEN_KEEP, DataConfig, prepare
from corpus_fixture import write_corpus


def test_a_vocabulary_too_large_for_the_corpus_names_the_corpus_and_the_key(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = DataConfig(source="local", local_dir=str(corpus), vocab_size=4000, tokenizer_sentences=1000,
                        cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=re.escape(str(corpus)) + r".*data\.vocab_size=4000.*at most \d+"):
        prepare(config)


def test_every_start_accounts_for_each_pair_and_a_cache_hit_reads_no_training_text(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    with open(corpus / "train.fr-en.tsv", "a", encoding="utf-8") as handle:   # 3 empty pairs, 2 too long
        handle.write("\tonly a target\nonly a source\t\n\n" + f"{'long ' * 100}\tshort\n" * 2)
    config = DataConfig(source="local", local_dir=str(corpus), vocab_size=400, max_len=64, tokenizer_sentences=1000,
                        cache_dir=str(tmp_path / "cache"))
    trainer_options = []
    real_train = spm.SentencePieceTrainer.train
    monkeypatch.setattr(spm.SentencePieceTrainer, "train",
                        lambda **options: trainer_options.append(options) or real_train(**options))
    first = prepare(config, threads=1)
    assert [options["num_threads"] for options in trainer_options] == [1] and first.tokenizer.threads == 1
    accounting = first.accounting
    assert accounting["train"]["fr-en"] == {"read": 305, "kept": 300, "dropped": {"empty": 3, "too_long": 2},
                                            "max_len": 64}
    assert accounting["train"]["es-en"] == {"read": 50, "kept": 50, "dropped": {"empty": 0, "too_long": 0},
                                            "max_len": 64}
    assert accounting["valid"]["de-en"] == {"read": 20, "kept": 20, "dropped": {"empty": 0, "too_long": 0},
                                            "max_len": 64}
    assert accounting["test"]["de-en"] == {"read": 20, "kept": 20, "dropped": {"empty": 0}}
    for split, tasks in (("train", first.train), ("valid", first.valid)):
        assert [len(task) for task in tasks] == [accounting[split][task.name]["kept"] for task in tasks]

    splits_read = []
    real_read = pipeline.read_split
    monkeypatch.setattr(pipeline, "read_split", lambda root, split, *rest: splits_read.append(split) or
                        real_read(root, split, *rest))
    monkeypatch.setattr(tokenizer, "_data_digest", lambda texts: pytest.fail("the training text was hashed again"))
    again = prepare(config, threads=2)
    assert "train" not in splits_read and again.accounting == accounting and again.tokenizer.threads == 2
    assert all(np.array_equal(a.src_tokens, b.src_tokens) for a, b in zip(again.train, first.train))


def _kept_share(data, corpus, max_len: int) -> dict[str, float]:
    """Each direction's share of train pairs whose tokenized source and target fit max_len, counted here."""
    shares = {}
    for direction, bitext in read_split(corpus, "train").items():
        sources = data.tokenizer.encode_source_batch(bitext.src, direction.src, direction.tgt)
        targets = data.tokenizer.encode_target_batch(bitext.tgt, direction.tgt)
        shares[direction.name] = np.mean([max(len(s), len(t)) <= max_len for s, t in zip(sources, targets)])
    return shares


def test_max_len_auto_is_the_smallest_multiple_of_8_that_keeps_98_percent_of_every_direction(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    with open(corpus / "train.es-en.tsv", "a", encoding="utf-8") as handle:   # es: 53 pairs, 3 of them long
        handle.write("".join(f"{'elthgil ' * (20 + i)}\t{'light ' * (20 + i)}\n" for i in range(3)))
    config = DataConfig(source="local", local_dir=str(corpus), vocab_size=400, max_len=256, max_len_auto=True,
                        tokenizer_sentences=1000, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="cats_ds.data.pipeline"):
        data = prepare(config, threads=1)
    chosen = {counts["max_len"] for split in ("train", "valid") for counts in data.accounting[split].values()}
    assert len(chosen) == 1
    max_len = chosen.pop()
    assert max_len % 8 == 0 and f"data.max_len_auto: max_len {max_len} tokens" in caplog.text
    assert min(_kept_share(data, corpus, max_len).values()) >= AUTO_MAX_LEN_KEEP
    # the smallest such, set by es alone: its 3 long pairs are under 0.3% of all pairs, 5.7% of its own
    shorter = _kept_share(data, corpus, max_len - 8)
    assert shorter["es-en"] < AUTO_MAX_LEN_KEEP <= min(shorter["fr-en"], shorter["de-en"])
    assert "are not trained on" not in caplog.text   # no task lost more than DROP_WARNING


def test_a_max_len_that_drops_many_pairs_is_named_in_a_warning_at_every_start(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    config = DataConfig(source="local", local_dir=str(corpus), vocab_size=400, max_len=16, tokenizer_sentences=1000,
                        cache_dir=str(tmp_path / "cache"))
    for _ in range(2):   # the second start is a cache hit
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cats_ds.data.pipeline"):
            data = prepare(config, threads=1)
        counts = data.accounting["train"]["de-en"]
        share = round(100 * counts["dropped"]["too_long"] / counts["read"])
        assert share > 100 * pipeline.DROP_WARNING
        assert re.search(rf"task de-en: {share}% of its train pairs .* longer than max_len=16 tokens "
                         r"\(data\.max_len=16\).*data\.max_len_auto: true", caplog.text)


def test_max_len_auto_is_capped_by_data_max_len(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus")
    config = DataConfig(source="local", local_dir=str(corpus), vocab_size=400, max_len=16, max_len_auto=True,
                        tokenizer_sentences=1000, cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="cats_ds.data.pipeline"):
        data = prepare(config, threads=1)
    assert data.accounting["train"]["es-en"]["max_len"] == 16
    assert "capped at data.max_len=16" in caplog.text and "longer than max_len=16" in caplog.text


def test_max_len_auto_must_be_true_or_false():
    with pytest.raises(ConfigError, match=r"data\.max_len_auto: expected true/false, got 'sometimes'"):
        load_config(None, ["data.max_len_auto=sometimes"])
