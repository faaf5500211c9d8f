"""Tests for cats_ds.data.tokenizer on a tiny synthetic multilingual corpus."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from cats_ds.data.tokenizer import (
    BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, TokenizerError, sample_training_sentences, sidecar_path, train_or_load,
)

WORDS = {
    "en": "the house is small and the garden is green we walk to the river every morning".split(),
    "fr": "la maison est petite et le jardin est vert nous marchons vers la rivière chaque matin".split(),
    "ru": "дом маленький и сад зелёный мы идём к реке каждое утро".split(),
}
LANGUAGES = ["en", "fr", "ru"]
VOCAB = 320  # 4 specials + 3 tags + 256 byte pieces + characters + some pieces


def make_texts(sizes: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    return {lang: [" ".join(rng.choice(WORDS[lang]) for _ in range(rng.randint(3, 9))) for _ in range(size)]
            for lang, size in sizes.items()}


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    return make_texts({"en": 600, "fr": 300, "ru": 40})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, texts) -> Tokenizer:
    return train_or_load(texts, LANGUAGES, tmp_path_factory.mktemp("spm") / "spm.model", vocab_size=VOCAB)


def test_special_ids_and_tags_are_fixed(tokenizer):
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert [tokenizer.tag_id(lang) for lang in LANGUAGES] == [4, 5, 6]
    assert tokenizer.lang_tag("fr") == "<2fr>"
    assert tokenizer.languages == LANGUAGES
    assert tokenizer.vocab_size == VOCAB


def test_encode_source_and_target_layout(tokenizer):
    source = tokenizer.encode_source("la maison est petite", "en")
    target = tokenizer.encode_target("the house is small")
    assert source[0] == tokenizer.tag_id("en") and source[-1] == EOS_ID
    assert target[-1] == EOS_ID and tokenizer.tag_id("en") not in target
    assert source[1:] == tokenizer.encode_target("la maison est petite")  # the tag is one id, nothing else changes
    assert UNK_ID not in source + target
    assert tokenizer.encode_source_batch(["a b", "the house"], "en", "ru") == [
        tokenizer.encode_source("a b", "ru"), tokenizer.encode_source("the house", "ru")]
    assert tokenizer.encode_target_batch(["the house"], "en") == [tokenizer.encode_target("the house")]
    assert tokenizer.forced_bos_id("en") is None   # the family "cats": the source's tag names the target


def test_generated_rows_decode_without_the_decoder_start_token(tokenizer):
    """generate's rows start with the decoder start token, eos for this model: decoding it would
    end every output at once."""
    target = tokenizer.encode_target("the house is small")
    assert tokenizer.decode_generated([[EOS_ID, *target, 1, 1]]) == ["the house is small"]


@pytest.mark.parametrize("text", ["the house is small", "дом маленький и сад", "la rivière chaque matin",
                                  "unseen: 日本語 ✓ Ωmega"])
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode_source(text, "fr")
    assert UNK_ID not in ids  # byte fallback covers characters never seen in training
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer.encode_target(text)) == text


def test_decode_stops_at_eos_and_skips_pad_bos_tags(tokenizer):
    first, second = tokenizer.encode_target("the garden"), tokenizer.encode_target("le jardin")
    ids = [BOS_ID, tokenizer.tag_id("ru")] + first[:-1] + [PAD_ID] + first[-1:] + second
    assert tokenizer.decode(ids) == "the garden"
    assert tokenizer.decode(np.array(ids)) == "the garden"
    assert tokenizer.decode_batch([first, second]) == ["the garden", "le jardin"]


def test_unknown_language_names_it(tokenizer):
    with pytest.raises(KeyError, match="'xx'"):
        tokenizer.encode_source("hello", "xx")
    with pytest.raises(KeyError, match="'de'"):
        tokenizer.tag_id("de")


def test_temperature_sample_shares():
    texts = make_texts({"en": 900, "fr": 90, "ru": 9})
    sizes = np.array([900, 90, 9], dtype=float)
    language_of = {text: lang for lang in LANGUAGES for text in texts[lang]}
    for temperature in (1.0, 5.0, 100.0):
        sample = sample_training_sentences(texts, temperature, max_sentences=500, seed=3)
        counts = Counter(language_of[text] for text in sample)
        weights = sizes ** (1 / temperature)
        expected = weights / weights.sum() * 500
        assert [counts[lang] for lang in LANGUAGES] == pytest.approx(expected, abs=1)
    uniform = sample_training_sentences(texts, 1e6, max_sentences=999, seed=3)
    # languages come in sorted order; ru's 9 sentences repeat in whole passes to fill its third
    assert Counter(uniform[-333:]) == Counter({text: 37 for text in texts["ru"]})


def test_temperature_sample_is_deterministic_from_seed():
    texts = make_texts({"en": 300, "ru": 30})
    assert sample_training_sentences(texts, 5.0, 100, seed=1) == sample_training_sentences(texts, 5.0, 100, seed=1)
    assert sample_training_sentences(texts, 5.0, 100, seed=1) != sample_training_sentences(texts, 5.0, 100, seed=2)


def test_training_is_deterministic(tmp_path, texts):
    first = Tokenizer.train(texts, LANGUAGES, tmp_path / "a.model", vocab_size=VOCAB, seed=7)
    second = Tokenizer.train(texts, LANGUAGES, tmp_path / "b.model", vocab_size=VOCAB, seed=7)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert first.encode_target(texts["ru"][0]) == second.encode_target(texts["ru"][0])


def test_high_temperature_gives_low_resource_language_its_own_pieces(tmp_path):
    texts = make_texts({"en": 3000, "fr": 3000, "ru": 15})
    ru_text = " ".join(texts["ru"][:10])
    lengths = {}
    for temperature in (1.0, 100.0):
        tokenizer = Tokenizer.train(texts, LANGUAGES, tmp_path / f"t{temperature}.model", vocab_size=VOCAB,
                                    temperature=temperature, max_sentences=2000)
        lengths[temperature] = len(tokenizer.encode_target(ru_text))
    assert lengths[100.0] < 0.8 * lengths[1.0]


def test_cache_reuses_matching_model_and_refuses_a_different_one(tmp_path, texts):
    path = tmp_path / "spm.model"
    train_or_load(texts, LANGUAGES, path, vocab_size=VOCAB)
    recorded = json.loads(sidecar_path(path).read_text())
    assert recorded["languages"] == LANGUAGES and recorded["vocab_size"] == VOCAB
    modified = path.stat().st_mtime_ns
    assert train_or_load(texts, LANGUAGES, path, vocab_size=VOCAB).vocab_size == VOCAB
    assert path.stat().st_mtime_ns == modified  # loaded, not retrained
    with pytest.raises(ValueError, match="vocab_size"):
        train_or_load(texts, LANGUAGES, path, vocab_size=VOCAB + 10)
    with pytest.raises(ValueError, match="temperature"):
        train_or_load(texts, LANGUAGES, path, vocab_size=VOCAB, temperature=1.0)
    with pytest.raises(ValueError, match="languages"):
        train_or_load({**texts, "de": ["ein Haus"]}, LANGUAGES + ["de"], path, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="data_sha256"):
        train_or_load({**texts, "ru": texts["ru"][:-1] + ["другой текст"]}, LANGUAGES, path, vocab_size=VOCAB)


def test_cache_without_sidecar_is_refused(tmp_path, texts):
    path = tmp_path / "spm.model"
    train_or_load(texts, LANGUAGES, path, vocab_size=VOCAB)
    sidecar_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="spm.json"):
        train_or_load(texts, LANGUAGES, path, vocab_size=VOCAB)


@pytest.mark.parametrize("change, message", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"languages": ["en", "fr"]}, "ru"),
    ({"languages": ["en", "fr", "ru", "en"]}, "en"),
    ({"languages": ["en", "fr", "r u"]}, "r u"),
    ({"model_type": "word"}, "model_type"),
])
def test_bad_training_arguments(tmp_path, texts, change, message):
    arguments = {"languages": LANGUAGES, "vocab_size": VOCAB, **change}
    with pytest.raises(ValueError, match=message):
        Tokenizer.train(texts, model_path=tmp_path / "x.model", **arguments)
    assert not (tmp_path / "x.model").exists()


def test_load_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer.load(tmp_path / "nope.model")


def test_sentencepiece_errors_are_rephrased_with_the_limit(tmp_path, texts):
    with pytest.raises(TokenizerError, match=r"4000 pieces.*support at most \d+") as caught:
        Tokenizer.train(texts, LANGUAGES, tmp_path / "spm.model", vocab_size=4000)
    assert 0 < caught.value.max_vocab_size < 4000
    assert not (tmp_path / "spm.model").exists()
