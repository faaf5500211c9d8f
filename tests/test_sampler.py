"""Tests for cats_ds.data.sampler: the language-synchronous, temperature-weighted, sharded, resumable sampler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cats_ds.data.sampler import LanguageSyncSampler, Window, reshard_states, shard_order, temperature_probs


def random_lengths(sizes, seed=0, low=4, high=40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high + 1, size=size) for size in sizes]


def make(lengths, probs, rank=0, world_size=1, tokens_per_step=4000, max_micro=1000, seed=11, sort_block=16):
    return LanguageSyncSampler(lengths, probs, tokens_per_step=tokens_per_step, max_tokens_per_micro=max_micro,
                               seed=seed, rank=rank, world_size=world_size, sort_block=sort_block)


def plan(windows: list[Window]) -> list:
    return [(w.task, w.micro_batches, w.micro_tokens) for w in windows]


def expected_stream(lengths, seed, task, rank, world_size, sort_block, count) -> list[int]:
    """The first ``count`` examples of a rank's stream of a task, built from shard_order directly."""
    stream: list[int] = []
    epoch = 0
    while len(stream) < count:
        stream += shard_order(lengths, seed, task, epoch, rank, world_size, sort_block).tolist()
        epoch += 1
    return stream[:count]


def run_streams(sampler: LanguageSyncSampler, steps: int, num_tasks: int) -> list[list[int]]:
    streams: list[list[int]] = [[] for _ in range(num_tasks)]
    for _ in range(steps):
        for window in sampler.next_step():
            for batch in window.micro_batches:
                streams[window.task] += batch
    return streams


# --- temperature_probs ---------------------------------------------------------------------------

def test_temperature_probs_values():
    sizes = [10_000, 1_000, 10]
    np.testing.assert_allclose(temperature_probs(sizes, 1.0), np.array(sizes) / 11_010)
    weights = np.array([10_000 ** 0.2, 1_000 ** 0.2, 10 ** 0.2])
    np.testing.assert_allclose(temperature_probs(sizes, 5.0), weights / weights.sum())
    assert np.abs(temperature_probs(sizes, 1000.0) - 1 / 3).max() < 0.01
    sharp = temperature_probs([1_000_000, 999_000], 0.001)  # size ** 1000 would overflow float64
    ratio = math.exp(1000 * math.log(1_000_000 / 999_000))
    np.testing.assert_allclose(sharp, [ratio / (1 + ratio), 1 / (1 + ratio)])
    assert temperature_probs([5, 0, 5], 5.0).tolist() == [0.5, 0.0, 0.5]
    # the lowest temperature the config accepts (cats_ds/config.py) keeps every task's share above 0
    assert temperature_probs([1, 10 ** 9], 0.1)[0] > 0


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive_and_finite(temperature):
    with pytest.raises(ValueError, match="temperature"):
        temperature_probs([10, 20], temperature)


@pytest.mark.parametrize("sizes", [[], [0, 0], [-1, 5]])
def test_temperature_probs_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes"):
        temperature_probs(sizes, 5.0)


# --- plans ---------------------------------------------------------------------------------------

def test_same_seed_same_plan_other_seed_other_plan():
    lengths = random_lengths([300, 120, 40])
    probs = temperature_probs([300, 120, 40], 5.0)
    first, second, other = make(lengths, probs), make(lengths, probs), make(lengths, probs, seed=12)
    plans = [[plan(sampler.next_step()) for _ in range(20)] for sampler in (first, second, other)]
    assert plans[0] == plans[1]
    assert plans[0] != plans[2]
    assert first.step == 20


def test_window_sizes_follow_the_formula():
    lengths = random_lengths([500, 500, 500])
    probs = [0.7, 0.25, 0.05]
    sampler = make(lengths, probs, world_size=2, tokens_per_step=10_000, max_micro=1000)
    # b = 7000, 2500, 500 tokens; m = ceil(b / (2 * 1000)) = 4, 2, 1; cap = b / (2 m)
    assert sampler.micro_steps == (4, 2, 1)
    assert sampler.micro_token_caps == pytest.approx((875.0, 625.0, 250.0))
    windows = sampler.next_step()
    assert [w.task for w in windows] == [0, 1, 2]
    assert [len(w.micro_batches) for w in windows] == [4, 2, 1]


def test_micro_batches_fill_up_to_the_cap_and_follow_the_stream():
    lengths = random_lengths([97, 45], seed=3)
    sampler = make(lengths, [0.6, 0.4], rank=1, world_size=3, tokens_per_step=3000, max_micro=400)
    caps = sampler.micro_token_caps
    batches: list[list[list[int]]] = [[], []]
    for _ in range(30):  # several epochs of both tasks
        for window in sampler.next_step():
            for batch, tokens in zip(window.micro_batches, window.micro_tokens):
                assert batch and tokens == lengths[window.task][batch].sum()
                assert tokens <= caps[window.task] or len(batch) == 1
            batches[window.task] += window.micro_batches
    for task in (0, 1):
        stream = [index for batch in batches[task] for index in batch]
        assert stream == expected_stream(lengths[task], 11, task, 1, 3, 16, len(stream))
        for batch, following in zip(batches[task], batches[task][1:]):
            # stopped only because the next example of the stream would cross the cap
            assert lengths[task][batch].sum() + lengths[task][following[0]] > caps[task]


def test_shards_are_disjoint_and_cover_each_epoch():
    lengths = random_lengths([101])[0]
    for epoch in (0, 1):
        shards = [shard_order(lengths, 5, 0, epoch, rank, 3, 8) for rank in range(3)]
        assert sorted(np.concatenate(shards).tolist()) == list(range(101))
        for shard in shards:  # sorted by cost within each block of 8
            for start in range(0, len(shard), 8):
                block_costs = lengths[shard[start:start + 8]]
                assert (np.diff(block_costs) >= 0).all()
    assert shard_order(lengths, 5, 0, 0, 0, 3, 8).tolist() != shard_order(lengths, 5, 0, 1, 0, 3, 8).tolist()


def test_sampler_ranks_together_cover_one_epoch_exactly_once():
    lengths = random_lengths([101])
    world_size = 3
    epoch_shares = [len(range(rank, 101, world_size)) for rank in range(world_size)]  # 34, 34, 33
    seen = []
    for rank in range(world_size):
        sampler = make(lengths, [1.0], rank=rank, world_size=world_size, tokens_per_step=600, max_micro=100)
        stream: list[int] = []
        while len(stream) < epoch_shares[rank]:
            stream += run_streams(sampler, 1, 1)[0]
        seen += stream[:epoch_shares[rank]]
    assert sorted(seen) == list(range(101))


def test_all_ranks_run_the_same_task_in_every_micro_step():
    sizes = [400, 90, 30, 12]
    lengths = random_lengths(sizes, seed=4)
    probs = temperature_probs(sizes, 1.0)
    samplers = [make(lengths, probs, rank=rank, world_size=4, tokens_per_step=8000, max_micro=300)
                for rank in range(4)]
    for _ in range(50):
        shapes = [[(w.task, len(w.micro_batches)) for w in sampler.next_step()] for sampler in samplers]
        assert all(shape == shapes[0] for shape in shapes)
        assert [task for task, _ in shapes[0]] == [0, 1, 2, 3]  # every task, in fixed order, every step


@pytest.mark.parametrize("temperature", [1.0, 5.0, 100.0])
def test_realized_token_shares_match_temperature(temperature):
    sizes = [20_000, 2_000, 200]
    lengths = random_lengths(sizes, seed=7)
    probs = temperature_probs(sizes, temperature)
    world_size, tokens_per_step, max_micro, steps = 2, 60_000, 3000, 100
    samplers = [make(lengths, probs, rank=rank, world_size=world_size, tokens_per_step=tokens_per_step,
                     max_micro=max_micro) for rank in range(world_size)]
    assert min(samplers[0].micro_token_caps) >= 40  # no example is above a cap: no "at least one" distortion
    per_rank = np.zeros((world_size, 3))
    for _ in range(steps):
        for rank, sampler in enumerate(samplers):
            per_rank[rank] += [w.tokens for w in sampler.next_step()]
    realized = per_rank.sum(axis=0) / per_rank.sum()
    # Why this tolerance: each micro-batch stops before the example that would cross its cap, so it is
    # short of the cap by less than one example (cost <= max_cost). Per step, task n therefore gets
    # between b_n - W*m_n*max_cost and b_n tokens, and its share lies between the bounds below.
    budgets = probs * tokens_per_step
    shortfall = world_size * np.array(samplers[0].micro_steps) * 40
    lower = (budgets - shortfall) / tokens_per_step
    upper = budgets / (tokens_per_step - shortfall.sum())
    assert np.all(lower <= realized) and np.all(realized <= upper)
    assert np.abs(realized - probs).max() < 0.02
    assert np.abs(per_rank[0] / per_rank[0].sum() - realized).max() < 0.02


def test_tiny_probability_still_gets_one_example_per_rank_and_micro_step():
    lengths = random_lengths([1000, 1000], seed=8)
    sampler = make(lengths, [0.999, 0.001], world_size=2, tokens_per_step=2000, max_micro=1000)
    assert sampler.micro_token_caps[1] == pytest.approx(1.0)  # b = 2 tokens over 2 ranks; examples cost >= 4
    tokens = np.zeros(2)
    for _ in range(10):
        windows = sampler.next_step()
        assert [len(batch) for batch in windows[1].micro_batches] == [1]
        tokens += [w.tokens for w in windows]
    assert tokens[1] / tokens.sum() > 0.001  # the documented over-representation


# --- resumption ----------------------------------------------------------------------------------

def test_restore_reproduces_the_future_exactly():
    sizes = [150, 40, 9]  # small tasks: the 40 steps cross many epoch boundaries
    lengths = random_lengths(sizes, seed=9)
    probs = temperature_probs(sizes, 5.0)
    for rank in range(2):
        uninterrupted = make(lengths, probs, rank=rank, world_size=2, tokens_per_step=1500, max_micro=200)
        for _ in range(13):
            uninterrupted.next_step()
        state = json.loads(json.dumps(uninterrupted.state_dict()))  # plain data, survives json
        assert state["epochs"][2] > 0
        expected = [plan(uninterrupted.next_step()) for _ in range(27)]
        resumed = make(lengths, probs, rank=rank, world_size=2, tokens_per_step=1500, max_micro=200)
        resumed.load_state_dict(state)
        assert resumed.step == 13
        assert [plan(resumed.next_step()) for _ in range(27)] == expected


def test_restore_with_other_probs_neither_repeats_nor_skips():
    lengths = random_lengths([200, 60], seed=10)
    before = make(lengths, [0.5, 0.5], tokens_per_step=800, max_micro=200)
    first = run_streams(before, 7, 2)
    after = make(lengths, [0.9, 0.1], tokens_per_step=3000, max_micro=500)
    after.load_state_dict(before.state_dict())
    second = run_streams(after, 5, 2)
    for task in (0, 1):
        joined = first[task] + second[task]
        assert joined == expected_stream(lengths[task], 11, task, 0, 1, 16, len(joined))


@pytest.mark.parametrize("change, key", [({"world_size": 2, "rank": 1}, "world_size"), ({"seed": 3}, "seed"),
                                         ({"sort_block": 8}, "sort_block")])
def test_restore_refuses_other_streams(change, key):
    lengths = random_lengths([100, 50])
    state = make(lengths, [0.5, 0.5]).state_dict()
    with pytest.raises(ValueError, match=key):
        make(lengths, [0.5, 0.5], **change).load_state_dict(state)
    with pytest.raises(ValueError, match="lengths_crc32"):
        make(random_lengths([100, 50], seed=1), [0.5, 0.5]).load_state_dict(state)


# --- bad input -----------------------------------------------------------------------------------

def test_more_ranks_than_examples_names_the_task():
    lengths = random_lengths([100, 3])
    with pytest.raises(ValueError, match=r"task sw-en has 3 examples.*fewer ranks or more data"):
        LanguageSyncSampler(lengths, [0.5, 0.5], 1000, 200, seed=0, rank=0, world_size=4,
                            task_names=["fr-en", "sw-en"])


@pytest.mark.parametrize("kwargs, message", [
    ({"probs": [0.5, 0.4]}, "sum to 1"),
    ({"probs": [1.0, 0.0]}, "probs"),
    ({"probs": [1.0]}, "probs"),
    ({"max_micro": 30}, "max_tokens_per_micro"),
    ({"tokens_per_step": 0}, "tokens_per_step"),
    ({"rank": 2, "world_size": 2}, "rank"),
    ({"seed": -1}, "seed"),
    ({"sort_block": 0}, "sort_block"),
])
def test_bad_arguments(kwargs, message):
    arguments = {"lengths": random_lengths([50, 50]), "probs": [0.5, 0.5], **kwargs}
    with pytest.raises(ValueError, match=message):
        make(**arguments)


def test_bad_lengths():
    with pytest.raises(ValueError, match=">= 1 token"):
        make([np.array([3, 0, 2])], [1.0])
    with pytest.raises(ValueError, match="integer"):
        make([np.array([3.0, 2.0])], [1.0])
    with pytest.raises(ValueError, match="at least one task"):
        make([], [])


# --- properties ----------------------------------------------------------------------------------

@st.composite
def sampler_setups(draw):
    world_size = draw(st.integers(1, 4))
    num_tasks = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(world_size, 60), min_size=num_tasks, max_size=num_tasks))
    max_cost = draw(st.integers(1, 30))
    lengths = [np.array(draw(st.lists(st.integers(1, max_cost), min_size=size, max_size=size)), dtype=np.int32)
               for size in sizes]
    weights = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=num_tasks, max_size=num_tasks)))
    return {
        "lengths": lengths, "probs": weights / weights.sum(), "world_size": world_size,
        "tokens_per_step": draw(st.integers(1, 3000)), "max_micro": draw(st.integers(max_cost, 200)),
        "seed": draw(st.integers(0, 2**32 - 1)), "sort_block": draw(st.integers(1, 20)),
        "restore_at": draw(st.integers(0, 6)),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sampler_setups())
def test_properties(setup):
    restore_at = setup.pop("restore_at")
    world_size, lengths = setup["world_size"], setup["lengths"]
    samplers = [make(rank=rank, **setup) for rank in range(world_size)]
    caps = samplers[0].micro_token_caps
    streams = [[[] for _ in lengths] for _ in range(world_size)]
    saved = []
    for step in range(8):
        if step == restore_at:
            saved = [sampler.state_dict() for sampler in samplers]
            replay = []
        plans = [sampler.next_step() for sampler in samplers]
        if step >= restore_at:
            replay.append([plan(windows) for windows in plans])
        shapes = [[(w.task, len(w.micro_batches)) for w in windows] for windows in plans]
        assert all(shape == shapes[0] for shape in shapes)  # language synchrony
        assert [task for task, _ in shapes[0]] == list(range(len(lengths)))
        for rank, windows in enumerate(plans):
            for window in windows:
                for batch in window.micro_batches:
                    assert batch and (lengths[window.task][batch].sum() <= caps[window.task] or len(batch) == 1)
                    streams[rank][window.task] += batch
    for rank in range(world_size):
        for task, task_lengths in enumerate(lengths):
            stream = streams[rank][task]
            assert stream == expected_stream(task_lengths, setup["seed"], task, rank, world_size,
                                             setup["sort_block"], len(stream))
    for rank in range(world_size):
        resumed = make(rank=rank, **setup)
        resumed.load_state_dict(saved[rank])
        assert [plan(resumed.next_step()) for _ in range(8 - restore_at)] == [entry[rank] for entry in replay]
    budgets = np.array(samplers[0].micro_steps) * np.array(caps) * world_size  # m_n * cap_n * W = b_n
    np.testing.assert_allclose(budgets, setup["probs"] * setup["tokens_per_step"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(8, 120), old_world=st.integers(1, 4), new_world=st.integers(1, 4),
       sort_block=st.sampled_from([1, 3, 8]), steps=st.integers(0, 12), seed=st.integers(0, 10))
def test_resharding_to_another_world_size_skips_no_example(size, old_world, new_world, sort_block, steps, seed):
    """Old ranks train ``steps`` steps; new ranks continue from the resharded states: together they
    cover the rest of every epoch the old ranks were in, and the step count carries over."""
    lengths = random_lengths([size, size // 2 + old_world + new_world], seed=seed)
    probs = [0.6, 0.4]

    def sampler(rank, world):
        return make(lengths, probs, rank=rank, world_size=world, tokens_per_step=300, max_micro=100, seed=seed,
                    sort_block=sort_block)
    old = [sampler(rank, old_world) for rank in range(old_world)]
    seen_before = [run_streams(s, steps, 2) for s in old]
    states = reshard_states([s.state_dict() for s in old], new_world)
    new = [sampler(rank, new_world) for rank in range(new_world)]
    for s, state in zip(new, states):
        s.load_state_dict(state)
        assert s.step == steps
    after = [run_streams(s, max(map(len, lengths)), 2) for s in new]   # >= 1 example a step: past the epoch
    for task, task_lengths in enumerate(lengths):
        epoch = min(s.state_dict()["epochs"][task] for s in old)
        permutation_len = len(task_lengths)
        consumed_before = _epoch_examples(seen_before, task, permutation_len, epoch, old_world)
        consumed_after = set().union(*(stream[task][:len(range(rank, permutation_len, new_world)) - cursor]
                                       for rank, (stream, cursor) in enumerate(
                                           zip(after, (state["cursors"][task] for state in states)))))
        assert consumed_before | consumed_after == set(range(permutation_len))


def _epoch_examples(streams, task, size, epoch, world):
    """Examples the old ranks took from epoch ``epoch`` (each rank's stream is whole epochs of its shard)."""
    taken = set()
    for rank, stream in enumerate(streams):
        shard = len(range(rank, size, world))
        taken.update(stream[task][epoch * shard:(epoch + 1) * shard])
    return taken
