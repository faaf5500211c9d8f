"""Checkpoints: DeepSpeed's own save/load (model, optimizer, scheduler) plus the trainer's client state.

The client state carries everything else a run needs to continue exactly: the step, every
rank's sampler position and RNG state (gathered, so any rank can restore its own), and the
CATS state. Checkpoints are tagged ``stepNNNNNNNN``; DeepSpeed's ``latest`` file names the newest;
``best`` is the best one by the configured metric.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from cats_ds import distributed

log = logging.getLogger(__name__)

BEST_TAG = "best"


def step_tag(step: int) -> str:
    return f"step{step:08d}"


def save(engine, directory: Path, tag: str, client_state: dict[str, Any]) -> None:
    """Saves on every rank (DeepSpeed writes each rank's shard); all ranks must call it."""
    per_rank = distributed.all_gather_objects({"rng": torch.get_rng_state(), **client_state.pop("per_rank")})
    engine.save_checkpoint(str(directory), tag=tag, client_state={**client_state, "per_rank": per_rank},
                           save_latest=tag != BEST_TAG)


def latest_tag(directory: Path) -> str | None:
    latest = directory / "latest"
    return latest.read_text().strip() if latest.exists() else None


def load(engine, directory: Path, tag: str, load_optimizer: bool = True) -> dict[str, Any]:
    """Loads checkpoint ``tag`` and restores this rank's RNG; returns the client state with
    ``per_rank`` replaced by this rank's own entry."""
    path, client_state = engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=load_optimizer,
                                                load_lr_scheduler_states=load_optimizer)
    if path is None:
        raise FileNotFoundError(f"{directory}/{tag}: no loadable DeepSpeed checkpoint")
    per_rank = client_state["per_rank"]
    if len(per_rank) != distributed.world_size():
        raise ValueError(f"{directory}/{tag} was saved by {len(per_rank)} ranks, this job has "
                         f"{distributed.world_size()}: resuming at another world size is not supported yet")
    own = per_rank[distributed.rank()]
    torch.set_rng_state(own.pop("rng"))
    return {**client_state, "per_rank": own}


def prune(directory: Path, keep_last: int) -> None:
    """Deletes all but the newest ``keep_last`` step checkpoints (rank 0 only; never ``best``)."""
    if distributed.rank() != 0 or keep_last <= 0:
        return
    tags = sorted(p for p in directory.glob("step*") if p.is_dir())
    for old in tags[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed old checkpoint %s", old)
