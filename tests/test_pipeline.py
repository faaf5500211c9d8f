"""From a data config to prepared tasks: errors that name the corpus and the config key."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sentencepiece as spm

from cats_ds.data import pipeline, tokenizer
from cats_ds.data.pipeline import DataConfig, prepare
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
    assert accounting["train"]["fr-en"] == {"read": 305, "kept": 300, "dropped": {"empty": 3, "too_long": 2}}
    assert accounting["train"]["es-en"] == {"read": 50, "kept": 50, "dropped": {"empty": 0, "too_long": 0}}
    assert accounting["valid"]["de-en"] == {"read": 20, "kept": 20, "dropped": {"empty": 0, "too_long": 0}}
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
