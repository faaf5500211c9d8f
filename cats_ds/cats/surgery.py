"""Gradient-level multi-task baselines on the same per-task Gram matrix as CATS: PCGrad and MGDA.

Both methods combine the task gradients g_n linearly, so each is a vector of scales s with
update sum_n s_n g_n, and both need only G[n, m] = <g_n, g_m>: they run on the N x N matrix
that the language-partitioned ZeRO buffers already all-reduce for CATS, never on a full-size
gradient. Pure torch, float64, deterministic: identical on every rank given the same G.

- PCGrad (Yu et al., NeurIPS 2020, "Gradient Surgery for Multi-Task Learning"): for each task
  i, in a random order of the other tasks j, if the projected g_i' conflicts with the original
  g_j (<g_i', g_j> < 0), remove the conflicting component: g_i' -= <g_i', g_j> / |g_j|^2 g_j.
  The update is sum_i g_i'. Every g_i' stays a combination of the original g's, so the whole
  procedure runs on coefficient vectors C[i] (g_i' = sum_k C[i, k] g_k) with
  <g_i', g_j> = (C G)[i, j]; s = sum_i C[i]. Without conflicts s = 1 (plain training).
- MGDA (Desideri 2012; Sener & Koltun, NeurIPS 2018): the minimum-norm point of the convex
  hull of the task gradients, alpha* = argmin_{alpha on the simplex} alpha^T G alpha, solved
  exactly by Wolfe's minimum-norm-point algorithm. s = N * alpha*, so
  that identical task gradients give s = 1.

A task with g_n = 0 (G[n, n] == 0: not in this step) takes no part and gets s_n = 1; its
gradient is zero, so the value changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from cats_ds.cats.scaler import CATSConfig

SURGERY_METHODS = ("pcgrad", "mgda")


def pcgrad_scales(gram: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PCGrad's update as scales s [N] (float64): sum_n s_n g_n = sum_i g_i' (module docstring)."""
    gram = gram.to(torch.float64)
    n = gram.shape[0]
    present = [j for j in range(n) if gram[j, j] > 0]
    coefficients = torch.eye(n, dtype=torch.float64)
    for i in present:
        others = [present[k] for k in torch.randperm(len(present), generator=generator).tolist() if present[k] != i]
        for j in others:
            dot = coefficients[i] @ gram[:, j]
            if dot < 0:
                coefficients[i, j] -= dot / gram[j, j]
    scales = coefficients[present].sum(dim=0)
    absent = torch.ones(n, dtype=torch.bool)
    absent[present] = False
    scales[absent] = 1.0
    return scales


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """argmin of alpha^T G alpha over the probability simplex (float64), exactly.

    Wolfe's minimum-norm-point algorithm (1976) on the Gram matrix: keep a support S and the
    weights a on it; add the task whose gradient most violates optimality
    ((G a)_j < a^T G a); move to the affine minimizer of the support (one small linear
    solve), or as far towards it as the weights stay >= 0, dropping the task that reaches 0.
    Finite, and exact up to rounding, where projected gradient would crawl on the nearly
    parallel (ill-conditioned) gradients of related tasks."""
    gram = gram.to(torch.float64) / gram.diagonal().mean()   # scale-free tolerances
    n = gram.shape[0]
    weights = torch.zeros(n, dtype=torch.float64)
    first = int(gram.diagonal().argmin())
    weights[first], support = 1.0, [first]
    for _ in range(10 * n * n):
        gradient = gram @ weights
        candidate = int(gradient.argmin())
        if float(gradient[candidate]) >= float(weights @ gradient) - 1e-12 or candidate in support:
            return weights
        support.append(candidate)
        weights, support = _towards_affine_minimizer(gram, weights, support)
    raise RuntimeError("min_norm_weights did not converge")


def _towards_affine_minimizer(gram: torch.Tensor, weights: torch.Tensor,
                              support: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Wolfe's minor cycles: the affine minimizer of the support, kept inside the simplex."""
    while True:
        affine = _affine_minimizer(gram, support)
        if bool((affine > 1e-15).all()):
            weights = torch.zeros_like(weights)
            weights[support] = affine
            return weights, support
        current = weights[support]
        falling = affine < current
        ratios = current[falling] / (current[falling] - affine[falling])
        theta = float(ratios.min().clamp(max=1.0))
        moved = current + theta * (affine - current)
        weights = torch.zeros_like(weights)
        weights[support] = moved.clamp(min=0.0)
        support = [j for j, value in zip(support, moved.tolist()) if value > 1e-15]
        weights /= weights.sum()


def _affine_minimizer(gram: torch.Tensor, support: list[int]) -> torch.Tensor:
    """min b^T G_S b subject to sum b = 1: the KKT system [2 G_S, 1; 1^T, 0] [b; mu] = [0; 1]."""
    size = len(support)
    system = torch.zeros(size + 1, size + 1, dtype=torch.float64)
    system[:size, :size] = 2.0 * gram[support][:, support]
    system[:size, size] = system[size, :size] = 1.0
    rhs = torch.zeros(size + 1, dtype=torch.float64)
    rhs[size] = 1.0
    return torch.linalg.lstsq(system, rhs.unsqueeze(1)).solution.squeeze(1)[:size]


def mgda_scales(gram: torch.Tensor) -> torch.Tensor:
    """MGDA's minimum-norm combination as scales s [N] = N_present * alpha* (module docstring)."""
    gram = gram.to(torch.float64)
    present = gram.diagonal() > 0
    scales = torch.ones(gram.shape[0], dtype=torch.float64)
    if bool(present.any()):
        weights = min_norm_weights(gram[present][:, present])
        scales[present] = int(present.sum()) * weights
    return scales


class GradientSurgery:
    """PCGrad or MGDA with the TaskScaler's interface, so the trainer runs them through the
    same partition buffers, Gram all-reduce and write-back as CATS (``cats.method``).

    Stateless but for counters; PCGrad's random task order is drawn from a generator seeded
    with (seed, step), so it is identical on every rank and after a resume."""

    def __init__(self, config: CATSConfig, num_tasks: int, seed: int = 0) -> None:
        if config.method not in SURGERY_METHODS:
            raise ValueError(f"GradientSurgery: cats.method must be one of {SURGERY_METHODS}, got {config.method!r}")
        self.config = config
        self.num_tasks = num_tasks
        self.seed = seed
        self._scales = torch.ones(num_tasks, dtype=torch.float64)
        self._step = 0

    @property
    def scales(self) -> torch.Tensor:
        return self._scales.clone()

    @property
    def alpha(self) -> torch.Tensor:
        return self._scales / self.num_tasks

    @property
    def lam(self) -> float:
        return 0.0

    def update_due(self) -> bool:
        """Always False: surgery never needs the dev-batch meta pass."""
        return False

    def update(self, losses: Any, gram: torch.Tensor, meta_dots: Any = None) -> torch.Tensor:
        """Scales for this step's Gram matrix (losses and meta_dots are not used)."""
        self._step += 1
        gram = torch.as_tensor(gram, dtype=torch.float64)
        gram = 0.5 * (gram + gram.T)  # partial Grams summed over ranks are symmetric up to rounding
        if self.config.method == "pcgrad":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._step)
            self._scales = pcgrad_scales(gram, generator)
        else:
            self._scales = mgda_scales(gram)
        return self.scales

    def describe(self) -> dict[str, float]:
        return {"steps": float(self._step)}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.config.method, "step": self._step, "scales": self._scales.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.config.method:
            raise ValueError(f"GradientSurgery.load_state_dict: saved method {state.get('method')!r}, "
                             f"this run's cats.method is {self.config.method!r}")
        self._step = int(state["step"])
        self._scales = torch.as_tensor(state["scales"], dtype=torch.float64).clone()
