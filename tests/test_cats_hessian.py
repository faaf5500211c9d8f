"""The finite-difference curvature matrix (cats_ds/cats/hessian.py) against exact float64
Hessian-vector products by double backward, in one process; that reference is itself held to
the explicit Hessian of a tiny model."""

from __future__ import annotations

import copy

import pytest
import torch

from cats_ds.cats.hessian import curvature_matrix

INPUTS, HIDDEN, CLASSES, EXAMPLES, TASKS = 6, 8, 4, 32, 3


def make_problem():
    """A tanh MLP's cross-entropy on fixed data (float32 weights) and gradient rows of different scales."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(INPUTS, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, CLASSES))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    x = torch.randn(EXAMPLES, INPUTS, generator=generator)
    y = torch.randint(0, CLASSES, (EXAMPLES,), generator=generator)
    size = sum(p.numel() for p in model.parameters())
    rows = torch.randn(TASKS, size, generator=generator) * torch.tensor([[1.0], [0.01], [30.0]])
    return model, x, y, rows


def loss_of(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y, reduction="sum")


class FlatParameters:
    """The whole model as one 'partition' (one rank)."""

    def __init__(self, model):
        self.model = model

    def read(self):
        return torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().clone()

    def write(self, flat):
        torch.nn.utils.vector_to_parameters(flat.clone(), self.model.parameters())


def finite_difference(model, x, y, rows, step=1e-3):
    def gradient(out):
        model.zero_grad()
        loss_of(model, x, y).backward()
        out.copy_(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return curvature_matrix(rows, (rows.double() ** 2).sum(1), FlatParameters(model), gradient, step, lambda t: t)


def exact(model, x, y, rows):
    """Gbar^T H Gbar in float64 by double backward (one exact Hessian-vector product per row)."""
    model64 = copy.deepcopy(model).double()
    params = list(model64.parameters())
    grads = torch.autograd.grad(loss_of(model64, x.double(), y), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    products = [torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ row.double(), params,
                                                                        retain_graph=True)]) for row in rows]
    return rows.double() @ torch.stack(products).T


def test_finite_differences_match_exact_hessian_vector_products_and_restore_the_parameters():
    model, x, y, rows = make_problem()
    before = FlatParameters(model).read()
    reference = exact(model, x, y, rows)
    measured = finite_difference(model, x, y, rows)
    # compared as the curvature along unit directions, D^-1 M D^-1 with D = diag ||g_n||: the rows'
    # norms differ 3000-fold on purpose, and the step is relative, so every row has the same error
    norms = rows.double().norm(dim=1)
    error = relative(measured / torch.outer(norms, norms), reference / torch.outer(norms, norms))
    print(f"finite-difference M: relative error {error:.2e} against double backward")
    # measured on this problem: 3.4e-5 at step 1e-3; 3e-4 at 3e-3 (truncation, ~ step^2) and 1.1e-4 at
    # 3e-4 (fp32 rounding, ~ 1 / step): the default sits at the balance, and 2e-4 leaves a factor 6
    assert error <= 2e-4
    assert torch.equal(FlatParameters(model).read(), before)   # bitwise
    # the reference is far from trivial: M has off-diagonal entries and is not positive definite everywhere
    assert reference.abs().min() > 0


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_a_row_of_zero_norm_is_zero_and_costs_no_pass():
    model, x, y, rows = make_problem()
    rows[1] = 0.0
    calls = []

    def gradient(out):
        calls.append(1)
        model.zero_grad()
        loss_of(model, x, y).backward()
        out.copy_(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    measured = curvature_matrix(rows, (rows.double() ** 2).sum(1), FlatParameters(model), gradient, 1e-3,
                                lambda t: t)
    assert len(calls) == 2 * (TASKS - 1)
    assert torch.equal(measured[1], torch.zeros(TASKS, dtype=torch.float64))
    assert torch.equal(measured[:, 1], torch.zeros(TASKS, dtype=torch.float64))


def test_the_parameters_are_restored_even_when_a_pass_fails():
    model, x, y, rows = make_problem()
    before = FlatParameters(model).read()

    def gradient(out):
        raise RuntimeError("dev pass failed")
    with pytest.raises(RuntimeError, match="dev pass failed"):
        curvature_matrix(rows, (rows.double() ** 2).sum(1), FlatParameters(model), gradient, 1e-3, lambda t: t)
    assert torch.equal(FlatParameters(model).read(), before)


def test_a_restore_that_is_not_bitwise_is_an_error():
    model, x, y, rows = make_problem()

    class Lossy(FlatParameters):
        def write(self, flat):
            super().write(flat + 1e-7)
    with pytest.raises(RuntimeError, match="saved copy"):
        curvature_matrix(rows, (rows.double() ** 2).sum(1), Lossy(model), lambda out: out.zero_(), 1e-3, lambda t: t)


def test_the_double_backward_reference_equals_the_explicit_hessian():
    """The reference itself, against the whole Hessian of the loss over the flattened parameters
    (torch.autograd.functional.hessian, float64): M = Gbar H Gbar^T."""
    model, x, y, rows = make_problem()
    model64 = copy.deepcopy(model).double()
    names = [name for name, _ in model64.named_parameters()]
    shapes = [p.shape for p in model64.parameters()]
    sizes = [p.numel() for p in model64.parameters()]

    def loss_of_flat(flat):
        pieces = dict(zip(names, (piece.view(shape) for piece, shape in zip(flat.split(sizes), shapes))))
        return loss_of(lambda inputs: torch.func.functional_call(model64, pieces, (inputs,)), x.double(), y)
    flat = torch.nn.utils.parameters_to_vector(model64.parameters()).detach()
    hessian = torch.autograd.functional.hessian(loss_of_flat, flat)
    explicit = rows.double() @ hessian @ rows.double().T
    assert relative(exact(model, x, y, rows), explicit) <= 1e-12
