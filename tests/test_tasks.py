"""Tests for cats_ds.data.tasks: grouping, tokenization into tasks, collate and the npz cache."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from cats_ds.data.corpus import Bitext, Direction
from cats_ds.data.tasks import TaskData, build_tasks, collate, group_directions, length_limit, load_tasks, save_tasks
from cats_ds.data.tokenizer import EOS_ID, PAD_ID, Tokenizer

WORDS = {
    "en": "the house is small and the garden is green we walk to the river".split(),
    "fr": "la maison est petite et le jardin est vert nous marchons vers la rivière".split(),
    "de": "das haus ist klein und der garten ist grün wir gehen zum fluss".split(),
}


def sentences(lang: str, count: int, seed: int, max_words: int = 8) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[lang]) for _ in range(rng.randint(1, max_words))) for _ in range(count)]


def bitext(src: str, tgt: str, count: int, seed: int = 0, max_words: int = 8) -> Bitext:
    return Bitext(Direction(src, tgt), sentences(src, count, seed, max_words),
                  sentences(tgt, count, seed + 1, max_words), origin=f"test:{src}-{tgt}")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    texts = {lang: sentences(lang, 300, index) for index, lang in enumerate(WORDS)}
    return Tokenizer.train(texts, sorted(WORDS), tmp_path_factory.mktemp("spm") / "spm.model", vocab_size=300)


@pytest.fixture(scope="module")
def bitexts() -> dict[Direction, Bitext]:
    parts = [bitext("fr", "en", 50, 1), bitext("de", "en", 30, 2), bitext("en", "fr", 20, 3)]
    return {part.direction: part for part in parts}


def test_group_by_direction_target_source():
    directions = ["fr-en", "de-en", "en-fr"]
    assert group_directions(directions) == {"de-en": "de-en", "en-fr": "en-fr", "fr-en": "fr-en"}
    assert group_directions(directions, "target") == {"de-en": "*-en", "en-fr": "*-fr", "fr-en": "*-en"}
    assert group_directions(directions, "source") == {"de-en": "de-*", "en-fr": "en-*", "fr-en": "fr-*"}
    assert list(group_directions(directions)) == ["de-en", "en-fr", "fr-en"]


def test_group_explicit_mapping_and_errors():
    directions = ["fr-en", "de-en", "en-fr"]
    mapping = {"fr-en": "romance", "en-fr": "romance", "de-en": "germanic"}
    assert group_directions(directions, mapping) == {"de-en": "germanic", "en-fr": "romance", "fr-en": "romance"}
    with pytest.raises(ValueError, match="de-en"):
        group_directions(directions, {"fr-en": "a", "en-fr": "a"})
    with pytest.raises(ValueError, match="es-en"):
        group_directions(directions, {**mapping, "es-en": "a"})
    with pytest.raises(ValueError, match="grouping"):
        group_directions(directions, "language")
    with pytest.raises(ValueError, match="fr-en"):
        group_directions(["fr-en", "fr-en"])
    with pytest.raises(ValueError, match="zh-Hant-en"):
        group_directions(["zh-Hant-en"], "target")


def test_build_tasks_per_direction(tokenizer, bitexts):
    task_of = group_directions([d.name for d in bitexts])
    tasks = build_tasks(bitexts, tokenizer, task_of, max_len=64)
    assert [task.name for task in tasks] == ["de-en", "en-fr", "fr-en"]
    fr_en = tasks[2]
    source_bitext = bitexts[Direction("fr", "en")]
    assert len(fr_en) == 50 and fr_en.directions == ["fr-en"]
    for index in (0, 17, 49):
        assert fr_en.source(index).tolist() == tokenizer.encode_source(source_bitext.src[index], "en")
        assert fr_en.target(index).tolist() == tokenizer.encode_target(source_bitext.tgt[index])
    expected = [len(tokenizer.encode_source(s, "en")) + len(tokenizer.encode_target(t))
                for s, t in zip(source_bitext.src, source_bitext.tgt)]
    assert fr_en.lengths().tolist() == expected
    assert fr_en.src_tokens.dtype == np.int32


def test_build_tasks_grouped_by_target(tokenizer, bitexts):
    task_of = group_directions([d.name for d in bitexts], "target")
    tasks = build_tasks(bitexts, tokenizer, task_of, max_len=64)
    assert [task.name for task in tasks] == ["*-en", "*-fr"]
    into_english = tasks[0]
    assert into_english.directions == ["de-en", "fr-en"] and len(into_english) == 80
    assert into_english.direction_index.tolist() == [0] * 30 + [1] * 50
    assert into_english.source(30).tolist() == tokenizer.encode_source(bitexts[Direction("fr", "en")].src[0], "en")


def test_too_long_examples_are_dropped_and_counted(tokenizer, caplog):
    long_pairs = {Direction("fr", "en"): bitext("fr", "en", 40, 5, max_words=12)}
    encoded = [(len(tokenizer.encode_source(s, "en")), len(tokenizer.encode_target(t)))
               for s, t in zip(long_pairs[Direction("fr", "en")].src, long_pairs[Direction("fr", "en")].tgt)]
    max_len = 9
    expected_drops = sum(1 for s, t in encoded if s > max_len or t > max_len)
    assert 0 < expected_drops < 40
    with caplog.at_level(logging.WARNING, logger="cats_ds.data.tasks"):
        (task,) = build_tasks(long_pairs, tokenizer, {"fr-en": "fr-en"}, max_len=max_len)
    assert len(task) == 40 - expected_drops
    assert task.src_lengths().max() <= max_len and task.tgt_lengths().max() <= max_len
    assert f"dropped {expected_drops} of 40" in caplog.text and "fr-en" in caplog.text


def test_length_limit_keeps_the_share_of_every_direction_not_of_the_pooled_pairs():
    def pairs(source_lengths, target_lengths):
        return [[0] * n for n in source_lengths], [[0] * n for n in target_lengths]

    many = pairs(range(1, 101), [1] * 100)            # max(src, tgt) lengths 1..100
    few = pairs([5] * 10, list(range(50, 60)))        # 50..59: longer than most of `many`
    encoded = {Direction("fr", "en"): many, Direction("de", "en"): few}
    assert length_limit(encoded, 0.98, multiple=1) == (98, {"fr-en": 98, "de-en": 59})
    assert length_limit(encoded, 0.9, multiple=1) == (90, {"fr-en": 90, "de-en": 58})
    assert length_limit(encoded, 0.98) == (104, {"fr-en": 98, "de-en": 59})   # rounded up to a multiple of 8
    assert length_limit({Direction("de", "en"): few}, 1.0, multiple=1)[0] == 59
    for keep in (0, 1.5):
        with pytest.raises(ValueError, match="keep must be in"):
            length_limit(encoded, keep)


def test_task_left_empty_is_an_error(tokenizer, bitexts):
    with pytest.raises(ValueError, match="task en-fr has no examples"):
        build_tasks({Direction("en", "fr"): bitexts[Direction("en", "fr")]}, tokenizer, {"en-fr": "en-fr"}, max_len=2)


def test_task_map_must_match_bitexts(tokenizer, bitexts):
    with pytest.raises(ValueError, match="en-fr"):
        build_tasks(bitexts, tokenizer, {"fr-en": "a", "de-en": "a"}, max_len=64)
    with pytest.raises(ValueError, match="es-en"):
        build_tasks(bitexts, tokenizer, {"fr-en": "a", "de-en": "a", "en-fr": "b", "es-en": "c"}, max_len=64)


def test_collate_shapes_padding_labels(tokenizer, bitexts):
    (task,) = build_tasks({Direction("fr", "en"): bitexts[Direction("fr", "en")]}, tokenizer,
                          {"fr-en": "fr-en"}, max_len=64)
    indices = [3, 0, 7]
    batch = collate(task, indices, PAD_ID)
    src_lengths, tgt_lengths = task.src_lengths()[indices], task.tgt_lengths()[indices]
    assert batch["input_ids"].shape == (3, src_lengths.max())
    assert batch["labels"].shape == (3, tgt_lengths.max())
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long
    for row, index in enumerate(indices):
        n_src, n_tgt = src_lengths[row], tgt_lengths[row]
        assert batch["input_ids"][row, :n_src].tolist() == task.source(index).tolist()
        assert (batch["input_ids"][row, n_src:] == PAD_ID).all()
        assert batch["attention_mask"][row].tolist() == [1] * n_src + [0] * (src_lengths.max() - n_src)
        assert batch["labels"][row, :n_tgt].tolist() == task.target(index).tolist()
        assert batch["labels"][row, n_tgt - 1] == EOS_ID
        assert (batch["labels"][row, n_tgt:] == -100).all()
    with pytest.raises(ValueError, match="fr-en"):
        collate(task, [], PAD_ID)


def test_save_load_round_trip(tmp_path, tokenizer, bitexts):
    tasks = build_tasks(bitexts, tokenizer, group_directions([d.name for d in bitexts], "target"), max_len=64)
    path = tmp_path / "cache" / "train.npz"
    save_tasks(tasks, path, fingerprint="spm-abc")
    loaded = load_tasks(path, fingerprint="spm-abc")
    assert [(t.name, t.directions, len(t)) for t in loaded] == [(t.name, t.directions, len(t)) for t in tasks]
    for original, restored in zip(tasks, loaded):
        for field in ("src_tokens", "src_offsets", "tgt_tokens", "tgt_offsets", "direction_index"):
            np.testing.assert_array_equal(getattr(original, field), getattr(restored, field))
            assert getattr(original, field).dtype == getattr(restored, field).dtype
    with pytest.raises(ValueError, match="fingerprint"):
        load_tasks(path, fingerprint="spm-other")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_tasks(tmp_path / "missing.npz")


def test_task_data_checks_its_arrays():
    with pytest.raises(ValueError, match="t: src_offsets"):
        TaskData("t", ["fr-en"], np.zeros(3, np.int32), np.array([0, 2]), np.zeros(1, np.int32),
                 np.array([0, 1]), np.zeros(1, np.int32))
    with pytest.raises(ValueError, match="2 sources but 1 targets"):
        TaskData("t", ["fr-en"], np.zeros(3, np.int32), np.array([0, 2, 3]), np.zeros(1, np.int32),
                 np.array([0, 1]), np.zeros(2, np.int32))
