"""Every DeepSpeed JSON in cats_ds/ds_configs/: loads, is used by a launch file, and trains a step (all run on CPU)."""

from __future__ import annotations

import json

import pytest

from cats_ds.config import RunConfig
from cats_ds.engine import load_ds_config
from conftest import REPO, cpu_supports_fp16, needs_fp16, run_deepspeed

DS_CONFIGS = sorted((REPO / "cats_ds" / "ds_configs").glob("*.json"))
FP16_CONFIGS = {p for p in DS_CONFIGS if json.loads(p.read_text()).get("fp16", {}).get("enabled")}
RUNNABLE_HERE = [p for p in DS_CONFIGS if p not in FP16_CONFIGS or cpu_supports_fp16()]
# CATS refuses these at start; the message names the setting and what to change
REFUSED = {"zero0": ("zero_optimization.stage", "cats.enabled=false"),
           "zero2_offload": ("offload_optimizer", "cats.enabled=false")}


def test_there_are_configs_for_every_stage_and_precision():
    names = {p.stem for p in DS_CONFIGS}
    assert {"zero1", "zero2", "zero3", "zero3_persist", "zero2_bf16", "zero2_fp16", "zero3_bf16",
            "zero2_offload"} <= names


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_leaves_batch_and_optimizer_to_the_run_config(path):
    raw = json.loads(path.read_text())
    loaded = load_ds_config(path, RunConfig())
    assert loaded["zero_optimization"] == raw["zero_optimization"]
    assert loaded["train_micro_batch_size_per_gpu"] == 1 and "optimizer" not in loaded


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.stem)
def test_config_is_used_by_a_launch_file_or_run_config(path):
    users = [f for folder in ("launch", "cats_ds/configs") for f in (REPO / folder).rglob("*")
             if f.is_file() and f"ds_configs/{path.name}" in f.read_text()]
    assert users, f"ds_configs/{path.name} appears in no file under launch/ or cats_ds/configs/"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "engines.json"
    run_deepspeed(["tests/dist/ds_engines.py", str(out), *(str(p.relative_to(REPO)) for p in RUNNABLE_HERE)],
                  processes=1)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("path", [pytest.param(p, marks=needs_fp16) if p in FP16_CONFIGS else p for p in DS_CONFIGS],
                         ids=lambda p: p.stem)
def test_engine_trains_a_step_and_cats_accepts_or_refuses_clearly(engines, path):
    result = engines[str(path.relative_to(REPO))]
    assert 0 < result["loss"] < 10
    if path.stem in REFUSED:
        assert result["cats_refusal"] and all(key in result["cats_refusal"] for key in REFUSED[path.stem])
    else:
        assert result["cats_refusal"] is None
