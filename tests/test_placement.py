"""Device placement: one owner (cats_ds.placement) for batches, bookkeeping and collective tensors.

A CPU machine cannot show a placement bug by comparing devices (everything is on the CPU), so
tests/dist/placement_probe.py makes placement visible with a tag and checks the model's forward,
its generate and every all-reduce cats_ds calls; the control run bypasses the owner and must be
caught. The CATS buffers are checked against a partition on PyTorch's ``meta`` device, a device
of another type that needs no hardware.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cats_ds import placement
from cats_ds.cats.zero import TaskGradientBuffers, UnsupportedSetupError
from conftest import REPO
from corpus_fixture import write_config, write_corpus

CHECKPOINTS = ("forward", "generate", "collective")


def probe(tmp_path, *args: str) -> dict:
    corpus, out = write_corpus(tmp_path / "corpus"), tmp_path / "probe.json"
    config = write_config(tmp_path / "run.yaml", corpus, tmp_path / "run", tmp_path / "cache",
                          train={"ds_config": "ds_configs/zero3.json", "max_steps": 4, "save_every": 0,
                                 "threads": 1},
                          eval={"test_sentences": 4, "dev_sentences": 8, "batch_sentences": 4})
    result = subprocess.run([sys.executable, "tests/dist/placement_probe.py", str(config), str(out), *args],
                            cwd=REPO, text=True, capture_output=True, timeout=600,
                            env={**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_batch_and_collective_tensor_goes_through_the_placement_owner(tmp_path):
    counts = probe(tmp_path)
    for checkpoint in CHECKPOINTS:
        assert counts["checked"].get(checkpoint, 0) > 0, f"the run never reached the {checkpoint} checkpoint"
        assert counts["untagged"].get(checkpoint, 0) == 0, f"{checkpoint}: {counts}"


@pytest.mark.slow
def test_the_probe_catches_a_trainer_that_moves_nothing(tmp_path):
    counts = probe(tmp_path, "--bypass", "train.max_steps=2")
    for checkpoint in CHECKPOINTS:
        assert counts["untagged"].get(checkpoint, 0) > 0, f"{checkpoint}: {counts}"


class MetaPartition:
    """A ZeRO partition of 6 elements on the meta device (a device type without hardware)."""

    def __init__(self) -> None:
        self.segment = torch.zeros(6, device="meta")

    def numel(self) -> int:
        return 6

    def device(self) -> torch.device:
        return self.segment.device

    def read_into(self, out: torch.Tensor) -> None:
        out.copy_(self.segment)

    def clear(self) -> None:
        pass


def test_cats_buffers_live_beside_the_partition_on_the_training_device(monkeypatch):
    monkeypatch.setattr(placement, "device", lambda: torch.device("meta"))
    buffers = TaskGradientBuffers(MetaPartition(), num_tasks=3)
    buffers.end_window(1)
    buffers.capture_meta()
    assert buffers.tasks.device.type == "meta" and buffers.tasks.shape == (3, 6)
    assert buffers.meta.device.type == "meta"


def test_cats_refuses_a_partition_away_from_the_training_device():
    buffers = TaskGradientBuffers(MetaPartition(), num_tasks=3)   # training device: cpu here
    with pytest.raises(UnsupportedSetupError, match="partition is on meta"):
        buffers.end_window(0)


def test_a_gpu_config_on_the_cpu_accelerator_is_refused_naming_the_setting(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with pytest.raises(ValueError, match=r"train.device=cuda.*DS_ACCELERATOR=cpu.*train.device=auto"):
        placement.check_requested("cuda")
    placement.check_requested("auto")
    placement.check_requested("cpu")


def test_collectives_refuse_a_tensor_off_the_training_device(monkeypatch):
    from cats_ds import distributed
    monkeypatch.setattr(placement, "device", lambda: torch.device("meta"))
    with pytest.raises(ValueError, match="make it with cats_ds.placement"):
        distributed.all_reduce_sum(torch.zeros(2))


class FakeGPUs:
    """DeepSpeed's accelerator as seen on a node with ``count`` GPUs."""

    def __init__(self, count: int) -> None:
        self.count, self.bound = count, None

    def device_name(self) -> str:
        return "cuda"

    def device_count(self) -> int:
        return self.count

    def set_device(self, index: int) -> None:
        self.bound = index


def test_more_processes_than_gpus_or_no_gpu_is_refused(monkeypatch):
    node = FakeGPUs(2)
    monkeypatch.setattr(placement, "get_accelerator", lambda: node)
    placement.bind(1)
    assert node.bound == 1
    with pytest.raises(RuntimeError, match="local rank 2 has no GPU.*at most 2 processes per node"):
        placement.bind(2)
    monkeypatch.setattr(placement, "get_accelerator", lambda: FakeGPUs(0))
    with pytest.raises(RuntimeError, match="no such device is visible.*DS_ACCELERATOR=cpu"):
        placement.bind(0)
