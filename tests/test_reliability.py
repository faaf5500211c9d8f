"""Reliability under the deepspeed launcher (2 CPU processes, ZeRO-2, CATS on, tiny preset):
a rank killed mid-training or mid-save, stop signals, a world-size change, NaN losses.

Every crash scenario is compared with one uninterrupted run of the same seed: final fp32
parameters, CATS state (alpha, lambda, EMA) and every rank's sampler position."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from cats_ds import trained
from cats_ds.metrics import read_metrics
from conftest import REPO, needs_fp16, run_deepspeed
from corpus_fixture import write_config, write_corpus

pytestmark = pytest.mark.slow

DIST = REPO / "tests" / "dist"
STEPS = 12
SETTINGS = {"train": {"max_steps": STEPS, "save_every": 4, "keep_last": 3, "export": False},
            "eval": {"test_sentences": 4, "dev_sentences": 8, "batch_sentences": 8}}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    return root, write_corpus(root / "corpus"), root / "cache"


def launch(workspace, name: str, processes: int = 2, fault: str | None = None, check: bool = True,
           **sections):
    root, corpus, cache = workspace
    merged = {section: {**values, **sections.get(section, {})} for section, values in SETTINGS.items()}
    merged.update({k: v for k, v in sections.items() if k not in merged})
    config = write_config(root / f"{name}.yaml", corpus, root / name, cache, **merged)
    # the fault (tests/dist/faults.py) is installed from outside the trainer
    trainer = [str(DIST / "train_with_faults.py")] if fault else ["--module", "cats_ds.train"]
    env = {"CATS_DS_FAULT": fault} if fault else {}
    result = run_deepspeed([*trainer, "--config", str(config)], processes=processes, env=env, check=check)
    return root / name, result


def final_state(run_dir, tag: str | None = None):
    """fp32 parameters and client state of the checkpoint ``tag`` (default: latest)."""
    checkpoints = run_dir / "checkpoints"
    tag = tag or (checkpoints / "latest").read_text().strip()
    params = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=tag)
    client = torch.load(checkpoints / tag / "mp_rank_00_model_states.pt", weights_only=False)
    return params, client


def assert_same_state(actual_dir, expected_dir):
    params, client = final_state(actual_dir)
    expected_params, expected_client = final_state(expected_dir)
    assert client["step"] == expected_client["step"] == STEPS
    for key, expected in expected_params.items():
        difference = float((params[key] - expected).detach().norm() / expected.detach().norm().clamp(min=1e-12))
        assert difference <= 1e-6, (key, difference)
    assert_same_cats(client["cats"], expected_client["cats"])
    for rank_state, expected in zip(client["per_rank"], expected_client["per_rank"]):
        assert rank_state["sampler"] == expected["sampler"]
        assert rank_state["dev_sampler"] == expected["dev_sampler"]


def assert_same_cats(state, expected):
    """Every entry of two TaskScaler states (alpha, lambda, EMA, counters) within 1e-6 relative."""
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        if value is None:
            assert state[key] is None, key
            continue
        a, b = torch.as_tensor(state[key], dtype=torch.float64), torch.as_tensor(value, dtype=torch.float64)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-12), (key, a, b)


@pytest.fixture(scope="module")
def uninterrupted(workspace):
    return launch(workspace, "uninterrupted")[0]


def test_cats_state_is_in_the_checkpoint(uninterrupted):
    _, client = final_state(uninterrupted)
    assert {"alpha", "lam"} <= set(client["cats"])


@pytest.mark.parametrize("fault, last_good", [("sigkill:step:6:rank=1", "step00000004"),
                                               ("sigkill:save:8", "step00000004")],
                         ids=["between-checkpoints", "during-save"])
def test_a_killed_rank_resumes_to_the_uninterrupted_result(workspace, uninterrupted, fault, last_good):
    name = "killed-" + fault.split(":")[1]
    run_dir, crashed = launch(workspace, name, fault=fault, check=False)
    assert crashed.returncode != 0
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == last_good
    assert not (run_dir / "results.json").exists()
    if "save" in fault:
        assert (checkpoints / "step00000008.partial").is_dir()      # the interrupted save, never loaded
    launch(workspace, name)
    assert_same_state(run_dir, uninterrupted)
    # each step recorded once; the crashed attempt's records after the checkpoint kept aside
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl", "train")] == list(range(1, STEPS + 1))
    lost = {r["step"] for r in read_metrics(run_dir / "metrics.lost.jsonl", "train")}
    assert 5 in lost and lost <= set(range(5, 9))


@pytest.mark.parametrize("fault, resume", [("sigterm:step:5:rank=0", False), ("sigusr1:step:5:rank=1", True)])
def test_a_stop_signal_saves_and_exits_cleanly(workspace, uninterrupted, fault, resume):
    """Either signal, on any one rank, stops every rank after a checkpoint of the step they are in;
    resuming from it (checked once, the resume path is the crash tests') ends where the uninterrupted run does."""
    name = fault.split(":")[0]
    run_dir, stopped = launch(workspace, name, fault=fault)
    assert stopped.returncode == 0
    assert f"{name.upper()} received: checkpoint of step 5 saved" in stopped.stdout
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step00000005"
    assert not (run_dir / "results.json").exists()
    if resume:
        launch(workspace, name)
        assert_same_state(run_dir, uninterrupted)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_at_another_world_size(workspace, before, after):
    """The parameters loaded at the new world size equal the saved ones exactly; CATS state and
    the step carry over; training goes on with finite losses."""
    name = f"world-{before}-{after}"
    saved_dir, _ = launch(workspace, name + "-saved", processes=before, train={"max_steps": 6, "export": True})
    run_dir = saved_dir.with_name(name)
    shutil.copytree(saved_dir / "checkpoints", run_dir / "checkpoints")
    launch(workspace, name, processes=after, train={"max_steps": 6, "export": True})
    saved = load_file(saved_dir / "export" / "model.safetensors")
    loaded = load_file(run_dir / "export" / "model.safetensors")
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    assert (run_dir / "checkpoints" / "step00000006.universal").is_dir()
    saved_cats = read_metrics(saved_dir / "metrics.jsonl", "train")[-1]["cats"]
    start = read_metrics(run_dir / "metrics.jsonl", "run")[-1]
    assert start["resumed_from"] == "step00000006.universal" and start["world_size"] == after
    for key in ("alpha", "lambda", "ema_plain_sq_norm", "steps", "updates"):
        assert np.allclose(start["cats_state"][key], saved_cats[key], rtol=1e-6, atol=0), key
    _, resumed = launch(workspace, name, processes=after, train={"max_steps": 8})
    records = read_metrics(run_dir / "metrics.jsonl", "train")
    assert [r["step"] for r in records] == [7, 8] and all(np.isfinite(r["loss"]) for r in records)
    _, client = final_state(run_dir)
    _, saved_client = final_state(saved_dir, "step00000006")
    assert client["step"] == 8 and len(client["per_rank"]) == after
    assert len(saved_client["per_rank"]) == before


@pytest.mark.parametrize("ds_config", ["ds_configs/zero2.json", pytest.param("ds_configs/zero2_fp16.json",
                                                                             marks=needs_fp16)])
def test_a_nan_loss_skips_the_step_and_leaves_cats_untouched(workspace, ds_config):
    name = "nan-" + ds_config.split("/")[-1].removesuffix(".json")
    run_dir, _ = launch(workspace, name, fault="nan:loss:4:task=1",
                        train={"max_steps": 5, "save_every": 1, "keep_last": 10, "ds_config": ds_config},
                        cats={"interval": 1})
    records = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl", "train")}
    assert [records[s]["step_applied"] for s in (3, 4, 5)] == [True, False, True]
    skipped = [records[s]["nonfinite_steps"] for s in (3, 4, 5)]   # fp16 also skips its first overflows
    assert skipped[1] == skipped[0] + 1 == skipped[2]
    before_params, before = final_state(run_dir, "step00000003")
    after_params, after = final_state(run_dir, "step00000004")
    assert all(torch.equal(before_params[k], after_params[k]) for k in before_params)
    assert_same_cats(after["cats"], before["cats"])
    assert after["nonfinite_steps"] == before["nonfinite_steps"] + 1
    assert after["cats"]["num_updates"] >= 1   # CATS was updating before the NaN
    assert after["per_rank"][0]["sampler"]["step"] == before["per_rank"][0]["sampler"]["step"] + 1
    assert json.loads((run_dir / "results.json").read_text())["step"] == 5


def test_a_run_that_keeps_producing_nan_stops_with_a_clear_error(workspace):
    _, result = launch(workspace, "nan-forever", fault="nan:loss:3-1000", check=False,
                       train={"max_steps": 20, "max_nonfinite_steps": 3})
    assert result.returncode != 0
    assert "3 steps in a row had a non-finite loss or gradient (up to step 5)" in result.stdout + result.stderr


def test_results_name_the_checkpoint_they_describe_and_best_follows_every_improvement(workspace):
    """NaN losses from step 3 on skip every update, so later evaluations tie step 2's and step 2
    stays the best: the results describe it by name, and curvature defaults to it. A best that no
    longer verifies is not evaluated; a final evaluation that improves moves ``best``."""
    frozen = {"fault": "nan:loss:3-1000", "eval": {"every_steps": 2},
              "train": {"max_steps": 6, "max_nonfinite_steps": 100, "save_every": 2}}
    run_dir, _ = launch(workspace, "best", **frozen)
    checkpoints, results = run_dir / "checkpoints", json.loads((run_dir / "results.json").read_text())
    assert results["step"] == 6 and results["checkpoint"] == {"tag": "step00000002", "step": 2}
    assert (checkpoints / "best").read_text().strip() == "step00000002" == trained.locate(run_dir).name
    title = "# Results of checkpoint step00000002 (step 2; training ran to step 6)"
    assert title in (run_dir / "results.md").read_text()
    step2_dev = read_metrics(run_dir / "metrics.jsonl", "eval")[0]
    assert step2_dev["step"] == 2 and results["dev"]["dev_loss"] == step2_dev["dev_loss"]

    victim = max((checkpoints / "step00000002").rglob("*.pt"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    _, resumed = launch(workspace, "best", **{**frozen, "train": {**frozen["train"], "max_steps": 8}})
    assert "not evaluating the best checkpoint" in resumed.stdout and "step00000002" in resumed.stdout
    assert json.loads((run_dir / "results.json").read_text())["checkpoint"] == {"tag": "step00000008", "step": 8}

    launch(workspace, "best", train={"max_steps": 9, "save_every": 2}, eval={"every_steps": 2})
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dev"]["dev_loss"] < step2_dev["dev_loss"], "precondition: the one update of step 9 helps"
    assert results["checkpoint"] == {"tag": "step00000009", "step": 9}
    assert (checkpoints / "best").read_text().strip() == "step00000009"
