"""Atomic checkpoints: interrupted saves, corrupted files, fallback, retention (one process, real DeepSpeed)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import deepspeed
import pytest
import torch

from cats_ds import checkpoint, distributed
from cats_ds.config import RunConfig
from conftest import REPO


@pytest.fixture(scope="module")
def engine():
    saved_env = dict(os.environ)
    os.environ["DS_ACCELERATOR"] = "cpu"
    distributed.init()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 2}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                                      config=config)
    yield engine
    torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved_env)


def train_and_save(engine, directory, step):
    engine.backward(engine(torch.ones(2, 4)).square().sum())
    engine.step()
    return checkpoint.save(engine, directory, step, {"step": step, "per_rank": {"mark": step}})


def loaded_step(engine, directory):
    point = checkpoint.choose_resume(directory)
    return checkpoint.load(engine, directory, point.tag)["step"]


def test_save_commits_a_verified_checkpoint_and_points_latest_at_it(engine, tmp_path):
    tag = train_and_save(engine, tmp_path, 1)
    assert tag == "step00000001" and (tmp_path / "latest").read_text().strip() == tag
    manifest = checkpoint.verify(tmp_path / tag)
    assert manifest["step"] == 1 and manifest["world_size"] == 1 and manifest["files"]
    assert not list(tmp_path.glob("*.partial"))
    state = checkpoint.load(engine, tmp_path, tag)
    assert state["per_rank"][0]["mark"] == 1 and state["world_size"] == 1


def test_a_save_interrupted_midway_leaves_the_previous_checkpoint_as_latest(engine, tmp_path, monkeypatch):
    train_and_save(engine, tmp_path, 1)

    save_checkpoint = engine.save_checkpoint

    def crash_after_writing(*args, **kwargs):      # DeepSpeed's files written, nothing committed yet
        save_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt("killed while saving")
    monkeypatch.setattr(engine, "save_checkpoint", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        train_and_save(engine, tmp_path, 2)
    monkeypatch.undo()
    assert (tmp_path / "step00000002.partial").is_dir()
    assert (tmp_path / "latest").read_text().strip() == "step00000001"
    assert loaded_step(engine, tmp_path) == 1
    train_and_save(engine, tmp_path, 2)     # the next save clears the leftover and commits
    assert not (tmp_path / "step00000002.partial").exists() and loaded_step(engine, tmp_path) == 2


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete a file", "delete the manifest"])
def test_a_damaged_checkpoint_is_reported_and_resume_falls_back(engine, tmp_path, caplog, damage):
    train_and_save(engine, tmp_path, 1)
    tag = train_and_save(engine, tmp_path, 2)
    victim = max((p for p in (tmp_path / tag).rglob("*.pt")), key=lambda p: p.stat().st_size)
    if damage == "flip a byte":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "delete a file":
        victim.unlink()
    else:
        (tmp_path / tag / checkpoint.MANIFEST).unlink()
    with pytest.raises(ValueError, match=tag):
        checkpoint.verify(tmp_path / tag)
    with caplog.at_level(logging.ERROR, logger="cats_ds.checkpoint"):
        assert loaded_step(engine, tmp_path) == 1
    assert tag in caplog.text and f"set aside as {tag}.corrupt" in caplog.text
    # reaching step 2 again writes fresh state instead of re-pointing latest at the damaged one
    assert train_and_save(engine, tmp_path, 2) == tag
    assert checkpoint.verify(tmp_path / tag)["step"] == 2 and loaded_step(engine, tmp_path) == 2
    assert (tmp_path / f"{tag}.corrupt").is_dir()
    checkpoint.prune(tmp_path, keep_last=1)     # kept for inspection, never loaded
    assert (tmp_path / f"{tag}.corrupt").is_dir() and not (tmp_path / "step00000001").exists()


def test_a_checkpoint_damaged_twice_is_set_aside_twice(engine, tmp_path):
    train_and_save(engine, tmp_path, 1)
    for attempt in range(2):
        tag = train_and_save(engine, tmp_path, 2)
        (tmp_path / tag / checkpoint.MANIFEST).write_text("{not json")
        assert loaded_step(engine, tmp_path) == 1
    assert sorted(p.name for p in tmp_path.glob("step00000002*")) == ["step00000002.corrupt", "step00000002.corrupt2"]


def test_a_damaged_checkpoint_newer_than_latest_is_set_aside_too(engine, tmp_path):
    """latest at step 4, step 8 damaged (issue 29 part 2): resuming from 4 sets 8 aside, so that
    reaching step 8 writes it afresh and pruning step 4 leaves a checkpoint that verifies."""
    train_and_save(engine, tmp_path, 4)
    tag = train_and_save(engine, tmp_path, 8)
    (tmp_path / tag / checkpoint.MANIFEST).write_text("{not json")
    (tmp_path / "latest").write_text("step00000004\n")
    assert loaded_step(engine, tmp_path) == 4
    assert (tmp_path / f"{tag}.corrupt").is_dir() and not (tmp_path / tag).exists()
    train_and_save(engine, tmp_path, 8)
    checkpoint.prune(tmp_path, keep_last=1)
    assert checkpoint.verify(tmp_path / tag)["step"] == 8 and loaded_step(engine, tmp_path) == 8


def test_a_save_never_adopts_a_checkpoint_it_did_not_write(engine, tmp_path, monkeypatch):
    """A complete step N left by an earlier attempt (a newer one than latest names) is set aside
    as TAG.replaced and written afresh; the checkpoint a run resumed from is only re-pointed to."""
    train_and_save(engine, tmp_path, 1)
    tag = train_and_save(engine, tmp_path, 2)
    (tmp_path / "latest").write_text("step00000001\n")
    monkeypatch.setattr(checkpoint, "_OURS", set())          # a new process
    point = checkpoint.choose_resume(tmp_path)
    assert point.tag == "step00000001"
    checkpoint._OURS.add((tmp_path / point.tag).absolute())   # as resume_run records it
    before = (tmp_path / tag / checkpoint.MANIFEST).read_text()
    assert train_and_save(engine, tmp_path, 2) == tag
    assert (tmp_path / f"{tag}.replaced" / checkpoint.MANIFEST).read_text() == before
    assert checkpoint.verify(tmp_path / tag)["step"] == 2
    resumed = (tmp_path / "step00000001" / checkpoint.MANIFEST).stat().st_mtime_ns
    checkpoint.save(engine, tmp_path, 1, {"step": 1, "per_rank": {}})
    assert (tmp_path / "step00000001" / checkpoint.MANIFEST).stat().st_mtime_ns == resumed
    checkpoint.prune(tmp_path, keep_last=1)
    assert (tmp_path / f"{tag}.replaced").is_dir()


def test_no_verifiable_checkpoint_is_an_error_not_a_fresh_start(engine, tmp_path):
    tag = train_and_save(engine, tmp_path, 1)
    (tmp_path / tag / checkpoint.MANIFEST).write_text("{not json")
    with pytest.raises(RuntimeError, match="no checkpoint verifies"):
        checkpoint.choose_resume(tmp_path)


def test_an_empty_directory_means_no_resume(engine, tmp_path):
    assert checkpoint.choose_resume(tmp_path / "absent") is None


def test_saving_a_step_again_only_repoints_latest(engine, tmp_path):
    tag = train_and_save(engine, tmp_path, 1)
    before = (tmp_path / tag / checkpoint.MANIFEST).stat().st_mtime_ns
    train_and_save(engine, tmp_path, 2)
    checkpoint.save(engine, tmp_path, 1, {"step": 1, "per_rank": {}})
    assert (tmp_path / "latest").read_text().strip() == tag
    assert (tmp_path / tag / checkpoint.MANIFEST).stat().st_mtime_ns == before


def test_retention_keeps_the_last_k_and_the_best(engine, tmp_path):
    for step in range(1, 6):
        tag = train_and_save(engine, tmp_path, step)
        if step == 2:
            checkpoint.mark_best(tmp_path, tag)
        checkpoint.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step00000002", "step00000004", "step00000005"]
    assert (tmp_path / "best").read_text().strip() == "step00000002"


def _small_file_system_command() -> list[str] | None:
    """``unshare`` into a mount namespace that mounts a 1 MiB tmpfs at $0 and runs the rest; None where
    neither user namespaces nor root allow it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    command = [unshare, "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"']
    probe = subprocess.run(command + [tempfile.mkdtemp(), "true"], capture_output=True)
    return command if probe.returncode == 0 else None


def test_a_full_disk_during_a_save_names_the_path_and_the_lack_of_space(tmp_path):
    command = _small_file_system_command()
    if command is None:
        pytest.skip("needs a small file system: unshare -rm (user namespaces) or root to mount a tmpfs")
    # a process group of its own: not the one this module's engine fixture may have put in the environment
    group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in group}
    result = subprocess.run(command + [str(tmp_path), sys.executable, str(REPO / "tests/dist/full_disk.py"),
                                       str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env={**env, "DS_ACCELERATOR": "cpu"})
    assert result.returncode != 0
    assert re.search(rf"saving step 3 into {re.escape(str(tmp_path))}/checkpoints/step00000003\.partial failed: "
                     r"no space left", result.stderr), result.stderr[-3000:]


# ----------------------------------------------------------------------------- the settings a resume must keep

def test_resuming_with_other_trajectory_settings_names_the_keys():
    saved = checkpoint.trajectory_settings(RunConfig())
    changed = RunConfig()
    changed.optim.lr, changed.cats.objective = 1e-4, "robust"
    with pytest.raises(ValueError, match=r"cats.objective: saved 'lookahead', now 'robust'; optim.lr: saved 0.002"):
        checkpoint._check_same_settings(checkpoint.trajectory_settings(changed), saved, Path("ckpt"))


def test_how_long_to_train_and_how_to_evaluate_may_change():
    changed = RunConfig()
    changed.train.max_steps, changed.eval.every_steps, changed.train.run_dir = 5, 7, "elsewhere"
    assert checkpoint.settings_differences(checkpoint.trajectory_settings(changed),
                                           checkpoint.trajectory_settings(RunConfig())) == []


def test_a_key_newer_than_the_checkpoint_counts_as_its_default():
    saved = checkpoint.trajectory_settings(RunConfig())
    del saved["cats.meta_ema"]
    saved["cats.removed_since"] = 3          # a key cats-ds no longer has
    now = RunConfig()
    assert checkpoint.settings_differences(checkpoint.trajectory_settings(now), saved) == []
    now.cats.meta_ema = 0.9
    assert checkpoint.settings_differences(checkpoint.trajectory_settings(now), saved) == ["cats.meta_ema"]
