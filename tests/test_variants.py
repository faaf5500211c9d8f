"""Named CATS variants (cats_ds/cats/variants.py), the softmax parameterization and the monotone multiplier."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cats_ds.cats import CATSConfig, TaskScaler
from cats_ds.cats.variants import VARIANTS
from cats_ds.config import CONFIG_DIR, load_config
from cats_ds.configio import ConfigError
from cats_ds.metrics import read_metrics
from conftest import REPO
from corpus_fixture import write_config, write_corpus

GRAM = torch.tensor([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]], dtype=torch.float64)
LOSSES = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
SHARES = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_sets_its_keys_and_its_scaler_takes_steps(name):
    cats = load_config(None, [f"cats.variant={name}", "cats.warmup_steps=0", "cats.interval=1"]).cats
    assert cats.variant == name
    assert {key: getattr(cats, key) for key in VARIANTS[name] if key not in ("warmup_steps", "interval")} == {
        key: value for key, value in VARIANTS[name].items() if key not in ("warmup_steps", "interval")}
    mean_gradients = cats.parameterization != "scales"
    scaler = TaskScaler(cats, 3, initial=SHARES if mean_gradients else None)
    extra = {"plain": SHARES} if mean_gradients else {}
    for step in range(3):
        curvature = {"curvature": GRAM * 0.1} if scaler.curvature_due() else {}
        scales = scaler.update(LOSSES, GRAM, torch.tensor([1.0, -0.5, 0.2]), **extra, **curvature)
        assert torch.isfinite(scales).all()
        assert scaler.alpha.sum().item() == pytest.approx(1.0)
    assert scaler.num_updates == 3
    assert not torch.equal(scaler.alpha, TaskScaler(cats, 3, initial=SHARES if mean_gradients else None).alpha)


def test_keys_set_where_the_variant_is_named_or_later_win(tmp_path):
    shipped = CONFIG_DIR / "bible8_cpu.yaml"          # names weighted_loss, sets interval 10 and alpha_min 0.05
    named_by_override = load_config(shipped, ["cats.variant=reimpl_weighted_mean", "cats.interval=7"]).cats
    assert named_by_override.objective == "weighted_loss" and named_by_override.parameterization == "weights"
    assert named_by_override.interval == 7 and named_by_override.warmup_steps == 1000   # override, then variant
    assert named_by_override.alpha_min == 0.05                                          # not the variant's key
    assert load_config(shipped, ["cats.variant=reimpl_softmax"]).cats.alpha_min == 0.0
    written = tmp_path / "robust.yaml"
    written.write_text("cats:\n  variant: robust\n  parameterization: weights\n")
    in_file = load_config(written, ["cats.objective=lookahead"]).cats
    assert (in_file.variant, in_file.objective, in_file.parameterization) == ("robust", "lookahead", "weights")
    assert load_config(written).cats.objective == "robust"
    assert load_config(None).cats.variant == "custom"


def test_an_unknown_variant_names_the_key_the_nearest_name_and_all_names():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["cats.variant=reimpl_sofmax"])
    message = str(err.value)
    assert "cats.variant" in message and "did you mean reimpl_softmax?" in message
    assert all(name in message for name in VARIANTS) and "custom" in message
    with pytest.raises(ValueError, match=r"cats.variant .* got 'nope'"):
        CATSConfig(variant="nope")


def test_softmax_refuses_a_floor_and_weights_on_surgery():
    with pytest.raises(ValueError, match=r"cats.alpha_min must be 0 with parameterization 'softmax'"):
        CATSConfig(parameterization="softmax", alpha_min=0.01)
    with pytest.raises(ValueError, match=r"cats.parameterization must be 'scales' with method 'mgda'"):
        CATSConfig(parameterization="softmax", method="mgda")
    with pytest.raises(ValueError, match=r"cats.monotone_lambda must be a bool"):
        CATSConfig(monotone_lambda=1)


def _softmax_config(**changes) -> CATSConfig:
    return CATSConfig(parameterization="softmax", objective="weighted_loss", lr_alpha=0.5, lr_lambda=2.0,
                      epsilon=0.5, epsilon_mode="absolute", **changes)


def test_softmax_step_follows_the_chain_rule_by_hand():
    config = _softmax_config()
    scaler = TaskScaler(config, 3, initial=SHARES)
    # a first step with lambda = 0: only grad f = L / mean(L) moves the logits theta = log(pi)
    scaler.update(LOSSES, GRAM, plain=SHARES)
    w0, grad_w = SHARES, LOSSES / LOSSES.mean()
    # d w_k / d theta_j = w_k (delta_kj - w_j), so grad_theta_j = w_j (grad_w_j - sum_k w_k grad_w_k)
    theta1 = SHARES.log() - 0.5 * w0 * (grad_w - (w0 * grad_w).sum())
    w1 = theta1.exp() / theta1.exp().sum()
    assert torch.allclose(scaler.alpha, w1, atol=1e-12, rtol=0)
    constraint = float(w1 @ GRAM @ w1) / 0.5 - 1.0
    assert scaler.lam == pytest.approx(max(0.0, 2.0 * constraint), abs=1e-12)
    # the second step adds the constraint's pull, lambda grad_w c with grad_w c = 2 G w / eps
    lam = scaler.lam
    scaler.update(LOSSES, GRAM, plain=SHARES)
    grad_w = LOSSES / LOSSES.mean() + lam * 2.0 * (GRAM @ w1) / 0.5
    theta2 = theta1 - 0.5 * w1 * (grad_w - (w1 * grad_w).sum())
    assert torch.allclose(scaler.alpha, torch.softmax(theta2, 0), atol=1e-12, rtol=0)


def test_softmax_gradient_matches_autograd_and_absent_tasks_keep_their_logit():
    theta = torch.tensor([0.3, -1.0, 0.5, 0.1], dtype=torch.float64, requires_grad=True)
    direction = torch.tensor([1.5, -0.2, 0.7, 2.0], dtype=torch.float64)
    (torch.softmax(theta, 0) @ direction).backward()
    scaler = TaskScaler(CATSConfig(parameterization="softmax", lr_alpha=1.0), 4,
                        initial=torch.softmax(theta.detach(), 0))
    before = scaler.state_dict()["theta"]
    scaler._primal_step(direction, torch.tensor([True, True, True, True]))
    assert torch.allclose(before - scaler.state_dict()["theta"], theta.grad, atol=1e-12, rtol=0)
    scaler._primal_step(direction, torch.tensor([True, False, True, True]))
    after = scaler.state_dict()["theta"]
    assert after[1] == before[1] - theta.grad[1]    # only the first step moved task 1's logit


def test_monotone_multiplier_never_decreases():
    sharp, flat = GRAM * 4.0, GRAM * 0.01        # c > 0, then c < 0 at the same weights
    lams = {}
    for monotone in (False, True):
        scaler = TaskScaler(_softmax_config(monotone_lambda=monotone), 3, initial=SHARES)
        scaler.update(LOSSES, sharp, plain=SHARES)
        raised = scaler.lam
        scaler.update(LOSSES, flat, plain=SHARES)
        lams[monotone] = (raised, scaler.lam)
        assert raised > 0 and scaler.last_constraint < 0
    assert lams[True][1] == lams[True][0]           # lambda += lr_lambda * max(c, 0)
    assert lams[False][1] < lams[False][0]          # lambda += lr_lambda * c


def test_softmax_state_round_trips_and_old_checkpoints_start_from_log_alpha():
    scaler = TaskScaler(_softmax_config(), 3, initial=SHARES)
    scaler.update(LOSSES, GRAM, plain=SHARES)
    state = scaler.state_dict()
    restored = TaskScaler(_softmax_config(), 3)
    restored.load_state_dict(state)
    assert torch.equal(restored.state_dict()["theta"], state["theta"])
    legacy = TaskScaler(_softmax_config(), 3)
    legacy.load_state_dict({key: value for key, value in state.items() if key != "theta"})
    assert torch.allclose(torch.softmax(legacy.state_dict()["theta"], 0), state["alpha"], atol=1e-15, rtol=0)


@pytest.mark.slow
def test_a_tiny_run_with_the_softmax_reading_logs_its_name(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    config = write_config(tmp_path / "run.yaml", corpus, tmp_path / "run", tmp_path / "cache",
                          train={"max_steps": 4, "export": False, "ds_config": "ds_configs/zero2.json"})
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(config),
                             "cats.variant=reimpl_softmax"], cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    assert len(steps) == 4
    assert {record["cats"]["variant"] for record in steps} == {"reimpl_softmax"}
    assert {record["cats"]["parameterization"] for record in steps} == {"softmax"}
    assert steps[-1]["cats"]["updates"] == 2          # the file's interval 2: updates on steps 2 and 4
    [run] = read_metrics(tmp_path / "run" / "metrics.jsonl", "run")
    assert run["cats_state"]["variant"] == "reimpl_softmax"
