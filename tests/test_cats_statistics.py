"""The scaler's inputs from per-task gradients, and the weights parameterization, against explicit vectors."""

from __future__ import annotations

import pytest
import torch

from cats_ds.cats import CATSConfig, TaskScaler
from cats_ds.cats.statistics import gram_and_dots, mean_gradient_matrix, mean_gradient_statistics, scales_from_weights


def gradients(shares: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Share-weighted task gradients g_n = pi_n gbar_n [N, P] (zero rows for absent tasks), gbar, h."""
    generator = torch.Generator().manual_seed(seed)
    pi = torch.tensor(shares, dtype=torch.float64)
    mean = torch.randn(len(shares), 7, generator=generator, dtype=torch.float64)
    return pi[:, None] * mean, mean, torch.randn(7, generator=generator, dtype=torch.float64)


def test_mean_gradient_statistics_equal_those_of_the_explicit_mean_gradients():
    pi = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    rows, mean, h = gradients(pi.tolist())
    gram_bar, dots_bar = mean_gradient_statistics(*gram_and_dots(rows, h), pi)
    assert torch.allclose(gram_bar, mean @ mean.T, rtol=1e-12)
    assert torch.allclose(dots_bar, mean @ h, rtol=1e-12)


def test_the_curvature_matrix_of_the_mean_gradients_and_of_an_absent_task():
    pi = torch.tensor([0.6, 0.0, 0.4], dtype=torch.float64)
    rows, mean, _ = gradients(pi.tolist())
    generator = torch.Generator().manual_seed(1)
    root = torch.randn(7, 7, generator=generator, dtype=torch.float64)
    hessian = root + root.T   # indefinite, like a dev loss's Hessian away from a minimum
    curvature_bar = mean_gradient_matrix(rows @ hessian @ rows.T, pi)
    present = torch.tensor([0, 2])
    assert torch.allclose(curvature_bar[present][:, present], (mean @ hessian @ mean.T)[present][:, present],
                          rtol=1e-12)
    assert curvature_bar[1].abs().sum() == 0 and curvature_bar[:, 1].abs().sum() == 0


def test_an_absent_task_has_no_mean_gradient_and_no_scale():
    pi = torch.tensor([0.7, 0.0, 0.3], dtype=torch.float64)
    rows, mean, h = gradients(pi.tolist())
    gram_bar, dots_bar = mean_gradient_statistics(*gram_and_dots(rows, h), pi)
    assert torch.isfinite(gram_bar).all() and gram_bar[1].abs().sum() == 0 and dots_bar[1] == 0
    scales = scales_from_weights(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), pi)
    assert scales[1] == 0
    # the present tasks' weights are renormalized: the update is a convex combination of their means
    expected = (0.5 * mean[0] + 0.2 * mean[2]) / 0.7
    assert torch.allclose(scales @ rows, expected, rtol=1e-12)


def test_weights_at_the_realized_shares_are_plain_training_and_others_move_the_mixture():
    pi = torch.tensor([0.85, 0.1, 0.05], dtype=torch.float64)
    rows, mean, _ = gradients(pi.tolist(), seed=1)
    assert torch.equal(scales_from_weights(pi.clone(), pi), torch.ones(3, dtype=torch.float64))
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    assert torch.allclose(scales_from_weights(uniform, pi) @ rows, mean.mean(dim=0), rtol=1e-12)


def test_weights_start_at_the_sampling_distribution_on_the_floored_simplex():
    config = CATSConfig(parameterization="weights", alpha_min=0.05, lr_alpha=0.0)
    scaler = TaskScaler(config, num_tasks=3, initial=[0.9, 0.08, 0.02])
    # Euclidean projection: the floored task takes 0.03 from the others, in equal parts
    assert torch.allclose(scaler.alpha, torch.tensor([0.885, 0.065, 0.05], dtype=torch.float64))
    assert torch.allclose(scaler.scales, scaler.alpha)    # weights: gain 1, not N


def test_the_weights_scaler_measures_plain_training_at_the_realized_shares():
    """eps (relative) follows plain training's squared update norm: pi^T Gbar pi = 1^T G 1."""
    pi = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    rows, _, h = gradients(pi.tolist(), seed=2)
    gram, dots = gram_and_dots(rows, h)
    scaler = TaskScaler(CATSConfig(parameterization="weights", ema_decay=0.5), num_tasks=3, initial=pi)
    scaler.update(torch.ones(3), *mean_gradient_statistics(gram, dots, pi), plain=pi)
    assert scaler.eps == pytest.approx(float(gram.sum()), rel=1e-12)


def test_weights_are_a_cats_parameterization_only():
    with pytest.raises(ValueError, match="parameterization"):
        CATSConfig(parameterization="weights", method="pcgrad")
    with pytest.raises(ValueError, match="parameterization"):
        CATSConfig(parameterization="mixture")
