"""Plans which examples each data-parallel rank trains on, micro-step by micro-step.

The plan makes CATS possible inside ZeRO (docs/design.md, section 4):
in every micro-step all ranks run the same task, each on its own disjoint
shard of that task's data, so that after the last micro-step of a task's
window the reduced gradient in each rank's partition belongs to that task
alone.

Semantics, for tasks n = 0..N-1 with sampling probabilities p_n, W ranks,
``tokens_per_step`` tokens per optimizer step (all ranks, all micro-steps)
and ``max_tokens_per_micro`` tokens per rank per micro-step; the token cost of
an example is src_len + tgt_len:

- Step plan. Every optimizer step runs one window per task, tasks in the
  fixed order 0..N-1. Task n's budget is b_n = p_n * tokens_per_step; its
  window has m_n = max(1, ceil(b_n / (W * max_tokens_per_micro)))
  micro-steps. m_n depends only on p, tokens_per_step and W, so it is the
  same on every rank: all ranks run the same task in every micro-step, and
  every task appears in every step. The trainer (cats_ds/train.py) runs one
  forward/backward per micro-step with DeepSpeed's gradient_accumulation_steps
  set to 1 and marks the accumulation boundaries itself: on the last
  micro-step of every window with CATS on, on the step's last micro-step
  with CATS off.
- Micro-batches. Each micro-step of task n takes the next examples of this
  rank's stream of task n while their summed cost stays within
  cap_n = b_n / (W * m_n) (``micro_token_caps``), and always at least one.
- Streams. Each task has its own infinite stream per rank. Epoch e of task n
  is a permutation of all its examples drawn from a generator seeded by
  (seed, n, e); rank r takes positions r, r+W, r+2W, ... of it (disjoint
  across ranks, together covering the epoch once); within consecutive blocks
  of ``sort_block`` examples that shard is sorted by cost so that a
  micro-batch holds examples of similar length and pads little. A stream that
  runs out mid-micro-batch continues with the next epoch.
- Resumption. Everything is determined by (seed, rank, W) and the data. The
  state is small: the step count and, per task, the epoch and the cursor in
  this rank's shard of it. ``load_state_dict`` recomputes only the current
  epoch's shard of each task; nothing is replayed, and it refuses a state
  saved for another seed, rank, W, sort_block or data. The trainer saves
  every rank's state in each checkpoint and refuses to resume with other
  ``sampling.*`` settings (its settings check). On another world size it
  first converts the states with ``reshard_states``: no example is skipped,
  and a bounded number may be seen twice.

Distortion of the token shares (the trainer logs each step's realized
target-token share per task, ``token_share``):

- A micro-batch stops before the example that would cross cap_n, so each
  micro-step under-fills by less than one example: task n realizes between
  b_n - W * m_n * max_cost_n and b_n tokens per step.
- A task gets at least one example per rank per micro-step even when cap_n is
  smaller than that example's cost, so a task with a tiny p_n (high-resource
  imbalance with T near 1, many ranks) is over-represented: it realizes at
  least W examples per step. Reduce W or raise tokens_per_step if that
  matters.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_STATE_VERSION = 1
_CEIL_SLACK = 1e-9  # so b/(W*M) that is an integer up to rounding does not get an extra micro-step


def temperature_probs(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """p_n proportional to size_n ** (1/T): T=1 proportional, large T close to uniform."""
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    sizes_array = np.asarray(sizes, dtype=np.float64)
    if sizes_array.ndim != 1 or len(sizes_array) == 0:
        raise ValueError(f"sizes must be a non-empty list of task sizes, got shape {sizes_array.shape}")
    if not np.all(np.isfinite(sizes_array)) or np.any(sizes_array < 0) or not np.any(sizes_array > 0):
        raise ValueError(f"sizes must be finite, >= 0 and not all 0, got {list(sizes)}")
    with np.errstate(divide="ignore"):
        log_weights = np.log(sizes_array) / temperature  # log space: size ** (1/T) overflows for small T
    weights = np.exp(log_weights - log_weights.max())
    return weights / weights.sum()


def shard_order(lengths: np.ndarray, seed: int, task: int, epoch: int, rank: int, world_size: int,
                sort_block: int) -> np.ndarray:
    """Example indices of ``rank``'s shard of epoch ``epoch`` of task ``task``, in stream order."""
    permutation = np.random.default_rng([seed, task, epoch]).permutation(len(lengths))
    shard = permutation[rank::world_size]
    block = np.arange(len(shard)) // sort_block
    return shard[np.lexsort((lengths[shard], block))]  # lexsort is stable: ties keep the random order


@dataclass
class Window:
    """One task's consecutive micro-steps inside one optimizer step, on this rank."""

    task: int
    micro_batches: list[list[int]]  # this rank's example indices, one list per micro-step
    micro_tokens: list[int]         # their token costs (src_len + tgt_len), one per micro-step

    @property
    def tokens(self) -> int:
        return sum(self.micro_tokens)


class LanguageSyncSampler:
    """Language-synchronous, temperature-weighted, rank-sharded, resumable step planner."""

    def __init__(self, lengths: Sequence[np.ndarray], probs: Sequence[float], tokens_per_step: int,
                 max_tokens_per_micro: int, seed: int, rank: int, world_size: int, sort_block: int = 512,
                 task_names: Sequence[str] | None = None) -> None:
        if len(lengths) == 0:
            raise ValueError("lengths must hold at least one task")
        self._names = list(task_names) if task_names is not None else [f"#{n}" for n in range(len(lengths))]
        if len(self._names) != len(lengths):
            raise ValueError(f"task_names has {len(self._names)} names for {len(lengths)} tasks")
        _check_scalars(tokens_per_step, max_tokens_per_micro, seed, rank, world_size, sort_block)
        self._lengths = [self._checked_lengths(n, task_lengths, world_size, max_tokens_per_micro)
                         for n, task_lengths in enumerate(lengths)]
        self._probs = self._checked_probs(probs)
        self._seed, self._rank, self._world_size, self._sort_block = seed, rank, world_size, sort_block
        budgets = self._probs * tokens_per_step
        per_micro_limit = world_size * max_tokens_per_micro
        self.micro_steps = tuple(max(1, math.ceil(budget / per_micro_limit - _CEIL_SLACK)) for budget in budgets)
        self.micro_token_caps = tuple(float(budget) / (world_size * m)
                                      for budget, m in zip(budgets, self.micro_steps))
        self._step = 0
        self._epochs = [0] * len(self._lengths)
        self._cursors = [0] * len(self._lengths)
        self._shards: list[np.ndarray] = []
        self._shard_costs: list[np.ndarray] = []
        for task in range(len(self._lengths)):
            self._shards.append(np.empty(0, dtype=np.int64))
            self._shard_costs.append(np.empty(0, dtype=np.int64))
            self._start_epoch(task, 0)

    @property
    def step(self) -> int:
        """Optimizer steps planned so far."""
        return self._step

    def next_step(self) -> list[Window]:
        """The plan of the next optimizer step for this rank: one window per task, tasks 0..N-1."""
        windows = []
        for task, (m, cap) in enumerate(zip(self.micro_steps, self.micro_token_caps)):
            batches, costs = zip(*(self._take(task, cap) for _ in range(m)))
            windows.append(Window(task=task, micro_batches=list(batches), micro_tokens=list(costs)))
        self._step += 1
        return windows

    def state_dict(self) -> dict:
        return {
            "version": _STATE_VERSION,
            "step": self._step,
            "epochs": list(self._epochs),
            "cursors": list(self._cursors),
            "stream": self._stream_identity(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the sampler that wrote ``state`` stopped."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')!r}, expected {_STATE_VERSION}")
        self._check_same_streams(state["stream"])
        # states saved before the sampler stopped counting its tokens also hold "tokens_taken": ignored
        for key in ("epochs", "cursors"):
            if len(state[key]) != len(self._lengths):
                raise ValueError(f"sampler state {key!r} has {len(state[key])} tasks, expected {len(self._lengths)}")
        self._step = int(state["step"])
        for task, (epoch, cursor) in enumerate(zip(state["epochs"], state["cursors"])):
            self._start_epoch(task, int(epoch))
            if not 0 <= cursor <= len(self._shards[task]):
                raise ValueError(f"sampler state: cursor {cursor} of task {self._names[task]} is outside "
                                 f"its shard of {len(self._shards[task])} examples")
            self._cursors[task] = int(cursor)

    def _take(self, task: int, cap: float) -> tuple[list[int], int]:
        """Next examples of ``task``'s stream whose summed cost stays within ``cap`` (at least one)."""
        taken: list[int] = []
        spent = 0
        while True:
            if self._cursors[task] == len(self._shards[task]):
                self._start_epoch(task, self._epochs[task] + 1)
            cursor, room = self._cursors[task], cap - spent
            # costs are >= 1, so at most floor(room) + 1 examples need looking at
            costs = self._shard_costs[task][cursor:cursor + max(0, math.floor(room)) + 1]
            fitting = int(np.searchsorted(np.cumsum(costs), room, side="right"))
            if not taken:
                fitting = max(fitting, 1)
            taken.extend(self._shards[task][cursor:cursor + fitting].tolist())
            spent += int(costs[:fitting].sum())
            self._cursors[task] = cursor + fitting
            if fitting == 0 or self._cursors[task] < len(self._shards[task]):
                return taken, spent  # stopped before an example that does not fit

    def _start_epoch(self, task: int, epoch: int) -> None:
        shard = shard_order(self._lengths[task], self._seed, task, epoch, self._rank,
                            self._world_size, self._sort_block)
        self._shards[task] = shard
        self._shard_costs[task] = self._lengths[task][shard]
        self._epochs[task] = epoch
        self._cursors[task] = 0

    def _stream_identity(self) -> dict:
        """What the example streams depend on; a state only fits a sampler with the same."""
        return {
            "seed": self._seed,
            "rank": self._rank,
            "world_size": self._world_size,
            "sort_block": self._sort_block,
            "task_sizes": [len(task_lengths) for task_lengths in self._lengths],
            "lengths_crc32": [zlib.crc32(task_lengths.tobytes()) for task_lengths in self._lengths],
        }

    def _check_same_streams(self, recorded: dict) -> None:
        current = self._stream_identity()
        differing = sorted(key for key in current.keys() | recorded.keys() if current.get(key) != recorded.get(key))
        if differing:
            details = "; ".join(f"{key}: saved {recorded.get(key)}, now {current.get(key)}" for key in differing)
            raise ValueError(f"sampler state was saved for other data streams ({details}); "
                             f"resume with the same seed, world size, rank, sort_block and data")

    def _checked_lengths(self, task: int, task_lengths: np.ndarray, world_size: int,
                         max_tokens_per_micro: int) -> np.ndarray:
        name = self._names[task]
        array = np.asarray(task_lengths)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"lengths of task {name} must be a 1-D integer array, got {array.dtype} {array.shape}")
        if len(array) < world_size:
            raise ValueError(f"task {name} has {len(array)} examples, fewer than the {world_size} ranks, so some "
                             f"rank's shard would be empty; use fewer ranks or more data for it")
        if array.min() < 1:
            raise ValueError(f"lengths of task {name} must be >= 1 token, found {array.min()}")
        if array.max() > max_tokens_per_micro:
            raise ValueError(f"task {name} has an example of {array.max()} tokens, more than "
                             f"max_tokens_per_micro={max_tokens_per_micro}; raise it or lower max_len")
        return array.astype(np.int64)

    def _checked_probs(self, probs: Sequence[float]) -> np.ndarray:
        array = np.asarray(probs, dtype=np.float64)
        if array.shape != (len(self._lengths),):
            raise ValueError(f"probs has shape {array.shape}, expected one per task ({len(self._lengths)})")
        if not np.all(np.isfinite(array)) or np.any(array <= 0):
            raise ValueError(f"probs must be finite and > 0 (every task runs in every step), got {list(probs)}")
        if abs(array.sum() - 1.0) > 1e-6:
            raise ValueError(f"probs must sum to 1, they sum to {array.sum()}")
        return array


def reshard_states(states: Sequence[dict], world_size: int) -> list[dict]:
    """Sampler states for ``world_size`` ranks that continue those of the ranks that wrote ``states``.

    Used when a run resumes at another world size. Within each task's current epoch, the new
    ranks start at the first position P of the epoch's permutation that some old rank had not
    yet consumed (rounded down to whole ``sort_block`` blocks of the old and new shards), so no
    example is skipped; the examples that old ranks had consumed beyond P are seen twice, at most
    the gap between the slowest and the fastest rank plus one block per rank.
    """
    steps = {int(state["step"]) for state in states}
    if len(steps) != 1:
        raise ValueError(f"sampler states disagree on the step ({sorted(steps)}): they are not one checkpoint")
    old_world = len(states)
    identity = states[0]["stream"]
    sort_block, sizes = identity["sort_block"], identity["task_sizes"]
    new_states = [{"version": states[0]["version"], "step": states[0]["step"], "epochs": [], "cursors": [],
                   "stream": {**identity, "rank": rank, "world_size": world_size}} for rank in range(world_size)]
    for task, size in enumerate(sizes):
        epoch, start = _first_unconsumed(states, task, size, old_world, sort_block)
        start -= start % (sort_block * world_size)
        for state in new_states:
            state["epochs"].append(epoch)
            state["cursors"].append(start // world_size)
    return new_states


def _first_unconsumed(states: Sequence[dict], task: int, size: int, world: int, sort_block: int) -> tuple[int, int]:
    """(epoch, P): the oldest epoch any rank is in, and the first position of its permutation
    that some rank has not consumed, counting only whole sorted blocks of each shard."""
    epoch = min(int(state["epochs"][task]) for state in states)
    start = size
    for rank, state in enumerate(states):
        cursor, shard_size = int(state["cursors"][task]), len(range(rank, size, world))
        if int(state["epochs"][task]) > epoch or cursor >= shard_size:
            continue                                  # this rank finished the epoch
        whole_blocks = cursor // sort_block * sort_block
        start = min(start, whole_blocks * world + rank)
    return epoch, start


def _check_scalars(tokens_per_step: int, max_tokens_per_micro: int, seed: int, rank: int,
                   world_size: int, sort_block: int) -> None:
    for key, value, minimum in (("tokens_per_step", tokens_per_step, 1),
                                ("max_tokens_per_micro", max_tokens_per_micro, 1),
                                ("seed", seed, 0), ("world_size", world_size, 1), ("sort_block", sort_block, 1)):
        if not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
