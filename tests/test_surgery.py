"""PCGrad and MGDA on the Gram matrix, against references computed on explicit gradient vectors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cats_ds.cats import CATSConfig, GradientSurgery, mgda_scales, pcgrad_scales
from cats_ds.config import load_config
from cats_ds.configio import ConfigError

FAST = settings(max_examples=40, deadline=None, database=None)


def random_gradients(seed: int, tasks: int, dim: int, shift: float = 0.0) -> torch.Tensor:
    """Task gradients [N, dim] in float64; a negative ``shift`` along a shared direction makes conflicts likely."""
    generator = torch.Generator().manual_seed(seed)
    gradients = torch.randn(tasks, dim, generator=generator, dtype=torch.float64)
    return gradients + shift * torch.randn(1, dim, generator=generator, dtype=torch.float64)


def pcgrad_on_vectors(gradients: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PCGrad as Yu et al. write it, on the vectors themselves (same random draws as the Gram version)."""
    n = gradients.shape[0]
    projected = []
    for i in range(n):
        g_i = gradients[i].clone()
        for j in [k for k in torch.randperm(n, generator=generator).tolist() if k != i]:
            dot = g_i @ gradients[j]
            if dot < 0:
                g_i -= dot / (gradients[j] @ gradients[j]) * gradients[j]
        projected.append(g_i)
    return torch.stack(projected).sum(dim=0)


def min_norm_by_enumeration(gram: np.ndarray) -> float:
    """min alpha^T G alpha on the simplex: the best KKT point over all supports (tiny N only)."""
    n = len(gram)
    best = np.inf
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            sub = gram[np.ix_(support, support)]
            # minimize a^T sub a with sum a = 1: [2 sub, 1; 1^T, 0] [a; mu] = [0; 1]
            system = np.block([[2 * sub, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            solution = np.linalg.lstsq(system, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
            if solution.min() >= -1e-12:
                best = min(best, float(solution @ sub @ solution))
    return best


@FAST
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 6), shift=st.sampled_from([0.0, -2.0]))
def test_pcgrad_on_the_gram_matrix_equals_pcgrad_on_the_vectors(seed, tasks, shift):
    gradients = random_gradients(seed, tasks, dim=7, shift=shift)
    scales = pcgrad_scales(gradients @ gradients.T, torch.Generator().manual_seed(seed))
    expected = pcgrad_on_vectors(gradients, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(scales @ gradients, expected, rtol=1e-10, atol=1e-10)


def test_pcgrad_without_conflicts_is_plain_training():
    gradients = torch.rand(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # all dots > 0
    assert torch.equal(pcgrad_scales(gradients @ gradients.T, torch.Generator().manual_seed(1)),
                       torch.ones(4, dtype=torch.float64))


def test_pcgrad_two_opposed_tasks_by_hand():
    # g1 = (1, 0), g2 = (-1, 1): <g1, g2> = -1. g1' = g1 + g2 / 2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1).
    gram = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(pcgrad_scales(gram, torch.Generator().manual_seed(0)),
                               torch.tensor([2.0, 1.5], dtype=torch.float64))


@FAST
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 5), shift=st.sampled_from([0.0, -2.0]))
def test_mgda_finds_the_minimum_norm_point_of_the_hull(seed, tasks, shift):
    gradients = random_gradients(seed, tasks, dim=3, shift=shift)   # dim < N: the hull can contain 0
    gram = gradients @ gradients.T
    scales = mgda_scales(gram)
    alpha = scales / tasks
    assert float(alpha.min()) >= 0 and float(alpha.sum()) == pytest.approx(1.0, abs=1e-12)
    reached = float(alpha @ gram @ alpha)
    optimum = min_norm_by_enumeration(gram.numpy())
    assert reached == pytest.approx(optimum, rel=1e-6, abs=1e-9 * float(gram.diagonal().mean()))


def test_mgda_of_identical_gradients_is_plain_training_and_of_two_by_hand():
    same = torch.full((3, 1), 2.0, dtype=torch.float64)      # three tasks with the gradient (2)
    torch.testing.assert_close(mgda_scales(same @ same.T) @ same, same.sum(dim=0))
    # g1 = (1, 0), g2 = (0, 2): min over a of |a g1 + (1-a) g2|^2 at a = 4/5; s = 2 alpha
    torch.testing.assert_close(mgda_scales(torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)),
                               torch.tensor([1.6, 0.4], dtype=torch.float64))


@pytest.mark.parametrize("combine", [mgda_scales, lambda g: pcgrad_scales(g, torch.Generator().manual_seed(0))])
def test_an_absent_task_takes_no_part(combine):
    gradients = random_gradients(3, 3, dim=4, shift=-2.0)
    gradients_with_gap = torch.cat([gradients[:1], torch.zeros(1, 4, dtype=torch.float64), gradients[1:]])
    with_gap = combine(gradients_with_gap @ gradients_with_gap.T)
    assert with_gap[1] == 1.0
    torch.testing.assert_close(with_gap[[0, 2, 3]] @ gradients, combine(gradients @ gradients.T) @ gradients)


def test_surgery_resumes_with_the_same_pcgrad_order():
    config = CATSConfig(method="pcgrad")
    grams = [(g @ g.T) for g in (random_gradients(s, 4, 6, shift=-2.0) for s in range(6))]
    straight = GradientSurgery(config, 4, seed=5)
    expected = [straight.update(None, gram) for gram in grams]
    first, second = GradientSurgery(config, 4, seed=5), GradientSurgery(config, 4, seed=5)
    for gram in grams[:3]:
        first.update(None, gram)
    second.load_state_dict(first.state_dict())
    resumed = [second.update(None, gram) for gram in grams[3:]]
    for got, want in zip(resumed, expected[3:]):
        assert torch.equal(got, want)
    assert any(not torch.equal(s, torch.ones(4, dtype=torch.float64)) for s in expected)


def test_surgery_refuses_a_checkpoint_of_another_method():
    saved = GradientSurgery(CATSConfig(method="mgda"), 3).state_dict()
    with pytest.raises(ValueError, match="saved method 'mgda'.*'pcgrad'"):
        GradientSurgery(CATSConfig(method="pcgrad"), 3).load_state_dict(saved)


def test_unknown_method_names_the_key():
    with pytest.raises((ConfigError, ValueError), match="method"):
        load_config(None, ["cats.method=gradnorm"])
