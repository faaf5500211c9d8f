"""Scoring: sacreBLEU per target language, distinct outputs, constant-output level, group means."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from cats_ds.evaluate import bleu_tokenizer, group_means, results_table, score, source_use_check
from conftest import run_deepspeed


def test_score_against_sacrebleu_directly():
    hyps = ["the cat sat on the mat", "a dog barked", "the sun is hot"]
    refs = ["the cat sat on the mat", "the dog barked loudly", "the sun is very hot"]
    result = score(hyps, refs, "en")
    assert result["bleu"] == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
    assert result["distinct"] == 1.0 and 0 < result["chrf"] <= 100
    assert result["constant_bleu"] < result["bleu"]


def test_constant_outputs_are_detected():
    result = score(["the lord said"] * 4, ["the lord said unto moses", "and god saw", "it was good", "amen"], "en")
    assert result["distinct"] == 0.25
    assert result["bleu"] == pytest.approx(result["constant_bleu"])


def test_tokenizer_per_target_language():
    assert bleu_tokenizer("en", "auto") == "13a"
    assert bleu_tokenizer("zh", "auto") == "zh"
    assert bleu_tokenizer("ja", "auto") in ("ja-mecab", "char")
    assert bleu_tokenizer("th", "auto") == "char"
    assert bleu_tokenizer("fr", "flores200") == "flores200"


def test_group_means_and_table():
    scores = {"fr-en": {"bleu": 30.0, "chrf": 50.0, "distinct": 1.0, "constant_bleu": 1.0},
              "it-en": {"bleu": 10.0, "chrf": 30.0, "distinct": 0.5, "constant_bleu": 1.0},
              "es-en": {"bleu": 20.0, "chrf": 40.0, "distinct": 1.0, "constant_bleu": 1.0}}
    assert group_means(scores, {"it-en"}, "bleu") == {"all": 20.0, "low": 10.0, "high": 25.0}
    table = results_table(scores, {"it-en"})
    assert "| it-en | low | 10.00 | 30.00 | 50% |" in table
    assert "| mean (high) | | 25.00 | 45.00 | | |" in table


def test_source_use_check_flags_boilerplate():
    good = {"fr-en": {"bleu": 12.0, "constant_bleu": 3.0, "distinct": 0.98},
            "it-en": {"bleu": 5.0, "constant_bleu": 3.0, "distinct": 0.95}}
    assert "depend on the source" in source_use_check(good, {"it-en"})
    repetitive = {**good, "it-en": {"bleu": 5.0, "constant_bleu": 3.0, "distinct": 0.6}}
    assert "WARNING" in source_use_check(repetitive, {"it-en"})
    below_constant = {**good, "fr-en": {"bleu": 2.0, "constant_bleu": 3.0, "distinct": 0.99}}
    assert "WARNING" in source_use_check(below_constant, {"it-en"})


class _StubTokenizer:
    """A family (cats_ds/families) that records what it was asked."""

    pad_id, eos_id = 1, 2

    def encode_source_batch(self, texts, src_lang, tgt_lang):
        self.languages = (src_lang, tgt_lang)
        return [[5, 6, 2] for _ in texts]

    def forced_bos_id(self, tgt_lang):
        return {"fr": 9}.get(tgt_lang)

    def decode_generated(self, rows):
        return [" ".join(map(str, row)) for row in rows]


class _StubModel:
    device = "cpu"

    def generate(self, input_ids, **kwargs):
        import torch
        self.kwargs = kwargs
        return torch.tensor([[2, 10, 11, 2, 1]] * input_ids.shape[0])


def test_decode_batch_hands_the_direction_to_the_family_and_forces_its_first_token():
    from cats_ds.evaluate import decode_batch
    model, tokenizer = _StubModel(), _StubTokenizer()
    outputs = decode_batch(model, tokenizer, ["a", "b"], "en", "fr", beam=1, max_len_ratio=1.5)
    assert outputs == ["2 10 11 2 1"] * 2    # the family's decoding, rows whole
    assert tokenizer.languages == ("en", "fr") and model.kwargs["forced_bos_token_id"] == 9


@pytest.mark.slow
def test_zero3_dev_losses_with_fewer_or_uneven_examples_than_ranks(tmp_path):
    """Every rank must run as many forward passes as the others under ZeRO-3 (each gathers the
    sharded weights from all ranks), also when a rank has no or fewer dev examples."""
    out = tmp_path / "dev_losses.json"
    run_deepspeed(["tests/dist/dev_loss_zero3.py", str(out)], processes=2, timeout=300)
    result = json.loads(out.read_text())
    for case, expected in result["expected"].items():
        assert np.allclose(result["actual"][case], expected, rtol=1e-5), case
