"""From a data config to prepared tasks: errors that name the corpus and the config key."""

from __future__ import annotations

import re

import pytest

from cats_ds.data.pipeline import DataConfig, prepare
from corpus_fixture import write_corpus


def test_a_vocabulary_too_large_for_the_corpus_names_the_corpus_and_the_key(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = DataConfig(source="local", local_dir=str(corpus), vocab_size=4000, tokenizer_sentences=1000,
                        cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=re.escape(str(corpus)) + r".*data\.vocab_size=4000.*at most \d+"):
        prepare(config, progress=False)
