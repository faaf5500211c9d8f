"""Tests of the pure-torch CATS task scaler against independent numpy references."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cats_ds.cats import CATSConfig, TaskScaler, project_floored_simplex

FAST = settings(max_examples=60, deadline=None, database=None)


# ----------------------------------------------------------------------------- references

def projection_by_enumeration(v: np.ndarray, floor: float, mass: float) -> np.ndarray:
    """Exact projection of a tiny vector: the support set whose threshold satisfies the KKT conditions.

    For support S, theta = (sum of shifted v over S - free mass) / |S|; the projection is the S
    with shifted v - theta >= 0 on S and <= 0 off S.
    """
    shifted = v - floor
    free_mass = mass - len(v) * floor
    for size in range(1, len(v) + 1):
        for support in itertools.combinations(range(len(v)), size):
            inside = np.zeros(len(v), dtype=bool)
            inside[list(support)] = True
            theta = (shifted[inside].sum() - free_mass) / size
            outside_ok = size == len(v) or (shifted[~inside] - theta).max() <= 1e-12
            if (shifted[inside] - theta).min() >= -1e-12 and outside_ok:
                return np.where(inside, shifted - theta, 0.0) + floor
    raise AssertionError("no support set satisfies the KKT conditions")


def projection_by_bisection(v: np.ndarray, floor: float, mass: float) -> np.ndarray:
    """Projection by bisecting the threshold theta of x = max(v - floor - theta, 0) + floor."""
    shifted = v - floor
    free_mass = mass - len(v) * floor
    low, high = shifted.min() - free_mass - 1.0, shifted.max()
    for _ in range(200):
        theta = 0.5 * (low + high)
        if np.maximum(shifted - theta, 0.0).sum() > free_mass:
            low = theta
        else:
            high = theta
    return np.maximum(shifted - 0.5 * (low + high), 0.0) + floor


def interior_step(alpha: np.ndarray, lam: float, eps: float, grad_f: np.ndarray, gram: np.ndarray,
                  lr_alpha: float, lr_lambda: float) -> tuple[np.ndarray, float]:
    """One primal-dual step when the projection is interior: it only removes the mean of the move."""
    n = len(alpha)
    grad_c = 2.0 * n * gram @ (n * alpha) / eps
    move = lr_alpha * (grad_f + lam * grad_c)
    new_alpha = alpha - (move - move.mean())
    new_scales = n * new_alpha
    constraint = new_scales @ gram @ new_scales / eps - 1.0
    return new_alpha, max(0.0, lam + lr_lambda * constraint)


def random_psd(rng: np.random.Generator, n: int, dim: int = 12) -> np.ndarray:
    vectors = rng.normal(size=(n, dim))
    return vectors @ vectors.T


def scaler_in_state(config: CATSConfig, alpha: list[float], lam: float, ema: float | None) -> TaskScaler:
    scaler = TaskScaler(config, num_tasks=len(alpha))
    state = scaler.state_dict()
    state.update(alpha=torch.tensor(alpha, dtype=torch.float64), lam=lam, ema_plain_sq_norm=ema)
    scaler.load_state_dict(state)
    return scaler


def same_state(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("key, value", [
    ("enabled", 1), ("lr_alpha", -0.1), ("lr_alpha", "0.1"), ("lr_lambda", math.nan),
    ("epsilon", 0.0), ("epsilon_mode", "rel"), ("ema_decay", 1.0), ("ema_decay", -0.1),
    ("alpha_min", -0.01), ("warmup_steps", -1), ("warmup_steps", 1.5), ("interval", 0),
    ("interval", True), ("objective", "sharpness"), ("meta_source", "test"), ("gram", "block"),
    ("cosine_every", 0), ("meta_ema", 1.0), ("meta_ema", -0.1), ("second_order_lr", 0.0),
    ("curvature_every", 0), ("curvature_step", 0.0), ("curvature_step", 2.0),
])
def test_config_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"cats\\.{key}"):
        CATSConfig(**{key: value})


def test_curvature_interval_must_be_a_multiple_of_the_update_interval():
    CATSConfig(objective="second_order", interval=2, curvature_every=6)
    CATSConfig(interval=2, curvature_every=3)   # unused by the other objectives
    with pytest.raises(ValueError, match="cats.curvature_every .*multiple of cats.interval=2"):
        CATSConfig(objective="second_order", interval=2, curvature_every=3)


def test_second_order_needs_the_dev_meta_gradient():
    with pytest.raises(ValueError, match="cats.objective .*meta_source=train"):
        CATSConfig(objective="second_order", meta_source="train")


def test_alpha_min_above_one_over_n_is_refused_by_the_scaler():
    TaskScaler(CATSConfig(alpha_min=0.25), num_tasks=4)
    with pytest.raises(ValueError, match="alpha_min"):
        TaskScaler(CATSConfig(alpha_min=0.26), num_tasks=4)


def test_update_rejects_wrong_shapes_naming_the_argument():
    scaler = TaskScaler(CATSConfig(), num_tasks=3)
    with pytest.raises(ValueError, match="gram"):
        scaler.update(torch.ones(3), torch.eye(2))
    with pytest.raises(ValueError, match="losses"):
        scaler.update(torch.ones(2), torch.eye(3))
    with pytest.raises(ValueError, match="meta_dots"):
        scaler.update(torch.ones(3), torch.eye(3), torch.ones(4))


# ----------------------------------------------------------------------------- projection

def test_projection_hand_values():
    assert project_floored_simplex([2.0, 0.0, 0.0], 0.0).tolist() == [1.0, 0.0, 0.0]
    assert torch.allclose(project_floored_simplex([1.0, 0.0], 0.1), torch.tensor([0.9, 0.1], dtype=torch.float64))
    assert torch.allclose(project_floored_simplex([0.6, 0.6], 0.0), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(project_floored_simplex([0.3, 0.1], 0.0, mass=0.6),
                          torch.tensor([0.4, 0.2], dtype=torch.float64))
    assert project_floored_simplex([5.0, -3.0, 1.0], 1 / 3).tolist() == [1 / 3] * 3


def test_projection_rejects_infeasible_mass_and_bad_vectors():
    with pytest.raises(ValueError, match="mass"):
        project_floored_simplex([0.5, 0.5], 0.6)
    with pytest.raises(ValueError, match="non-finite"):
        project_floored_simplex([0.5, math.nan], 0.0)
    with pytest.raises(ValueError, match="1-D"):
        project_floored_simplex(torch.ones(2, 2), 0.0)


vectors = st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=6)


@FAST
@given(values=vectors, floor_fraction=st.floats(0.0, 1.0), mass=st.floats(0.1, 3.0))
@example(values=[1.0, 5.960464477539063e-08, -4.5506494856993], floor_fraction=0.0, mass=1.0)
def test_projection_matches_enumeration(values, floor_fraction, mass):
    v = np.array(values)
    floor = floor_fraction * mass / len(v)
    expected = projection_by_enumeration(v, floor, mass)
    np.testing.assert_allclose(project_floored_simplex(v, floor, mass).numpy(), expected, atol=1e-9)


@FAST
@given(values=st.lists(st.floats(-100.0, 100.0), min_size=1, max_size=40), floor_fraction=st.floats(0.0, 1.0))
@example(values=[0.0] * 7 + [2.0], floor_fraction=0.9999999999999999)  # free mass lost to rounding
def test_projection_matches_bisection_is_feasible_and_idempotent(values, floor_fraction):
    v = np.array(values)
    floor = floor_fraction / len(v)
    projected = project_floored_simplex(v, floor)
    np.testing.assert_allclose(projected.numpy(), projection_by_bisection(v, floor, 1.0), atol=1e-9)
    assert abs(float(projected.sum()) - 1.0) < 1e-12
    assert float(projected.min()) >= floor
    np.testing.assert_allclose(project_floored_simplex(projected, floor).numpy(), projected.numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- one step by hand

GRAM = np.array([[4.0, 1.0, 0.5], [1.0, 2.0, 0.3], [0.5, 0.3, 1.0]])
LOSSES = np.array([2.0, 1.0, 0.5])
DOTS = np.array([1.5, -0.2, 0.7])
ALPHA = np.array([0.5, 0.3, 0.2])
LAM, EMA0, DECAY, RHO = 0.3, 7.0, 0.5, 0.8


def hand_config(objective: str, **overrides) -> CATSConfig:
    values = dict(lr_alpha=0.01, lr_lambda=0.2, epsilon=RHO, ema_decay=DECAY, objective=objective)
    values.update(overrides)
    return CATSConfig(**values)


def hand_grad_f(objective: str, eps: float, dots: np.ndarray) -> np.ndarray:
    n = len(ALPHA)
    return {
        "lookahead": -n * dots / eps,
        "weighted_loss": LOSSES / LOSSES.mean(),
        "robust": -LOSSES / LOSSES.mean(),
    }[objective]


@pytest.mark.parametrize("objective", ["lookahead", "weighted_loss", "robust"])
def test_one_step_matches_hand_computation(objective):
    eps = RHO * (DECAY * EMA0 + (1 - DECAY) * GRAM.sum())
    expected_alpha, expected_lam = interior_step(ALPHA, LAM, eps, hand_grad_f(objective, eps, DOTS), GRAM,
                                                 lr_alpha=0.01, lr_lambda=0.2)
    assert expected_alpha.min() > 0.0  # the reference assumes an interior projection
    scaler = scaler_in_state(hand_config(objective), ALPHA.tolist(), LAM, EMA0)
    scales = scaler.update(torch.tensor(LOSSES), torch.tensor(GRAM), torch.tensor(DOTS))
    np.testing.assert_allclose(scales.numpy(), 3 * expected_alpha, rtol=0, atol=1e-12)
    assert scaler.lam == pytest.approx(expected_lam, abs=1e-12)
    assert scaler.describe()["eps"] == pytest.approx(eps, rel=1e-12)
    assert scales.dtype == torch.float64


def test_second_order_step_matches_hand_computation():
    curvature = np.array([[3.0, -1.0, 0.2], [-1.0, 5.0, 0.4], [0.2, 0.4, 0.5]])
    eta = 0.3
    eps = RHO * (DECAY * EMA0 + (1 - DECAY) * GRAM.sum())
    grad_f = 3 * (-DOTS + eta * curvature @ (3 * ALPHA)) / eps
    expected_alpha, expected_lam = interior_step(ALPHA, LAM, eps, grad_f, GRAM, lr_alpha=0.01, lr_lambda=0.2)
    assert expected_alpha.min() > 0.0
    scaler = scaler_in_state(hand_config("second_order", second_order_lr=eta), ALPHA.tolist(), LAM, EMA0)
    scales = scaler.update(torch.tensor(LOSSES), torch.tensor(GRAM), torch.tensor(DOTS),
                           curvature=torch.tensor(curvature))
    np.testing.assert_allclose(scales.numpy(), 3 * expected_alpha, rtol=0, atol=1e-12)
    assert scaler.lam == pytest.approx(expected_lam, abs=1e-12)
    # the quadratic term matters: lookahead on the same inputs goes elsewhere
    lookahead = scaler_in_state(hand_config("lookahead"), ALPHA.tolist(), LAM, EMA0)
    other = lookahead.update(torch.tensor(LOSSES), torch.tensor(GRAM), torch.tensor(DOTS))
    assert np.abs(other.numpy() - scales.numpy()).max() > 1e-3


def test_second_order_keeps_the_last_curvature_between_recomputations():
    config = CATSConfig(objective="second_order", curvature_every=3, warmup_steps=1, lr_alpha=0.05)
    scaler = TaskScaler(config, num_tasks=2)
    due, skipped = [], []
    for step in range(8):
        due.append(scaler.curvature_due())
        curvature = torch.eye(2) * (step + 1) if due[-1] else None
        scaler.update(torch.ones(2), torch.eye(2), torch.tensor([1.0, -1.0]), curvature=curvature)
        skipped.append(scaler.num_skipped)
    assert due == [False, True, False, False, True, False, False, True]
    assert skipped == [0] * 8 and scaler.num_updates == 7
    assert torch.equal(scaler.curvature, torch.eye(2, dtype=torch.float64) * 8)


def test_second_order_without_any_curvature_skips_the_update(caplog):
    scaler = TaskScaler(CATSConfig(objective="second_order"), num_tasks=2)
    with caplog.at_level(logging.WARNING):
        scaler.update(torch.ones(2), torch.eye(2), torch.tensor([1.0, -1.0]))
    assert scaler.num_skipped == 1 and "curvature matrix" in caplog.text


def test_meta_ema_averages_losses_dots_and_curvature_over_updates():
    config = CATSConfig(objective="second_order", meta_ema=0.75)
    scaler = TaskScaler(config, num_tasks=2)
    for value in (1.0, 5.0):
        scaler.update(value * torch.ones(2), torch.eye(2), value * torch.ones(2), curvature=value * torch.eye(2))
    averaged = 0.75 * 1.0 + 0.25 * 5.0
    state = scaler.state_dict()
    assert torch.allclose(state["meta_losses"], torch.full((2,), averaged, dtype=torch.float64))
    assert torch.allclose(state["meta_dots"], torch.full((2,), averaged, dtype=torch.float64))
    assert torch.allclose(scaler.curvature, averaged * torch.eye(2, dtype=torch.float64))


def test_meta_ema_keeps_an_absent_tasks_average_and_starts_a_new_task_without_bias():
    scaler = TaskScaler(CATSConfig(meta_ema=0.5), num_tasks=2)
    scaler.update(torch.tensor([2.0, math.nan]), torch.diag(torch.tensor([1.0, 0.0])), torch.tensor([4.0, 0.0]))
    scaler.update(torch.tensor([4.0, 3.0]), torch.eye(2), torch.tensor([8.0, 6.0]))
    state = scaler.state_dict()
    assert state["meta_losses"].tolist() == [3.0, 3.0]
    # task 1 was absent at first (its dot 0 is no measurement), so the average starts at 0 and moves half way
    assert state["meta_dots"].tolist() == [6.0, 3.0]


def test_meta_ema_zero_follows_each_steps_statistics():
    rng = np.random.default_rng(3)
    inputs = [(torch.tensor(rng.uniform(0.5, 3.0, 3)), torch.tensor(random_psd(rng, 3)),
               torch.tensor(rng.normal(size=3))) for _ in range(6)]
    plain, smoothed = TaskScaler(CATSConfig(lr_alpha=0.05), 3), TaskScaler(CATSConfig(lr_alpha=0.05, meta_ema=0.9), 3)
    for step_inputs in inputs:
        last = plain.update(*step_inputs)
        other = smoothed.update(*step_inputs)
    assert torch.equal(plain.state_dict()["meta_dots"], inputs[-1][2])
    assert np.abs(last.numpy() - other.numpy()).max() > 1e-4


def test_lookahead_without_meta_dots_uses_gram_row_sums_and_absolute_eps():
    eps = 5.0
    expected_alpha, expected_lam = interior_step(ALPHA, LAM, eps, hand_grad_f("lookahead", eps, GRAM.sum(axis=1)),
                                                 GRAM, lr_alpha=0.01, lr_lambda=0.2)
    scaler = scaler_in_state(hand_config("lookahead", epsilon=eps, epsilon_mode="absolute"), ALPHA.tolist(), LAM, None)
    scales = scaler.update(torch.tensor(LOSSES), torch.tensor(GRAM))
    np.testing.assert_allclose(scales.numpy(), 3 * expected_alpha, atol=1e-12)
    assert scaler.lam == pytest.approx(expected_lam, abs=1e-12)


def test_diagonal_gram_ignores_off_diagonal_entries():
    diagonal = np.diag(np.diag(GRAM))
    eps = RHO * (DECAY * EMA0 + (1 - DECAY) * diagonal.sum())
    expected_alpha, expected_lam = interior_step(ALPHA, LAM, eps, hand_grad_f("lookahead", eps, diagonal.sum(axis=1)),
                                                 diagonal, lr_alpha=0.01, lr_lambda=0.2)
    scaler = scaler_in_state(hand_config("lookahead", gram="diagonal"), ALPHA.tolist(), LAM, EMA0)
    scales = scaler.update(torch.tensor(LOSSES), torch.tensor(GRAM))
    np.testing.assert_allclose(scales.numpy(), 3 * expected_alpha, atol=1e-12)
    assert scaler.lam == pytest.approx(expected_lam, abs=1e-12)


def test_clipped_step_matches_enumerated_projection():
    config = hand_config("weighted_loss", lr_alpha=1.0, alpha_min=0.1, epsilon=100.0, epsilon_mode="absolute")
    scaler = scaler_in_state(config, ALPHA.tolist(), 0.0, None)
    scales = scaler.update(torch.tensor(LOSSES), torch.tensor(GRAM))
    target = ALPHA - 1.0 * LOSSES / LOSSES.mean()
    expected = projection_by_enumeration(target, 0.1, 1.0)
    assert expected.min() == pytest.approx(0.1)  # the floor is active
    np.testing.assert_allclose(scales.numpy(), 3 * expected, atol=1e-12)


# ----------------------------------------------------------------------------- dynamics

def test_lambda_rises_while_violated_and_decays_to_zero_when_slack():
    # lr_alpha = 0 keeps s = 1, so c = 1^T G 1 / eps - 1 is known exactly at every step.
    config = CATSConfig(lr_alpha=0.0, lr_lambda=0.5, epsilon=2.0, epsilon_mode="absolute")
    scaler = TaskScaler(config, num_tasks=2)
    tight = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)  # 1^T G 1 = 3: c = 0.5
    slack = 0.1 * tight  # 1^T G 1 = 0.3: c = -0.85
    lams = []
    for gram in [tight] * 4 + [slack] * 4:
        scaler.update(torch.ones(2), gram)
        lams.append(scaler.lam)
    assert lams == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.575, 0.15, 0.0, 0.0])
    assert scaler.describe()["constraint"] == pytest.approx(-0.85)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6),
       objective=st.sampled_from(["lookahead", "weighted_loss", "robust"]),
       floor_fraction=st.floats(0.0, 1.0), lr_alpha=st.floats(0.0, 1.0))
def test_alpha_stays_feasible_over_many_random_updates(seed, n, objective, floor_fraction, lr_alpha):
    rng = np.random.default_rng(seed)
    config = CATSConfig(lr_alpha=lr_alpha, lr_lambda=0.5, alpha_min=floor_fraction / n, objective=objective)
    scaler = TaskScaler(config, num_tasks=n)
    for _ in range(30):
        gram = random_psd(rng, n) * rng.uniform(0.01, 100.0)
        scales = scaler.update(torch.tensor(rng.uniform(0.1, 5.0, size=n)), torch.tensor(gram),
                               torch.tensor(rng.normal(size=n)))
        alpha = scaler.alpha
        assert abs(float(alpha.sum()) - 1.0) < 1e-9
        assert float(alpha.min()) >= config.alpha_min - 1e-12
        assert scaler.lam >= 0.0
        assert torch.allclose(scales, n * alpha, rtol=0, atol=0)


@pytest.mark.parametrize("objective", ["lookahead", "weighted_loss", "robust"])
def test_scales_stay_one_when_lr_alpha_is_zero(objective):
    rng = np.random.default_rng(1)
    scaler = TaskScaler(CATSConfig(lr_alpha=0.0, objective=objective), num_tasks=4)
    for _ in range(20):
        scales = scaler.update(torch.tensor(rng.uniform(0.5, 3.0, 4)), torch.tensor(random_psd(rng, 4)),
                               torch.tensor(rng.normal(size=4)))
        np.testing.assert_allclose(scales.numpy(), np.ones(4), atol=1e-14)
    assert scaler.num_updates == 20


def test_defaults_move_alpha_visibly_within_100_updates():
    scaler = TaskScaler(CATSConfig(objective="robust"), num_tasks=2)
    for _ in range(100):
        scaler.update(torch.tensor([1.0, 2.0]), torch.eye(2))
    assert float(scaler.alpha[1]) > 0.55


def test_training_batch_lookahead_at_rho_one_keeps_s_at_one():
    """d = G 1, eps = 1^T G 1: s = 1 with lambda = 1/2 is the KKT point (Cauchy-Schwarz in the G norm)."""
    rng = np.random.default_rng(7)
    gram = torch.tensor(random_psd(rng, 4))
    config = CATSConfig(epsilon=1.0, ema_decay=0.0)
    at_kkt = scaler_in_state(config, [0.25] * 4, 0.5, None)
    for _ in range(50):
        np.testing.assert_allclose(at_kkt.update(torch.ones(4), gram).numpy(), np.ones(4), atol=1e-12)
        assert at_kkt.lam == pytest.approx(0.5, abs=1e-12)
    # From lambda = 0 the iterates leave s = 1 first (lambda must build up), then return to it.
    from_start = TaskScaler(config, num_tasks=4)
    for _ in range(1000):
        scales = from_start.update(torch.ones(4), gram)
    np.testing.assert_allclose(scales.numpy(), np.ones(4), atol=1e-3)
    assert from_start.lam == pytest.approx(0.5, abs=1e-3)


def test_absent_task_keeps_its_alpha_and_its_loss_is_ignored():
    config = hand_config("weighted_loss", lr_alpha=0.05)
    scaler = scaler_in_state(config, [0.4, 0.35, 0.25], 0.0, EMA0)
    gram = np.array([[2.0, 0.0, 0.4], [0.0, 0.0, 0.0], [0.4, 0.0, 1.0]])
    scaler.update(torch.tensor([2.0, math.nan, 1.0]), torch.tensor(gram))
    # Present tasks: grad f = [2, 1] / 1.5; the interior projection removes the mean move 0.05.
    expected = [0.4 - 0.05 * 4 / 3 + 0.05, 0.35, 0.25 - 0.05 * 2 / 3 + 0.05]
    np.testing.assert_allclose(scaler.alpha.numpy(), expected, atol=1e-15)
    assert scaler.num_skipped == 0 and scaler.num_updates == 1


# ----------------------------------------------------------------------------- schedule, guards, state

def test_warmup_and_interval_are_respected():
    scaler = TaskScaler(CATSConfig(objective="robust", warmup_steps=3, interval=2, lr_alpha=0.05), num_tasks=2)
    applied, predicted, changed = [], [], []
    for _ in range(10):
        predicted.append(scaler.update_due())
        before = scaler.scales
        scaler.update(torch.tensor([1.0, 2.0]), torch.eye(2))
        applied.append(scaler.num_updates)
        changed.append(not torch.equal(before, scaler.scales))
    assert applied == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert predicted == [False, False, False, False, True, False, True, False, True, False]
    assert changed == predicted
    assert scaler.step == 10


def test_ema_is_maintained_during_warmup():
    scaler = TaskScaler(CATSConfig(warmup_steps=5, ema_decay=0.5), num_tasks=2)
    for value in (4.0, 8.0):
        scaler.update(torch.ones(2), value * torch.eye(2) / 2)
    assert scaler.eps == pytest.approx(0.5 * 4.0 + 0.5 * 8.0)
    assert scaler.num_updates == 0


@pytest.mark.parametrize("bad_argument", ["losses", "gram", "meta_dots"])
def test_non_finite_inputs_are_refused_and_leave_state_unchanged(bad_argument):
    """Skipping a non-finite step is the trainer's decision (cats_ds/nonfinite.py), not the scaler's."""
    rng = np.random.default_rng(3)
    scaler = TaskScaler(CATSConfig(objective="robust", lr_alpha=0.05), num_tasks=3)
    for _ in range(3):
        scaler.update(torch.tensor(rng.uniform(1, 2, 3)), torch.tensor(random_psd(rng, 3)))
    before = scaler.state_dict()
    inputs = {"losses": torch.tensor([1.0, 2.0, 3.0]), "gram": torch.tensor(random_psd(rng, 3)),
              "meta_dots": torch.ones(3)}
    inputs[bad_argument][1] = math.inf if bad_argument == "gram" else math.nan
    with pytest.raises(ValueError, match=f"{bad_argument} is non-finite"):
        scaler.update(**inputs)
    assert same_state(before, scaler.state_dict())


def test_non_positive_eps_or_mean_loss_skips_the_update(caplog):
    scaler = TaskScaler(CATSConfig(objective="weighted_loss"), num_tasks=2)
    with caplog.at_level(logging.WARNING, logger="cats_ds.cats.scaler"):
        scaler.update(torch.tensor([-1.0, 0.5]), torch.eye(2))
        scaler.update(torch.ones(2), torch.zeros(2, 2))
    assert scaler.num_skipped == 2 and scaler.num_updates == 0
    assert scaler.lam == 0.0 and torch.equal(scaler.scales, torch.ones(2, dtype=torch.float64))
    assert "mean loss" in caplog.text and "no task" in caplog.text


def test_disabled_scaler_keeps_scales_at_one():
    scaler = TaskScaler(CATSConfig(enabled=False, objective="robust"), num_tasks=2)
    scales = scaler.update(torch.tensor([1.0, 5.0]), torch.eye(2))
    assert torch.equal(scales, torch.ones(2, dtype=torch.float64)) and scaler.num_updates == 0


def test_state_dict_round_trip_continues_identically(tmp_path):
    rng = np.random.default_rng(5)
    inputs = [(torch.tensor(rng.uniform(0.5, 3.0, 3)), torch.tensor(random_psd(rng, 3)),
               torch.tensor(rng.normal(size=3))) for _ in range(12)]
    config = CATSConfig(lr_alpha=0.05, interval=2, warmup_steps=1, meta_ema=0.5, objective="second_order",
                        curvature_every=4)
    inputs = [(*step, torch.tensor(random_psd(rng, 3))) for step in inputs]
    original = TaskScaler(config, num_tasks=3)
    for losses, gram, dots, curvature in inputs[:6]:
        original.update(losses, gram, dots, curvature=curvature if original.curvature_due() else None)
    torch.save(original.state_dict(), tmp_path / "cats.pt")
    resumed = TaskScaler(config, num_tasks=3)
    resumed.load_state_dict(torch.load(tmp_path / "cats.pt"))
    for losses, gram, dots, curvature in inputs[6:]:
        fresh = curvature if original.curvature_due() else None
        assert torch.equal(original.update(losses, gram, dots, curvature=fresh),
                           resumed.update(losses, gram, dots, curvature=fresh))
    assert same_state(original.state_dict(), resumed.state_dict())
    assert original.num_updates == 5


def test_load_state_dict_rejects_mismatches():
    scaler = TaskScaler(CATSConfig(alpha_min=0.2), num_tasks=3)
    state = scaler.state_dict()
    with pytest.raises(ValueError, match="num_tasks"):
        TaskScaler(CATSConfig(), num_tasks=4).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys \\['lam'\\]"):
        scaler.load_state_dict({k: v for k, v in state.items() if k != "lam"})
    with pytest.raises(ValueError, match="alpha"):
        scaler.load_state_dict({**state, "alpha": torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)})


def test_float32_and_float64_inputs_agree():
    rng = np.random.default_rng(11)
    inputs = [(rng.uniform(0.5, 3.0, 4), random_psd(rng, 4), rng.normal(size=4)) for _ in range(20)]
    results = {}
    for dtype in (torch.float32, torch.float64):
        scaler = TaskScaler(CATSConfig(lr_alpha=0.02), num_tasks=4)
        for losses, gram, dots in inputs:
            scales = scaler.update(*(torch.tensor(x, dtype=dtype) for x in (losses, gram, dots)))
        results[dtype] = (scales, scaler.lam)
    np.testing.assert_allclose(results[torch.float32][0].numpy(), results[torch.float64][0].numpy(), atol=1e-6)
    assert results[torch.float32][1] == pytest.approx(results[torch.float64][1], abs=1e-6)


def test_a_state_saved_before_the_update_norm_was_renamed_still_loads():
    original = TaskScaler(CATSConfig(), num_tasks=2)
    original.update([1.0, 2.0], [[2.0, 0.5], [0.5, 1.0]])
    old = original.state_dict()
    old["last_curvature"] = old.pop("last_update_sq_norm")
    for key in ("meta_losses", "meta_dots", "meta_curvature"):   # nor did it hold meta averages
        del old[key]
    resumed = TaskScaler(CATSConfig(), num_tasks=2)
    resumed.load_state_dict(old)
    assert resumed.last_update_sq_norm == original.last_update_sq_norm is not None
    assert resumed.curvature is None
