"""From per-task gradients to the scaler's inputs, in one place (pure torch).

The trainer applies it to this rank's slice of the ZeRO partition buffers and all-reduces the
result (cats_ds/cats/zero.py); the float64 dense reference (tests/dist/cats_exactness.py)
applies it to whole gradients, and the mechanism benchmark (cats_ds/tools/mechanism.py) to its toy's
per-task gradients. All then feed the same scaler.
"""

from __future__ import annotations

import torch


def gram_and_dots(rows: torch.Tensor, meta_gradient: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """G[n, m] = <g_n, g_m> and d[n] = <h, g_n> for gradient rows g [N, P] and h [P], in their dtype."""
    gram = rows @ rows.T
    return gram, None if meta_gradient is None else rows @ meta_gradient


def all_finite(*tensors: torch.Tensor | None) -> bool:
    """Whether every given tensor (None skipped) holds only finite values."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def mean_gradient_statistics(gram: torch.Tensor, dots: torch.Tensor | None, shares: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The statistics of the per-task mean gradients gbar_n = g_n / pi_n, from those of the
    share-weighted g_n: Gbar = D^-1 G D^-1 and dbar = D^-1 d with D = diag(pi) (float64).

    A task absent from the step (pi_n = 0, so g_n = 0) gets zero rows: it has no mean gradient.
    """
    inverse = _inverse_shares(shares)
    return mean_gradient_matrix(gram, shares), None if dots is None else inverse * dots.double()


def mean_gradient_matrix(matrix: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """D^-1 A D^-1 for a bilinear form A[n, m] = g_n^T K g_m of the share-weighted gradients (the Gram
    matrix, K = I, or the curvature matrix M, K = H_dev): the same form of the mean gradients."""
    inverse = _inverse_shares(shares)
    return inverse[:, None] * matrix.double() * inverse[None, :]


def _inverse_shares(shares: torch.Tensor) -> torch.Tensor:
    """1 / pi_n, and 0 for a task absent from the step (pi_n = 0), float64."""
    return torch.where(shares > 0, 1.0 / shares.clamp(min=1e-300), torch.zeros_like(shares)).double()


def scales_from_weights(weights: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """The partition's scales for weights w on the mean gradients: s_n = w_n / (pi_n W), with W
    the present tasks' total weight, so that sum_n s_n g_n = sum_n (w_n / W) gbar_n over the
    tasks present in the step (an absent task, pi_n = 0, gets s_n = 0). w = pi gives s = 1."""
    present = shares > 0
    scales = torch.zeros_like(weights, dtype=torch.float64)
    scales[present] = weights[present].double() / (shares[present].double() * weights[present].double().sum())
    return scales
