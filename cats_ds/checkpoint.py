"""Checkpoints that survive crashes: DeepSpeed's save/load plus the trainer's client state.

Layout of ``RUN_DIR/checkpoints``::

    step00000500/            one complete checkpoint: DeepSpeed's files and manifest.json
    step00000500.partial/    a save in progress (or one a crash interrupted): never loaded
    step00000500.universal/  made from step00000500 when a run resumes at another world size
    step00000500.corrupt/    one that failed verification when a run resumed: set aside, never loaded
    step00000500.replaced/   an earlier attempt's, found where this run saves its step 500: set aside
    latest                   names the newest complete checkpoint
    best                     names the best one by eval.best_metric

A save is a commit: every rank writes into ``TAG.partial``; rank 0 then writes the manifest
(size and SHA-256 of every file), renames the directory to ``TAG`` and only then rewrites
``latest`` (write to a temporary file, fsync, rename). A crash at any point therefore leaves
the previous checkpoint complete and named by ``latest``. Resume verifies the manifest; a
checkpoint with a missing, truncated or altered file is reported and skipped in favour of the
newest older one that verifies, and set aside (renamed ``TAG.corrupt``) so that reaching its
step again writes fresh state; so is every checkpoint newer than the one resumed from that
fails. A save never adopts a directory it did not write (or resume from). Rank 0 reads every
rank's files, so multi-node runs need a shared file system (as DeepSpeed's own checkpoints do).

The client state carries everything else a run needs to continue exactly: the step, every
rank's sampler position and RNG state (gathered, so any rank can restore its own), the CATS
state and the settings the run's trajectory depends on. The trainer calls four functions:
``choose_resume`` (the newest checkpoint that verifies, made universal after a world-size
change), ``resume_run`` (load it and restore the run, refused when its settings differ),
``save_run`` and ``prune``; ``mark_best`` names the best one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cats_ds import distributed, placement
from cats_ds.config import RunConfig
from cats_ds.data.sampler import reshard_states

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTIAL, UNIVERSAL, CORRUPT, REPLACED = ".partial", ".universal", ".corrupt", ".replaced"
_FULL_BELOW = 16 << 20   # bytes free after a failed write that mean the file system is full
LATEST, BEST = "latest", "best"
# ds_to_universal refuses checkpoints without this client-state key; a plain data-parallel
# model needs no tensor- or pipeline-parallel patterns in it
_UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}


def step_tag(step: int) -> str:
    return f"step{step:08d}"


@dataclass(frozen=True)
class ResumePoint:
    """A verified checkpoint to resume from, and how DeepSpeed must load it."""

    tag: str                # the directory DeepSpeed loads (``TAG.universal`` after a world-size change)
    saved_world_size: int

    @property
    def universal(self) -> bool:
        return self.tag.endswith(UNIVERSAL)


# ----------------------------------------------------------------------------------------------
# saving


# the checkpoints this process saved or resumed from: the only existing ones save() re-points to
_OURS: set[Path] = set()


def save(engine, directory: Path, step: int, client_state: dict[str, Any]) -> str:
    """Saves step ``step`` atomically and points ``latest`` at it; all ranks must call it.

    A checkpoint of the same step that this process saved or resumed from is already this state
    (training is deterministic), so it is only re-pointed to, never rewritten. One it finds from
    an earlier attempt is never adopted: it is set aside as ``TAG.replaced`` and written afresh.
    """
    tag = step_tag(step)
    target = (directory / tag).absolute()
    if target in _OURS and _is_complete(target):
        _commit_pointer(directory, LATEST, tag)
        return tag
    if distributed.rank() == 0 and target.exists():
        _set_aside(target, REPLACED, "an earlier attempt's, neither saved nor resumed from by this run")
    partial = directory / (tag + PARTIAL)
    if distributed.rank() == 0 and partial.exists():
        shutil.rmtree(partial)                  # left by a save that crashed
    distributed.barrier()
    per_rank = distributed.all_gather_objects({"rng": placement.rng_state(), **client_state.pop("per_rank")})
    state = {**client_state, "per_rank": per_rank, "world_size": distributed.world_size(), **_UNIVERSAL_INFO}
    with _space_explained(partial, step):
        engine.save_checkpoint(str(directory), tag=partial.name, client_state=state, save_latest=False)
    distributed.barrier()
    if distributed.rank() == 0:
        with _space_explained(partial, step):
            _write_manifest(partial, tag, step)
        partial.rename(directory / tag)
        _atomic_write(directory / LATEST, tag + "\n")
    distributed.barrier()
    _OURS.add(target)
    return tag


@contextlib.contextmanager
def _space_explained(partial: Path, step: int) -> Iterator[None]:
    """Turns a write that failed for lack of space into an error that says so and names the path:
    torch reports a full disk only as "unexpected pos 128 vs 0", without the errno. The file
    system counts as full when the failure left less than _FULL_BELOW bytes free."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        usage = shutil.disk_usage(partial.parent)
        if getattr(err, "errno", None) != errno.ENOSPC and usage.free >= _FULL_BELOW:
            raise
        raise OSError(errno.ENOSPC, f"saving step {step} into {partial} failed: no space left on its file system "
                                    f"({usage.free:,} of {usage.total:,} bytes free; the write said: {err}); free "
                                    "some space and run the same command again: it resumes from the latest "
                                    "complete checkpoint") from err


def mark_best(directory: Path, tag: str) -> None:
    """Points ``best`` at the complete checkpoint ``tag`` (rank 0 writes; all ranks wait)."""
    _commit_pointer(directory, BEST, tag)


def _commit_pointer(directory: Path, name: str, tag: str) -> None:
    if distributed.rank() == 0:
        _atomic_write(directory / name, tag + "\n")
    distributed.barrier()


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _write_manifest(checkpoint: Path, tag: str, step: int) -> None:
    files = {str(path.relative_to(checkpoint)): _file_record(path)
             for path in sorted(checkpoint.rglob("*")) if path.is_file()}
    manifest = {"tag": tag, "step": step, "world_size": distributed.world_size(), "files": files}
    _atomic_write(checkpoint / MANIFEST, json.dumps(manifest, indent=1))


def _file_record(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


# ----------------------------------------------------------------------------------------------
# verifying and choosing what to resume from


def verify(checkpoint: Path) -> dict[str, Any]:
    """Returns the checkpoint's manifest; raises ValueError naming the first problem found."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except FileNotFoundError:
        raise ValueError(f"{checkpoint}: no {MANIFEST} (an incomplete save)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{checkpoint}/{MANIFEST}: unreadable ({err})") from None
    for name, expected in manifest["files"].items():
        path = checkpoint / name
        if not path.is_file():
            raise ValueError(f"{path}: missing")
        if path.stat().st_size != expected["bytes"]:
            raise ValueError(f"{path}: {path.stat().st_size} bytes, the manifest says {expected['bytes']}")
        if _file_record(path)["sha256"] != expected["sha256"]:
            raise ValueError(f"{path}: checksum differs from the manifest (corrupted)")
    return manifest


def why_unusable(checkpoint: Path) -> str | None:
    """None when ``checkpoint`` verifies, else why not; rank 0 checks, every rank gets the answer."""
    problem = None
    if distributed.rank() == 0:
        try:
            verify(checkpoint)
        except ValueError as err:
            problem = str(err)
    return distributed.broadcast_object(problem)


def _is_complete(checkpoint: Path) -> bool:
    return (checkpoint / MANIFEST).is_file()


def step_checkpoints(directory: Path) -> list[Path]:
    """Complete-looking step checkpoints, newest first (not yet verified)."""
    return sorted((p for p in directory.glob("step*") if p.is_dir() and p.suffix == ""), reverse=True)


def _read_pointer(directory: Path, name: str) -> str | None:
    path = directory / name
    return path.read_text().strip() if path.is_file() else None


def choose_resume(directory: Path) -> ResumePoint | None:
    """The checkpoint to resume from, the same on every rank; None when there is none.

    Rank 0 verifies ``latest`` first, then older step checkpoints, and makes a universal copy
    when the checkpoint was written at another world size.
    """
    point = _choose_on_rank0(directory) if distributed.rank() == 0 else None
    return distributed.broadcast_object(point)


def _choose_on_rank0(directory: Path) -> ResumePoint | None:
    if not directory.is_dir():
        return None
    latest = _read_pointer(directory, LATEST)
    candidates = step_checkpoints(directory)
    if latest and directory / latest in candidates:     # latest first; it is the newest in normal runs
        candidates.remove(directory / latest)
        candidates.insert(0, directory / latest)
    unusable = []
    for checkpoint in candidates:
        try:
            manifest = verify(checkpoint)
        except ValueError as err:
            log.error("checkpoint not usable, trying an older one: %s", err)
            unusable.append(checkpoint)
            continue
        if checkpoint.name != latest:
            log.warning("resuming from %s although latest names %s", checkpoint.name, latest)
        # newer ones than latest were not tried: those that fail are set aside as well
        unusable += [newer for newer in candidates if newer.name > checkpoint.name and newer not in unusable
                     and not _verifies(newer)]
        for damaged in unusable:
            _set_aside(damaged, CORRUPT, "it failed verification")
        saved = int(manifest["world_size"])
        if saved == distributed.world_size():
            return ResumePoint(checkpoint.name, saved)
        return ResumePoint(_universal_copy(checkpoint).name, saved)
    if candidates:
        raise RuntimeError(f"{directory}: no checkpoint verifies (see the errors above); move the directory "
                           "away to start from scratch")
    return None


def _set_aside_name(name: str) -> bool:
    return CORRUPT in name or REPLACED in name


def _verifies(checkpoint: Path) -> bool:
    try:
        verify(checkpoint)
        return True
    except ValueError as err:
        log.error("checkpoint not usable: %s", err)
        return False


def _set_aside(checkpoint: Path, suffix: str, why: str) -> None:
    """Renames a checkpoint to ``TAG{suffix}`` (``{suffix}2``, ... when that exists), so that
    reaching its step again writes fresh state; kept for inspection, never loaded or pruned.
    Corrupt ones are set aside only once an older checkpoint verifies: with none, the run stops
    instead of starting from scratch."""
    names = (checkpoint.with_name(f"{checkpoint.name}{suffix}{n if n > 1 else ''}") for n in itertools.count(1))
    target = next(name for name in names if not name.exists())
    checkpoint.rename(target)
    shutil.rmtree(checkpoint.with_name(checkpoint.name + UNIVERSAL), ignore_errors=True)  # made from it
    log.error("%s set aside as %s (%s): it is never loaded, and its step is saved afresh when training "
              "reaches it", checkpoint, target.name, why)


def _universal_copy(checkpoint: Path) -> Path:
    """DeepSpeed's universal checkpoint of ``checkpoint``: loadable at any world size and ZeRO stage."""
    target = checkpoint.with_name(checkpoint.name + UNIVERSAL)
    if _is_complete(target):
        return target
    log.info("converting %s to a universal checkpoint for a new world size", checkpoint.name)
    shutil.rmtree(target, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                             "--input_folder", str(checkpoint), "--output_folder", str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"converting {checkpoint} to a universal checkpoint failed:\n{result.stderr[-3000:]}")
    (target / MANIFEST).write_text((checkpoint / MANIFEST).read_text())
    return target


# ----------------------------------------------------------------------------------------------
# loading


def load(engine, directory: Path, tag: str, load_optimizer: bool = True) -> dict[str, Any]:
    """Loads checkpoint ``tag`` and returns its client state, ``per_rank`` still a list over the
    saving ranks (see ``own_state``)."""
    path, client_state = engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=load_optimizer,
                                                load_lr_scheduler_states=load_optimizer)
    if path is None:
        raise FileNotFoundError(f"{directory}/{tag}: no loadable DeepSpeed checkpoint")
    return client_state


# ----------------------------------------------------------------------------------------------
# retention


def prune(directory: Path, keep_last: int) -> None:
    """Keeps the newest ``keep_last`` step checkpoints and the best one; removes the rest and
    the leftovers of interrupted saves (rank 0 only)."""
    if distributed.rank() == 0 and keep_last > 0:
        keep = {_read_pointer(directory, LATEST), _read_pointer(directory, BEST)}
        complete = [p for p in step_checkpoints(directory) if _is_complete(p)]
        keep.update(p.name for p in complete[:keep_last])
        for path in directory.glob("step*"):
            if path.is_dir() and path.name.split(".")[0] not in keep and not _set_aside_name(path.name):
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed checkpoint %s", path.name)
    distributed.barrier()


# ----------------------------------------------------------------------------------------------
# a run's state: what a checkpoint carries besides DeepSpeed's files, and resuming from it


def save_run(run, directory: Path) -> str:
    """Saves ``run`` (a cats_ds.train.Run) at its current step; returns the tag."""
    return save(run.engine, directory, run.step, run_state(run))


def resume_run(run, directory: Path, point: ResumePoint) -> None:
    """Loads checkpoint ``point`` (from choose_resume) into ``run``'s engine and continues ``run`` from it."""
    restore_run(run, load(run.engine, directory, point.tag), directory / point.tag)
    _OURS.add((directory / point.tag.removesuffix(UNIVERSAL)).absolute())
    log.info("resumed from %s at step %d (saved by %d ranks)", directory / point.tag, run.step, point.saved_world_size)


# settings a run may change when it resumes: how long it runs, how it logs, saves and evaluates
_RESUMABLE_CHANGES = ("train.run_dir", "train.max_steps", "train.max_minutes", "train.log_every", "train.save_every",
                      "train.keep_last", "train.keep_best", "train.max_nonfinite_steps", "train.threads",
                      "train.export", "train.device", "data.cache_dir", "eval.")


def trajectory_settings(config: RunConfig) -> dict:
    """The flattened settings a run's trajectory depends on (all but _RESUMABLE_CHANGES)."""
    flat = _flatten(dataclasses.asdict(config))
    return {key: value for key, value in flat.items() if not key.startswith(_RESUMABLE_CHANGES)}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_state(run) -> dict:
    """The client state of ``run`` (a cats_ds.train.Run): everything but DeepSpeed's own files."""
    state = {"step": run.step, "best": run.best, "nonfinite_steps": run.nonfinite.total,
             "settings": trajectory_settings(run.config), "per_rank": {"sampler": run.sampler.state_dict()}}
    if run.cats:
        state.update(run.cats.state_dict())
        state["per_rank"].update(run.cats.per_rank_state())
    return state


def restore_run(run, state: dict, where: Path) -> None:
    """Continues ``run`` from the client state ``state`` read from checkpoint ``where``: refused when
    the run's trajectory settings differ from the saved ones."""
    _check_same_settings(trajectory_settings(run.config), state["settings"], where)
    run.step, run.best, run.nonfinite.total = state["step"], state["best"], state["nonfinite_steps"]
    own = _own_rank_state(state["per_rank"], run.config.train.seed, run.step)
    run.sampler.load_state_dict(own["sampler"])
    if run.cats:
        run.cats.load_state_dict(state, own, where)


def _check_same_settings(now: dict, saved: dict, where: Path) -> None:
    differing = settings_differences(now, saved)
    if differing:
        details = "; ".join(f"{key}: saved {saved.get(key, '(not recorded)')!r}, now {now.get(key)!r}"
                            for key in differing)
        raise ValueError(f"{where} belongs to a run with other settings ({details}); resume with the saved "
                         "settings, or start a new run in another train.run_dir")


def settings_differences(now: dict, saved: dict) -> list[str]:
    """The trajectory settings in which ``now`` and ``saved`` differ. A key the checkpoint does
    not record was added to cats-ds after it was written, and that run behaved as the key's
    default does: it counts as the default. A key it records that no longer exists is ignored."""
    defaults = trajectory_settings(RunConfig())
    return sorted(key for key in now if now[key] != saved.get(key, defaults.get(key)))


def _own_rank_state(per_rank: list[dict], seed: int, step: int) -> dict:
    """This rank's sampler states and RNG. After a world-size change the samplers are resharded
    (no example skipped, see reshard_states) and the RNG is seeded from (seed, step, rank)."""
    rank, world = distributed.rank(), distributed.world_size()
    if len(per_rank) == world:
        own = per_rank[rank]
        placement.set_rng_state(own["rng"])
        return own
    log.warning("resuming a %d-rank checkpoint on %d ranks: data shards are redistributed", len(per_rank), world)
    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))
    return {key: reshard_states([state[key] for state in per_rank], world)[rank]
            for key in per_rank[0] if key != "rng"}
