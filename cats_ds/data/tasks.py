"""Tokenized examples, grouped into CATS tasks, and their batching.

A task is one translation direction by default, or a group of directions
(``group_directions``). ``build_tasks`` tokenizes every direction's bitext in
one sentencepiece batch call, drops (and counts, in a warning) examples whose
source or target exceeds ``max_len`` tokens (``length_limit`` derives a max_len
from the tokenized lengths instead), and stores each task as flat
int32 token arrays plus offsets, which keeps a million sentences in a few
hundred MB. Tasks are always ordered by name, so task indices agree between
splits and runs. ``collate`` turns a list of example indices into padded
tensors for a seq2seq model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from cats_ds.data.corpus import Bitext, Direction
    from cats_ds.families import TranslationTokenizer

logger = logging.getLogger(__name__)

Encoded = tuple[list[list[int]], list[list[int]]]  # one direction's source and target token ids
IGNORE_INDEX = -100  # label value that torch's cross entropy skips
GROUPINGS = ("direction", "target", "source")
_CACHE_FORMAT = 3   # 2: each task's pair counts in the metadata; 3: with the max_len applied
_ARRAY_FIELDS = ("src_tokens", "src_offsets", "tgt_tokens", "tgt_offsets", "direction_index")


@dataclass
class TaskData:
    """All examples of one task in one split, as flat token arrays.

    Example i's source is ``src_tokens[src_offsets[i]:src_offsets[i+1]]`` (same
    for the target); ``direction_index[i]`` indexes ``directions``.
    """

    name: str
    directions: list[str]
    src_tokens: np.ndarray
    src_offsets: np.ndarray
    tgt_tokens: np.ndarray
    tgt_offsets: np.ndarray
    direction_index: np.ndarray
    # pairs read from the corpus, kept, and dropped by reason ({"read", "kept", "dropped": {...}})
    counts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for side in ("src", "tgt"):
            _check_offsets(self.name, side, getattr(self, f"{side}_tokens"),
                           getattr(self, f"{side}_offsets"))
        if len(self.src_offsets) != len(self.tgt_offsets):
            raise ValueError(f"task {self.name}: {len(self.src_offsets) - 1} sources but "
                             f"{len(self.tgt_offsets) - 1} targets")
        if len(self.direction_index) != len(self):
            raise ValueError(f"task {self.name}: direction_index has {len(self.direction_index)} "
                             f"entries for {len(self)} examples")
        if len(self) and not 0 <= self.direction_index.min() <= self.direction_index.max() < len(self.directions):
            raise ValueError(f"task {self.name}: direction_index out of range for {self.directions}")

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def lengths(self) -> np.ndarray:
        """Token cost of each example, src_len + tgt_len: what the sampler budgets."""
        return self.src_lengths() + self.tgt_lengths()

    def source(self, index: int) -> np.ndarray:
        return self.src_tokens[self.src_offsets[index]:self.src_offsets[index + 1]]

    def target(self, index: int) -> np.ndarray:
        return self.tgt_tokens[self.tgt_offsets[index]:self.tgt_offsets[index + 1]]


def group_directions(directions: Sequence[str], grouping: str | Mapping[str, str] = "direction") -> dict[str, str]:
    """Map each direction name ("fr-en") to its task name.

    ``grouping``: "direction" (one task per direction), "target" (task "*-en"
    holds every direction into en), "source" (task "fr-*"), or an explicit
    mapping {direction: task} that must cover exactly ``directions``.
    """
    duplicates = sorted(name for name, count in Counter(directions).items() if count > 1)
    if duplicates:
        raise ValueError(f"directions listed more than once: {', '.join(duplicates)}")
    ordered = sorted(directions)
    if isinstance(grouping, Mapping):
        return _explicit_grouping(ordered, grouping)
    if grouping == "direction":
        return {name: name for name in ordered}
    if grouping == "target":
        return {name: f"*-{_split_direction(name)[1]}" for name in ordered}
    if grouping == "source":
        return {name: f"{_split_direction(name)[0]}-*" for name in ordered}
    raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)} or a mapping "
                     f"{{direction: task}}, got {grouping!r}")


def build_tasks(bitexts: Mapping[Direction, Bitext], tokenizer: TranslationTokenizer, task_of: Mapping[str, str],
                max_len: int, encoded: Mapping[Direction, Encoded] | None = None) -> list[TaskData]:
    """Tokenize ``bitexts`` into one TaskData per task of ``task_of``, sorted by task name.

    Sources and targets as the tokenizer lays them out. Examples whose source or target has
    more than ``max_len`` tokens (language tags or codes and eos included) are dropped and counted
    in a warning; a task left without examples raises ValueError. ``encoded``:
    the bitexts already tokenized by :func:`encode_bitexts` (not tokenized again).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (a tag or a piece, plus eos), got {max_len}")
    encoded = encoded if encoded is not None else encode_bitexts(bitexts, tokenizer)
    by_name = {direction.name: (direction, bitext) for direction, bitext in bitexts.items()}
    _check_task_map(set(by_name), task_of)
    tasks = []
    for task_name in sorted(set(task_of.values())):
        directions = sorted(name for name, task in task_of.items() if task == task_name)
        parts = [(*by_name[name], encoded[by_name[name][0]]) for name in directions]
        tasks.append(_build_task(task_name, parts, max_len))
    return tasks


def encode_bitexts(bitexts: Mapping[Direction, Bitext], tokenizer: TranslationTokenizer) -> dict[Direction, Encoded]:
    """Each direction's sources and targets as token ids, laid out as the tokenizer's model family
    does (cats_ds/families: the language tags or codes included)."""
    return {direction: (tokenizer.encode_source_batch(bitext.src, direction.src, direction.tgt),
                        tokenizer.encode_target_batch(bitext.tgt, direction.tgt))
            for direction, bitext in bitexts.items()}


def length_limit(encoded: Mapping[Direction, Encoded], keep: float, multiple: int = 8) -> tuple[int, dict[str, int]]:
    """The smallest max_len, rounded up to ``multiple``, that keeps at least the fraction ``keep``
    of every direction's pairs, and each direction's own unrounded limit (by direction name).
    Every direction, not the pooled pairs: a small direction with longer sentences would
    otherwise lose far more than ``keep`` promises."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if not encoded:
        raise ValueError("length_limit needs at least one direction")
    limits = {}
    for direction, (sources, targets) in encoded.items():
        longest = np.sort([max(len(s), len(t)) for s, t in zip(sources, targets)])
        needed = math.ceil(round(keep * len(longest), 9))   # rounded: 0.98 * n may come out a hair above
        limits[direction.name] = int(longest[needed - 1])
    return -(-max(limits.values()) // multiple) * multiple, limits


def collate(task: TaskData, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (pad positions -100)."""
    if len(indices) == 0:
        raise ValueError(f"task {task.name}: collate needs at least one example index")
    sources = [task.source(int(index)) for index in indices]
    targets = [task.target(int(index)) for index in indices]
    input_ids, attention_mask = _pad(sources, pad_id)
    labels, _ = _pad(targets, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def save_tasks(tasks: Sequence[TaskData], path: Path, fingerprint: str = "") -> None:
    """Write ``tasks`` to one .npz file (atomically).

    ``fingerprint`` is stored as is: pass something identifying the inputs
    (tokenizer, corpus, max_len) and give it again to :func:`load_tasks`,
    which then refuses a cache built from other inputs.
    """
    path = Path(path)
    meta = {"format": _CACHE_FORMAT, "fingerprint": fingerprint,
            "tasks": [{"name": task.name, "directions": task.directions, "counts": task.counts} for task in tasks]}
    arrays = {"meta": np.array(json.dumps(meta))}
    for index, task in enumerate(tasks):
        arrays.update({f"{index}/{name}": getattr(task, name) for name in _ARRAY_FIELDS})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def load_tasks(path: Path, fingerprint: str | None = None) -> list[TaskData]:
    """Read tasks written by :func:`save_tasks`; with ``fingerprint``, check it matches."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task cache {path} does not exist")
    with np.load(path, allow_pickle=False) as archive:
        if "meta" not in archive:
            raise ValueError(f"{path}: not a task cache (no 'meta' entry)")
        meta = json.loads(str(archive["meta"]))
        if meta.get("format") != _CACHE_FORMAT:
            raise ValueError(f"{path}: cache format {meta.get('format')}, expected {_CACHE_FORMAT}; rebuild it")
        if fingerprint is not None and meta["fingerprint"] != fingerprint:
            raise ValueError(f"{path}: built from other inputs (fingerprint {meta['fingerprint']!r}, "
                             f"wanted {fingerprint!r}); delete it to rebuild")
        return [TaskData(name=entry["name"], directions=list(entry["directions"]), counts=entry["counts"],
                         **{name: _read_array(archive, path, f"{index}/{name}") for name in _ARRAY_FIELDS})
                for index, entry in enumerate(meta["tasks"])]


def _read_array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    if key not in archive:
        raise ValueError(f"{path}: missing array {key!r}")
    return archive[key]


def _build_task(name: str, parts: list[tuple[Direction, Bitext, Encoded]], max_len: int) -> TaskData:
    sources: list[list[int]] = []
    targets: list[list[int]] = []
    direction_index: list[np.ndarray] = []
    dropped: dict[str, int] = {}
    for index, (direction, _, (encoded_src, encoded_tgt)) in enumerate(parts):
        kept = [(s, t) for s, t in zip(encoded_src, encoded_tgt) if len(s) <= max_len and len(t) <= max_len]
        dropped[direction.name] = len(encoded_src) - len(kept)
        sources.extend(s for s, _ in kept)
        targets.extend(t for _, t in kept)
        direction_index.append(np.full(len(kept), index, dtype=np.int32))
    _report_dropped(name, dropped, len(sources), max_len)
    src_tokens, src_offsets = _flatten(sources)
    tgt_tokens, tgt_offsets = _flatten(targets)
    counts = pair_counts([bitext for _, bitext, _ in parts], too_long=sum(dropped.values()), max_len=max_len)
    return TaskData(name=name, directions=[direction.name for direction, _, _ in parts],
                    src_tokens=src_tokens, src_offsets=src_offsets,
                    tgt_tokens=tgt_tokens, tgt_offsets=tgt_offsets,
                    direction_index=np.concatenate(direction_index), counts=counts)


def pair_counts(bitexts: Sequence[Bitext], too_long: int | None = None, max_len: int | None = None) -> dict:
    """Pairs read from the corpus files of ``bitexts``, kept and dropped by reason: empty on a side
    (when reading) and, where the pairs were tokenized, longer than ``max_len`` (then recorded too)."""
    empty = sum(bitext.dropped_empty for bitext in bitexts)
    read = sum(len(bitext) for bitext in bitexts) + empty
    dropped = {"empty": empty} if too_long is None else {"empty": empty, "too_long": too_long}
    counts = {"read": read, "kept": read - sum(dropped.values()), "dropped": dropped}
    return counts if max_len is None else {**counts, "max_len": max_len}


def _report_dropped(task: str, dropped: dict[str, int], kept: int, max_len: int) -> None:
    total = sum(dropped.values())
    if total:
        details = ", ".join(f"{name}: {count}" for name, count in dropped.items() if count)
        logger.warning("task %s: dropped %d of %d examples longer than max_len=%d tokens (%s)",
                       task, total, total + kept, max_len, details)
    if kept == 0:
        raise ValueError(f"task {task} has no examples left (directions {', '.join(dropped)}, "
                         f"max_len={max_len}); raise max_len or check its data")


def _flatten(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter(chain.from_iterable(sequences), dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets


def _pad(sequences: list[np.ndarray], pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(sequence) for sequence in sequences])
    padded = torch.full((len(sequences), int(lengths.max())), pad_value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        padded[row, :len(sequence)] = torch.from_numpy(sequence.astype(np.int64))
    mask = (torch.arange(padded.shape[1]) < lengths[:, None]).long()
    return padded, mask


def _check_offsets(task: str, side: str, tokens: np.ndarray, offsets: np.ndarray) -> None:
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(tokens):
        raise ValueError(f"task {task}: {side}_offsets must start at 0 and end at len({side}_tokens)")
    if np.any(np.diff(offsets) < 0):
        raise ValueError(f"task {task}: {side}_offsets must not decrease")


def _check_task_map(direction_names: set[str], task_of: Mapping[str, str]) -> None:
    unmapped = sorted(direction_names - set(task_of))
    if unmapped:
        raise ValueError(f"directions {', '.join(unmapped)} have bitexts but no task in task_of")
    missing = sorted(set(task_of) - direction_names)
    if missing:
        raise ValueError(f"task_of maps directions {', '.join(missing)}, which have no bitext in this split")


def _explicit_grouping(ordered: list[str], grouping: Mapping[str, str]) -> dict[str, str]:
    unmapped = [name for name in ordered if name not in grouping]
    if unmapped:
        raise ValueError(f"grouping maps no task for directions {', '.join(unmapped)}")
    unknown = sorted(set(grouping) - set(ordered))
    if unknown:
        raise ValueError(f"grouping names directions {', '.join(unknown)}, which are not in the data")
    for name in ordered:
        if not isinstance(grouping[name], str) or not grouping[name]:
            raise ValueError(f"grouping: direction {name} maps to {grouping[name]!r}, not a task name")
    return {name: grouping[name] for name in ordered}


def _split_direction(name: str) -> tuple[str, str]:
    parts = name.split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"direction {name!r} is not 'src-tgt' with one '-', so it cannot be "
                         f"grouped by language; use an explicit grouping mapping")
    return parts[0], parts[1]
