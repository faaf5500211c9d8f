"""The curvature tool against Hessians known in closed form, then on a real checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cats_ds.tools.curvature import hessian_vector_product, hutchinson_trace, main, top_eigenvalue


def quadratic(matrix: torch.Tensor, batches: int = 2):
    """Losses whose mean is 0.5 x^T A x + b.x (Hessian A), split over ``batches`` closures, at a random x."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(matrix.shape[0], dtype=torch.float64, generator=generator, requires_grad=True)
    shift = torch.randn(matrix.shape[0], dtype=torch.float64, generator=generator)
    # batch k contributes (k+1)/mean weight of A so that only the mean of the batches is A
    weights = [2 * (k + 1) / (batches + 1) for k in range(batches)]
    return [lambda w=w: w * (0.5 * x @ matrix @ x + shift @ x) for w in weights], [x]


def symmetric_matrix(size: int, eigenvalues: list[float]) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_hessian_vector_product_is_the_matrix_product():
    matrix = symmetric_matrix(6, [5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    losses, params = quadratic(matrix, batches=3)
    vector = torch.randn(6, dtype=torch.float64)
    assert torch.allclose(hessian_vector_product(losses, params, [vector])[0], matrix @ vector, atol=1e-12)


@pytest.mark.parametrize("eigenvalues", [[9.0, 3.0, 1.0, 0.2], [2.0, 1.9, -0.5, 0.0], [1.0, -4.0, 0.3, 0.1]])
def test_power_iteration_finds_the_eigenvalue_of_largest_magnitude(eigenvalues):
    matrix = symmetric_matrix(4, eigenvalues)
    losses, params = quadratic(matrix)
    estimate = top_eigenvalue(losses, params, iterations=200, generator=torch.Generator().manual_seed(0))
    expected = max(eigenvalues, key=abs)
    assert estimate == pytest.approx(expected, rel=1e-3)


def test_hutchinson_trace_is_unbiased_and_exact_for_a_diagonal_hessian():
    diagonal = torch.diag(torch.tensor([4.0, 1.0, 0.5, 2.5], dtype=torch.float64))
    losses, params = quadratic(diagonal)
    # z_i^2 = 1 for Rademacher z: one probe gives the exact trace of a diagonal matrix
    assert hutchinson_trace(losses, params, 1, torch.Generator().manual_seed(0)) == pytest.approx(8.0)
    dense = symmetric_matrix(5, [3.0, 2.0, 1.0, 1.0, 0.5])
    losses, params = quadratic(dense)
    assert hutchinson_trace(losses, params, 2000, torch.Generator().manual_seed(0)) == pytest.approx(7.5, rel=0.05)


@pytest.mark.slow
def test_cli_on_a_trained_checkpoint(tmp_path_factory):
    """A tiny run trained by the launcher tests' helpers: consolidation, model rebuild, every task."""
    from corpus_fixture import write_config, write_corpus
    from conftest import run_deepspeed

    root = tmp_path_factory.mktemp("curvature")
    config = write_config(root / "run.yaml", write_corpus(root / "corpus"), root / "run", root / "cache",
                          train={"max_steps": 6, "export": False}, eval={"test_sentences": 2})
    run_deepspeed(["--module", "cats_ds.train", "--config", str(config)], processes=2)
    # one batch of the first 20 dev examples: the same examples the trainer's final dev loss used
    result = main([str(root / "run"), "--iterations", "5", "--batches", "1", "--batch-sentences", "20",
                   "--trace-samples", "2"])
    assert list(result["tasks"]) == ["de-en", "es-en", "fr-en"] and result["tag"] == "step00000006"
    trainer_dev = json.loads((root / "run" / "results.json").read_text())["dev"]["task_dev_loss"]
    for entry, expected in zip(result["tasks"].values(), trainer_dev):
        assert entry["dev_loss"] == pytest.approx(expected, rel=1e-5)   # the checkpoint's weights, tied right
        assert math.isfinite(entry["top_eigenvalue"]) and math.isfinite(entry["hessian_trace"])
    assert json.loads((root / "run" / "curvature.json").read_text()) == result


@pytest.mark.parametrize("device, message", [("gpu0", "--device: gpu0"), ("cuda", "no CUDA device")])
def test_a_device_this_machine_lacks_is_refused_by_name(device, message, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        main(["no-such-run", "--device", device])
    assert message in capsys.readouterr().err
