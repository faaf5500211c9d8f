"""The CATS mechanism benchmark: its per-task gradients, its plain-equivalence, its report, its config."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cats_ds.cats import CATSConfig, TaskScaler
from cats_ds.tools.mechanism import (HEADLINE_METHODS, METHODS, PROBLEMS, QUICK, MechanismConfig, SharedTrunkModel,
                                     dev_meta_statistics, low_update_share, main, make_problem, per_task_gradients,
                                     report_markdown, summarize, train)

TINY = replace(MechanismConfig(), **QUICK)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the benchmark runs (tiny ops on several threads crawl on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flat_gradient(loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_per_task_gradients_sum_to_the_minibatch_gradient():
    config = replace(TINY, dtype="float64")
    model = SharedTrunkModel(config, torch.Generator().manual_seed(0))
    problem = make_problem(config, seed=0)
    # Task 2 is absent from this batch; the others appear 1 to 4 times.
    tasks = torch.tensor([0, 0, 1, 3, 3, 3, 4, 5, 5, 0, 1, 3])
    inputs = torch.stack([problem.train.inputs[t][i] for i, t in enumerate(tasks.tolist())])
    labels = torch.stack([problem.train.labels[t][i] for i, t in enumerate(tasks.tolist())])

    grads, losses = per_task_gradients(model, inputs, labels, tasks, config.num_tasks)

    plain = flat_gradient(F.cross_entropy(model(inputs, tasks), labels), model)
    torch.testing.assert_close(grads.sum(dim=0), plain, rtol=1e-12, atol=1e-14)
    assert torch.count_nonzero(grads[2]) == 0 and math.isnan(losses[2])
    # Each row on its own: task n's sub-batch mean gradient, weighted by its share of the batch.
    for task in (0, 3, 4):
        mine = tasks == task
        sub_loss = F.cross_entropy(model(inputs[mine], tasks[mine]), labels[mine])
        expected = flat_gradient(sub_loss, model) * (int(mine.sum()) / len(tasks))
        torch.testing.assert_close(grads[task], expected, rtol=1e-12, atol=1e-14)
        assert losses[task] == pytest.approx(float(sub_loss.detach()), rel=1e-12)


class UnitScales(TaskScaler):
    """A real TaskScaler (dev meta pass, primal-dual step) whose scales are then forced to 1."""

    meta_dots_seen = 0

    def update(self, losses, gram, meta_dots=None):
        super().update(losses, gram, meta_dots)
        self.meta_dots_seen += meta_dots is not None
        return torch.ones(self.num_tasks, dtype=torch.float64)


def final_parameters(config: MechanismConfig, method: str, scaler=None) -> list[torch.Tensor]:
    at_t1 = replace(METHODS[method], temperature=1.0)
    model, _ = train(config, at_t1, seed=1, problem=make_problem(config, seed=1), scaler=scaler)
    return [p.detach().clone() for p in model.parameters()]


def test_cats_with_unit_scales_follows_the_plain_trajectory_exactly():
    plain = final_parameters(TINY, "T1")
    forced = UnitScales(CATSConfig(), TINY.num_tasks)
    disabled = TaskScaler(CATSConfig(enabled=False), TINY.num_tasks)
    for scaler in (forced, disabled):
        assert all(torch.equal(a, b) for a, b in zip(plain, final_parameters(TINY, "cats-lookahead", scaler)))
    # The forced scaler really ran the dev meta pass every step, so it drew dev batches meanwhile.
    assert forced.meta_dots_seen == TINY.steps and forced.num_updates == TINY.steps
    # And the comparison can tell: real CATS scales leave the plain trajectory.
    cats = final_parameters(TINY, "cats-lookahead")
    assert not all(torch.equal(a, b) for a, b in zip(plain, cats))


def numbers_in(value) -> list[float]:
    """Every number inside a JSON value."""
    if isinstance(value, dict):
        return [x for item in value.values() for x in numbers_in(item)]
    if isinstance(value, list):
        return [x for item in value for x in numbers_in(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_quick_benchmark_writes_a_finite_report(tmp_path):
    main(["--quick", "--seeds", "2", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 2 * len(HEADLINE_METHODS)
    for run in results["runs"]:
        numbers = numbers_in({key: run[key] for key in ("test_loss", "dev_loss", "train_loss", "curvature")})
        assert len(numbers) == 3 * TINY.num_tasks + 5 * TINY.num_low_tasks
        assert all(math.isfinite(x) for x in numbers), run["method"]
    summary = results["summary"]
    correlations = [*summary["spearman_vs_low_test"].values(), *summary["spearman_base_runs"].values()]
    assert all(math.isfinite(rho) for rho in correlations)
    assert all(math.isfinite(mean) for mean, _ in summary["spearman_within_seed"].values())
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# CATS mechanism benchmark\n\n```\npython -m cats_ds.tools.mechanism --quick --seeds 2")
    assert all(f"| {name} |" in report for name in HEADLINE_METHODS)
    assert (tmp_path / "low_vs_high.png").stat().st_size > 1000
    # The base is the baseline with the lowest low-resource dev loss; every other row ran on its temperature.
    low_dev = {name: summary["methods"][name]["low_dev"][0] for name in ("T1", "T5", "T100")}
    assert summary["base"] == min(low_dev, key=low_dev.get)
    base_temperature = METHODS[summary["base"]].temperature
    for run in results["runs"]:
        expected = METHODS[run["method"]].temperature
        assert run["temperature"] == (base_temperature if expected is None else expected), run["method"]


def test_the_toys_second_order_matrix_is_the_dev_hessian_between_task_gradients():
    """M[n, m] = g_n^T H_dev g_m from the toy's Hessian-vector products, against the dense Hessian
    of the same dev batch's loss (float64, torch.autograd.functional.hessian)."""
    config = replace(TINY, dtype="float64", hidden=6)
    model = SharedTrunkModel(config, torch.Generator().manual_seed(0))
    problem = make_problem(config, seed=0)
    rows = torch.randn(config.num_tasks, sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1))
    losses, meta_gradient, curvature = dev_meta_statistics(model, problem, 4, torch.Generator().manual_seed(2),
                                                            need_gradient=False, curvature_rows=rows)

    # The same dev batch again (same generator seed), as a function of the flat parameters.
    generator = torch.Generator().manual_seed(2)
    picks = [torch.randint(0, len(labels), (4,), generator=generator) for labels in problem.dev.labels]
    inputs = torch.cat([problem.dev.inputs[n][pick] for n, pick in enumerate(picks)])
    labels = torch.cat([problem.dev.labels[n][pick] for n, pick in enumerate(picks)])
    tasks = torch.arange(config.num_tasks).repeat_interleave(4)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def dev_loss(theta: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(theta, [math.prod(shape) for shape in shapes])
        params = {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes)}
        logits = torch.func.functional_call(model, params, (inputs, tasks))
        return F.cross_entropy(logits, labels, reduction="sum") / 4   # the sum over tasks of their means

    hessian = torch.autograd.functional.hessian(dev_loss, flat)
    torch.testing.assert_close(curvature, rows @ hessian @ rows.T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(meta_gradient, torch.func.grad(dev_loss)(flat), rtol=1e-12, atol=1e-12)
    assert losses.shape == (config.num_tasks,)


def test_named_problem_sets_its_fields_and_quick_still_shrinks_it(tmp_path):
    results = main(["--quick", "--problem", "tension", "--methods", "T1", "--seeds", "1", "--out", str(tmp_path)])
    config = results["config"]
    assert config["task_perturbation"] == PROBLEMS["tension"]["task_perturbation"]
    assert (config["high_size"], config["low_size"], config["steps"]) == (QUICK["high_size"], QUICK["low_size"],
                                                                          QUICK["steps"])
    assert "task perturbation 1.0," in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("key, value", [("low_size", 0), ("num_classes", 1), ("steps", True), ("lr", -1e-3),
                                        ("label_noise", 1.0), ("teacher_scale", math.nan), ("dtype", "float16")])
def test_config_errors_name_the_field(key, value):
    with pytest.raises(ValueError, match=rf"MechanismConfig\.{key} must be"):
        MechanismConfig(**{key: value})


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
COMMITTED = sorted(path.parent for path in RESULTS.rglob("mechanism/results.json"))


@pytest.mark.parametrize("committed", COMMITTED, ids=lambda path: str(path.relative_to(RESULTS)))
def test_committed_reports_regenerate_from_their_saved_runs(committed):
    """The tables of a committed report (losses, curvature, Spearman correlations) are what its saved
    runs give; a hand-written reading after them ("## What it shows") is not generated."""
    saved = json.loads((committed / "results.json").read_text())
    config = MechanismConfig(**saved["config"])
    regenerated = report_markdown(saved["command"], config, saved["seeds"], summarize(saved["runs"], config),
                                  saved["seconds"])
    tables = (committed / "report.md").read_text().partition("\n## What it shows")[0]
    assert regenerated[regenerated.index("## Test loss"):].rstrip() == tables[tables.index("## Test loss"):].rstrip()


def test_the_committed_reports_are_found():
    assert {str(path.relative_to(RESULTS)) for path in COMMITTED} >= {"mechanism", "tension_search/mechanism"}


def test_the_low_share_of_the_update_reads_scales_on_the_sampled_mixture_and_weights_as_they_are():
    config = replace(TINY, high_size=900, low_size=100)   # T=1: each low task 100 / 3000 of the mixture
    plain = {"method": "T1", "temperature": 1.0, "final_scales": None}
    assert low_update_share(plain, config) == pytest.approx(0.1)
    # scales: p_n s_n, so s = 3 on the low tasks triples their weight: 0.3 / (0.9 + 0.3)
    scaled = {"method": "cats-lookahead", "temperature": 1.0, "final_scales": [1.0] * 3 + [3.0] * 3}
    assert low_update_share(scaled, config) == pytest.approx(0.25)
    # weights: w is the mixture itself, whatever the sampling
    weighted = {"method": "cats-weights", "temperature": 1.0, "final_scales": [0.1] * 3 + [0.2333] * 3}
    assert low_update_share(weighted, config) == pytest.approx(0.7, rel=1e-3)
