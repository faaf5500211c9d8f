"""The curvature matrix M[n, m] = g_n^T H g_m by central finite differences of a gradient.

H is the Hessian of a loss whose gradient the caller can evaluate at moved parameters (in
training: the summed dev loss of the meta pass); g_n are the rows of the per-task gradient
buffers. Each rank holds only its slice of every vector (its ZeRO partition), so M is formed
without any full-size per-task vector:

    H g_n ~ (grad(theta + e_n g_n) - grad(theta - e_n g_n)) / (2 e_n)       (one row per task)
    e_n   = step * (1 + ||theta||) / ||g_n||
    M[n, m] = <g_m, H g_n>: this rank's partial sums, then one all-reduce of N*N numbers

so every perturbation has norm step * (1 + ||theta||), relative to the parameters as in
Jacobian-free Newton-Krylov methods. The error of a row is the central difference's
truncation, O(e_n^2 ||g_n||^2) times the loss's third derivative, plus rounding, about
u ||grad|| / (e_n ||g_n||) relative to H g_n with u the unit roundoff of the gradient's dtype
(fp32: 6e-8): the default step 1e-3 balances the two (tests/test_cats_hessian.py measures it).
A row whose ||g_n|| is 0 (a task absent from the step) is 0 and costs no pass. Cost: 2 gradient
evaluations per present task. The parameters are restored from a saved copy and checked
bitwise afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch


class ParameterSlice(Protocol):
    """This rank's slice of the flat parameters, aligned with the gradient rows' slice."""

    def read(self) -> torch.Tensor:
        """A copy of the slice (flat)."""

    def write(self, flat: torch.Tensor) -> None:
        """Sets the slice to ``flat``; afterwards every rank's model computes with the new values."""


def curvature_matrix(rows: torch.Tensor, sq_norms: torch.Tensor, parameters: ParameterSlice,
                     gradient: Callable[[torch.Tensor], None], step: float,
                     reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """M [N, N] (float64, CPU) for gradient rows ``rows`` [N, P_local].

    ``sq_norms``: ||g_n||^2 over all ranks (the Gram matrix's diagonal); ``gradient(out)`` writes this
    rank's slice of the loss gradient at the current parameters into ``out``; ``reduce`` sums a
    tensor over the ranks (identity in one process). Row n is <g_m, H g_n> for every m.
    """
    original = parameters.read()
    theta_norm = math.sqrt(float(reduce(original.double().pow(2).sum().reshape(1))))
    local = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64, device=original.device)
    plus, minus = torch.empty_like(original), torch.empty_like(original)
    try:
        for task, sq_norm in enumerate(sq_norms.tolist()):
            if sq_norm <= 0.0:
                continue
            size = step * (1.0 + theta_norm) / math.sqrt(sq_norm)
            direction = rows[task].to(original.dtype)
            parameters.write(original + size * direction)
            gradient(plus)
            parameters.write(original - size * direction)
            gradient(minus)
            product = (plus - minus) / (2.0 * size)
            local[task] = (rows.to(product.dtype) @ product).double()
    finally:
        parameters.write(original)
    if not torch.equal(parameters.read(), original):
        raise RuntimeError("curvature_matrix: the parameters differ from their saved copy after the restore")
    return reduce(local).cpu()
