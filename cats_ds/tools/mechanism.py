"""A fast mechanism benchmark for CATS ablations: a synthetic imbalanced multi-task problem on CPU.

    python -m cats_ds.tools.mechanism [--seeds 3] [--steps N] [--methods T1 T5 cats-lookahead ...]
                                [--problem default|tension] [--out DIR] [--threads 1] [--quick]

The problem: tasks share a rule (a random teacher network) plus a task-specific perturbation
of its weights; labels are the teacher's argmax with a share of them replaced by uniform
noise, so a task with few examples can be overfit. A student with a shared, overparameterized
ReLU trunk and one linear head per task learns all tasks at once: 3 high-resource tasks of
20,000 training examples and 3 low-resource ones of 200 by default (`--problem tension`:
50,000 and 2,000, a larger task perturbation, 2,500 steps). Every task also has a dev
split (CATS's meta statistics, and the choice of the base temperature) and a test split (used
only for the report).

Every optimizer step draws a batch from the task mixture with temperature sampling
p_n ~ size_n^(1/T) (cats_ds.data.sampler.temperature_probs), computes the per-task gradients
g_n = grad(sum of task n's example losses in the batch / batch size), so that sum_n g_n is
the plain minibatch gradient, their Gram matrix G = g g^T and, for the dev-sourced
objectives, the dev losses and d = g h with h = sum_n grad(task n's mean dev-batch loss).
The real TaskScaler (or GradientSurgery for PCGrad and MGDA) turns them into scales s, and
Adam steps on sum_n s_n g_n: the same interface as the trainer, on gradients flattened only
because the toy is small (``weights`` and ``softmax`` see the mean gradients' statistics and
``second_order`` the dev Hessian's M, as in the trainer). Plain training runs the same loop
with s = 1.

The temperature baselines run first; every other row (each named CATS variant, PCGrad, MGDA)
runs on the base temperature: the baseline with the lowest low-resource dev loss.

The report: per method, mean +- std over seeds of the high- and low-resource test loss, the
same-seed deltas against T=1 and against the base temperature baseline, the low-resource dev
loss, the low-resource tasks' share of the update at the end, their curvature (top Hessian
eigenvalue and Hutchinson trace of their train and test losses, and an elementwise-adaptive,
scale-invariant trace), and the Spearman correlation of each curvature measure with the
low-resource test loss over all runs.
Writes DIR/report.md, DIR/results.json and DIR/low_vs_high.png.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm

from cats_ds.cats import CATSConfig, GradientSurgery, TaskScaler
from cats_ds.cats.scaler import MEAN_GRADIENT_PARAMETERIZATIONS
from cats_ds.cats.statistics import gram_and_dots, mean_gradient_matrix, mean_gradient_statistics, scales_from_weights
from cats_ds.cats.variants import VARIANTS
from cats_ds.data.sampler import temperature_probs
from cats_ds.tools.curvature import hessian_vector_product, hutchinson_trace, top_eigenvalue

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass
class MechanismConfig:
    """The synthetic problem, the student, training and the curvature measurements.

    Sizes are per task. ``meta_batch_size`` is the number of dev examples per task in each
    CATS meta pass; ``eig_iterations`` and ``trace_samples`` are the Hessian-vector products
    of the power iteration and the Rademacher probes of each Hutchinson trace.
    """

    num_high_tasks: int = 3
    num_low_tasks: int = 3
    high_size: int = 20_000
    low_size: int = 200
    dev_size: int = 200
    test_size: int = 2_000
    input_dim: int = 16
    num_classes: int = 4
    teacher_hidden: int = 32
    teacher_scale: float = 4.0      # logit scale of the teacher: larger is closer to a hard rule
    task_perturbation: float = 0.5  # per-task weight perturbation, relative to the shared teacher's
    label_noise: float = 0.2        # share of labels replaced by a uniformly drawn class
    hidden: int = 128
    steps: int = 1_500
    batch_size: int = 64
    lr: float = 1e-3
    meta_batch_size: int = 32
    eig_iterations: int = 20
    trace_samples: int = 10
    dtype: str = "float32"

    def __post_init__(self) -> None:
        minimum = {"num_classes": 2}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int":
                _require(isinstance(value, int) and not isinstance(value, bool)
                         and value >= minimum.get(item.name, 1), item.name, value,
                         f"an integer >= {minimum.get(item.name, 1)}")
        _require_real(self.teacher_scale, "teacher_scale", "> 0", lambda v: v > 0)
        _require_real(self.task_perturbation, "task_perturbation", ">= 0", lambda v: v >= 0)
        _require_real(self.label_noise, "label_noise", "in [0, 1)", lambda v: 0 <= v < 1)
        _require_real(self.lr, "lr", "> 0", lambda v: v > 0)
        _require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {tuple(DTYPES)}")

    @property
    def num_tasks(self) -> int:
        return self.num_high_tasks + self.num_low_tasks

    @property
    def train_sizes(self) -> list[int]:
        return [self.high_size] * self.num_high_tasks + [self.low_size] * self.num_low_tasks

    @property
    def low_tasks(self) -> list[int]:
        return list(range(self.num_high_tasks, self.num_tasks))


def _require(condition: bool, key: str, value: Any, requirement: str) -> None:
    if not condition:
        raise ValueError(f"MechanismConfig.{key} must be {requirement}, got {value!r}")


def _require_real(value: Any, key: str, requirement: str, check) -> None:
    is_real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _require(is_real and check(value), key, value, f"a finite number {requirement}")


# Named problems (--problem): overrides of the defaults. "tension" has the trade-off temperature
# sampling is about (docs/results/tension_search/): low-resource tasks far enough from the shared
# rule that T=1 underfits them, large enough that T=5 helps them before T=100 overfits them, and
# high-resource tasks that lose from upsampling (T=1 best on them).
PROBLEMS: dict[str, dict[str, Any]] = {
    "default": {},
    "tension": dict(high_size=50_000, low_size=2_000, task_perturbation=1.0, steps=2_500),
}

# Seconds-long settings for tests and smoke runs: every code path, nothing measured.
QUICK = dict(high_size=1_000, low_size=40, dev_size=40, test_size=200, hidden=16, steps=30, batch_size=32,
             meta_batch_size=8, eig_iterations=4, trace_samples=2)


@dataclass(frozen=True)
class Method:
    """One benchmark row: a sampling temperature and what turns the Gram matrix into scales.

    ``scaler`` is ``plain`` (s = 1), ``cats`` (TaskScaler) or ``pcgrad`` / ``mgda``
    (GradientSurgery); ``cats`` holds CATSConfig fields that differ from its defaults (interval 1
    unless they say otherwise). ``temperature`` None is the base temperature: the temperature
    baseline with the lowest low-resource dev loss, chosen after the baselines ran (the issue's
    rule: every CATS and surgery row runs on the better base temperature, chosen on dev).
    """

    temperature: float | None = None
    scaler: str = "plain"
    cats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scaler == "plain" and self.temperature is None:
            raise ValueError("Method: a temperature baseline (scaler 'plain') needs its temperature")

    def cats_config(self) -> CATSConfig:
        method = self.scaler if self.scaler in ("pcgrad", "mgda") else "cats"
        return CATSConfig(**{"method": method, "interval": 1, **self.cats})


def _variant(name: str, **knobs: Any) -> Method:
    """A named CATS variant (cats_ds/cats/variants.py) on the base temperature."""
    return Method(None, "cats", {**VARIANTS[name], "variant": name, **knobs})


def _cats(objective: str, meta_source: str, **knobs: Any) -> Method:
    return Method(None, "cats", {"objective": objective, "meta_source": meta_source, **knobs})


# Every named CATS variant at its own keys and CATSConfig's defaults otherwise: the headline rows;
# two meta-source ablations (training-batch meta statistics) and the surgery baselines beside them.
HEADLINE_METHODS: dict[str, Method] = {
    "T1": Method(1.0),
    "T5": Method(5.0),
    "T100": Method(100.0),
    **{f"cats-{name}": _variant(name) for name in VARIANTS},
    "cats-lookahead-train": _cats("lookahead", "train"),
    "cats-weighted_loss-train": _cats("weighted_loss", "train"),
    "pcgrad": Method(None, "pcgrad"),
    "mgda": Method(None, "mgda"),
}
# Knobs off their defaults, run only when named with --methods; their names say "tuned".
TUNED_METHODS: dict[str, Method] = {
    "tuned-cats-lookahead-lr_alpha0.1": _variant("lookahead", lr_alpha=0.1),
}
METHODS: dict[str, Method] = {**HEADLINE_METHODS, **TUNED_METHODS}


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class Split:
    """One split of every task: inputs [n, input_dim] and labels [n], one pair per task."""

    inputs: list[torch.Tensor]
    labels: list[torch.Tensor]


@dataclass
class Problem:
    train: Split
    dev: Split
    test: Split


def teacher_weights(config: MechanismConfig, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per task (A_n, B_n) = shared (A, B) + task_perturbation x task-specific draws of the same law."""
    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        inner = torch.randn(config.teacher_hidden, config.input_dim, generator=generator, dtype=torch.float64)
        outer = torch.randn(config.num_classes, config.teacher_hidden, generator=generator, dtype=torch.float64)
        return inner / math.sqrt(config.input_dim), outer / math.sqrt(config.teacher_hidden)
    shared_inner, shared_outer = draw()
    tasks = []
    for _ in range(config.num_tasks):
        inner, outer = draw()
        tasks.append((shared_inner + config.task_perturbation * inner, shared_outer + config.task_perturbation * outer))
    return tasks


def labelled_examples(config: MechanismConfig, teacher: tuple[torch.Tensor, torch.Tensor], count: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs, the teacher's argmax labels, and label_noise of them redrawn uniformly."""
    inner, outer = teacher
    inputs = torch.randn(count, config.input_dim, generator=generator, dtype=torch.float64)
    labels = (config.teacher_scale * torch.tanh(inputs @ inner.T) @ outer.T).argmax(dim=1)
    noisy = torch.rand(count, generator=generator, dtype=torch.float64) < config.label_noise
    random_labels = torch.randint(0, config.num_classes, (count,), generator=generator)
    return inputs.to(DTYPES[config.dtype]), torch.where(noisy, random_labels, labels)


def make_problem(config: MechanismConfig, seed: int) -> Problem:
    """Train, dev and test splits of every task, all drawn from the seed (dev and test the same size for all)."""
    generator = torch.Generator().manual_seed(_stream_seed(seed, "data"))
    splits: dict[str, Split] = {name: Split([], []) for name in ("train", "dev", "test")}
    for teacher, train_size in zip(teacher_weights(config, generator), config.train_sizes):
        for name, count in (("train", train_size), ("dev", config.dev_size), ("test", config.test_size)):
            inputs, labels = labelled_examples(config, teacher, count, generator)
            splits[name].inputs.append(inputs)
            splits[name].labels.append(labels)
    return Problem(**splits)


def _stream_seed(seed: int, stream: str) -> int:
    """Independent random streams per purpose, so e.g. dev batches never shift the training batches."""
    offsets = {"data": 0, "init": 1, "batches": 2, "meta": 3, "curvature": 4}
    return 10_007 * seed + offsets[stream]


# ----------------------------------------------------------------------------------------------
# model and per-task gradients


class SharedTrunkModel(nn.Module):
    """Two ReLU layers shared by all tasks, then one linear head per task (He / LeCun initialized)."""

    def __init__(self, config: MechanismConfig, generator: torch.Generator) -> None:
        super().__init__()
        dtype = DTYPES[config.dtype]

        def weight(fan_in: int, *shape: int, gain: float = 2.0) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype) * math.sqrt(gain / fan_in))

        self.trunk_in = weight(config.input_dim, config.input_dim, config.hidden)
        self.trunk_in_bias = nn.Parameter(torch.zeros(config.hidden, dtype=dtype))
        self.trunk_out = weight(config.hidden, config.hidden, config.hidden)
        self.trunk_out_bias = nn.Parameter(torch.zeros(config.hidden, dtype=dtype))
        self.heads = weight(config.hidden, config.num_tasks, config.hidden, config.num_classes, gain=1.0)
        self.head_bias = nn.Parameter(torch.zeros(config.num_tasks, config.num_classes, dtype=dtype))

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(inputs @ self.trunk_in + self.trunk_in_bias)
        return torch.relu(hidden @ self.trunk_out + self.trunk_out_bias)

    def forward(self, inputs: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Logits [batch, classes]; example i goes through the head of task tasks[i]."""
        return torch.einsum("bh,bhk->bk", self.features(inputs), self.heads[tasks]) + self.head_bias[tasks]

    def task_logits(self, inputs: torch.Tensor, task: int) -> torch.Tensor:
        """Logits of examples that all belong to one task (cheaper than forward's per-example heads)."""
        return self.features(inputs) @ self.heads[task] + self.head_bias[task]


def task_loss(model: SharedTrunkModel, split: Split, task: int) -> torch.Tensor:
    """Mean cross-entropy of one task over a whole split (with a graph)."""
    return F.cross_entropy(model.task_logits(split.inputs[task], task), split.labels[task])


def per_task_gradients(model: SharedTrunkModel, inputs: torch.Tensor, labels: torch.Tensor, tasks: torch.Tensor,
                       num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-task gradients [N, P] of (task n's summed example loss / batch size), and mean losses [N].

    A task absent from the batch gets a zero row and a NaN loss (TaskScaler freezes its alpha).
    """
    params = list(model.parameters())
    example_losses = F.cross_entropy(model(inputs, tasks), labels, reduction="none")
    rows, losses = [], []
    for task in range(num_tasks):
        in_task = tasks == task
        if not bool(in_task.any()):
            rows.append(torch.zeros(sum(p.numel() for p in params), dtype=example_losses.dtype))
            losses.append(math.nan)
            continue
        gradients = torch.autograd.grad(example_losses[in_task].sum() / len(inputs), params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in gradients]))
        losses.append(float(example_losses[in_task].detach().mean()))
    return torch.stack(rows), torch.tensor(losses, dtype=torch.float64)


def dev_meta_statistics(model: SharedTrunkModel, problem: Problem, batch_size: int, generator: torch.Generator,
                        need_gradient: bool, curvature_rows: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """On a fresh dev batch: each task's mean loss [N]; h = sum_n grad(that mean loss), flat, if
    asked; and, given gradient rows g [N, P], M[n, m] = g_n^T H_dev g_m with H_dev the Hessian of
    the same dev loss (exact Hessian-vector products; the trainer uses finite differences)."""
    dev = problem.dev
    picks = [torch.randint(0, len(labels), (batch_size,), generator=generator) for labels in dev.labels]
    inputs = torch.cat([dev.inputs[n][pick] for n, pick in enumerate(picks)])
    labels = torch.cat([dev.labels[n][pick] for n, pick in enumerate(picks)])
    tasks = torch.arange(len(picks)).repeat_interleave(batch_size)
    need_gradient = need_gradient or curvature_rows is not None
    with torch.set_grad_enabled(need_gradient):
        example_losses = F.cross_entropy(model(inputs, tasks), labels, reduction="none")
    losses = example_losses.detach().view(len(picks), batch_size).mean(dim=1).to(torch.float64)
    if not need_gradient:
        return losses, None, None
    # Every task's dev batch has batch_size examples, so one backward of the sum over tasks of
    # their means gives h.
    params = list(model.parameters())
    gradients = torch.autograd.grad(example_losses.sum() / batch_size, params,
                                    create_graph=curvature_rows is not None)
    meta_gradient = torch.cat([g.reshape(-1) for g in gradients])
    if curvature_rows is None:
        return losses, meta_gradient, None
    rows = curvature_rows.to(meta_gradient.dtype)
    hessian_rows = torch.stack([
        torch.cat([h.reshape(-1) for h in torch.autograd.grad(meta_gradient @ row, params, retain_graph=True)])
        for row in rows])
    return losses, meta_gradient.detach(), rows.double() @ hessian_rows.double().T


# ----------------------------------------------------------------------------------------------
# training


Scaler = TaskScaler | GradientSurgery


def make_scaler(method: Method, num_tasks: int, seed: int) -> Scaler | None:
    """The real TaskScaler or GradientSurgery a method uses; None for plain training (s = 1)."""
    if method.scaler == "plain":
        return None
    if method.scaler == "cats":
        return TaskScaler(method.cats_config(), num_tasks)
    return GradientSurgery(method.cats_config(), num_tasks, seed)


def step_scales(scaler: Scaler | None, grads: torch.Tensor, train_losses: torch.Tensor, shares: torch.Tensor,
                model: SharedTrunkModel, problem: Problem, config: MechanismConfig,
                meta_generator: torch.Generator) -> torch.Tensor:
    """The scales s [N] (float64) for this step, feeding the scaler what its objective, meta source
    and parameterization read, as the trainer's CATS hook does (cats_ds/cats/hook.py).

    ``shares``: each task's share of the batch's examples (pi). ``weights`` and ``softmax`` see the
    per-task mean gradients' statistics and return weights, turned into scales here."""
    if scaler is None:
        return torch.ones(config.num_tasks, dtype=torch.float64)
    grads64 = grads.to(torch.float64)
    losses, meta_gradient, curvature = train_losses, None, None
    # GradientSurgery.update_due() is always False: it needs no meta pass.
    if scaler.update_due() and scaler.config.meta_source == "dev":
        objective = scaler.config.objective
        losses, meta_gradient, curvature = dev_meta_statistics(
            model, problem, config.meta_batch_size, meta_generator,
            need_gradient=objective in ("lookahead", "second_order"),
            curvature_rows=grads if scaler.curvature_due() else None)
    gram, meta_dots = gram_and_dots(grads64, None if meta_gradient is None else meta_gradient.to(torch.float64))
    weights = scaler.config.parameterization in MEAN_GRADIENT_PARAMETERIZATIONS
    extra: dict[str, torch.Tensor] = {}
    if weights:
        gram, meta_dots = mean_gradient_statistics(gram, meta_dots, shares)
        curvature = None if curvature is None else mean_gradient_matrix(curvature, shares)
        extra["plain"] = shares
    if curvature is not None:
        extra["curvature"] = curvature
    scales = scaler.update(losses, gram, meta_dots, **extra)
    return scales_from_weights(scaler.scales, shares) if weights else scales


def write_gradient(model: SharedTrunkModel, flat: torch.Tensor) -> None:
    """Unflattens a [P] gradient into the parameters' .grad."""
    offset = 0
    for param in model.parameters():
        param.grad = flat[offset:offset + param.numel()].view_as(param).clone()
        offset += param.numel()


def train(config: MechanismConfig, method: Method, seed: int, problem: Problem,
          scaler: Scaler | None = None) -> tuple[SharedTrunkModel, Scaler | None]:
    """Trains the student with one method from the seed; returns the model and the scaler it used.

    ``scaler`` replaces the one ``method`` would build (tests force scales through it).
    """
    model = SharedTrunkModel(config, torch.Generator().manual_seed(_stream_seed(seed, "init")))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = scaler if scaler is not None else make_scaler(method, config.num_tasks, seed)
    probs = torch.as_tensor(temperature_probs(config.train_sizes, method.temperature))
    sizes = torch.tensor(config.train_sizes)
    # All tasks' training examples in one tensor, so a batch is one gather.
    all_inputs, all_labels = torch.cat(problem.train.inputs), torch.cat(problem.train.labels)
    starts = torch.cumsum(sizes, dim=0) - sizes
    batch_generator = torch.Generator().manual_seed(_stream_seed(seed, "batches"))
    meta_generator = torch.Generator().manual_seed(_stream_seed(seed, "meta"))
    for _ in range(config.steps):
        tasks = torch.multinomial(probs, config.batch_size, replacement=True, generator=batch_generator)
        within = (torch.rand(config.batch_size, generator=batch_generator, dtype=torch.float64) * sizes[tasks]).long()
        rows = starts[tasks] + within
        grads, train_losses = per_task_gradients(model, all_inputs[rows], all_labels[rows], tasks, config.num_tasks)
        shares = torch.bincount(tasks, minlength=config.num_tasks).double() / config.batch_size
        scales = step_scales(scaler, grads, train_losses, shares, model, problem, config, meta_generator)
        write_gradient(model, scales.to(grads.dtype) @ grads)
        optimizer.step()
    return model, scaler


# ----------------------------------------------------------------------------------------------
# evaluation


def adaptive_trace(loss, params: list[torch.Tensor], samples: int, generator: torch.Generator) -> float:
    """tr(D H D) with D = diag(|theta|), by Hutchinson: the elementwise-adaptive sharpness.

    Rescaling a ReLU unit's input weights by a and its output weights by 1/a leaves the
    function unchanged and D H D too, whereas tr(H) and the top eigenvalue change.
    """
    total = 0.0
    for _ in range(samples):
        probe = [(torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1) * p.detach().abs()
                 for p in params]
        products = hessian_vector_product([loss], params, probe)
        total += float(sum((z * h).sum() for z, h in zip(probe, products)))
    return total / samples


def curvature_of_task(model: SharedTrunkModel, problem: Problem, task: int, config: MechanismConfig,
                      generator: torch.Generator) -> dict[str, float]:
    """Top Hessian eigenvalue and traces of one task's train and test losses (full splits)."""
    params = list(model.parameters())
    train_loss = lambda: task_loss(model, problem.train, task)  # noqa: E731  (closures for the HVPs)
    test_loss = lambda: task_loss(model, problem.test, task)  # noqa: E731
    return {
        "top_eig_train": top_eigenvalue([train_loss], params, config.eig_iterations, generator),
        "top_eig_test": top_eigenvalue([test_loss], params, config.eig_iterations, generator),
        "trace_train": hutchinson_trace([train_loss], params, config.trace_samples, generator),
        "trace_test": hutchinson_trace([test_loss], params, config.trace_samples, generator),
        "adaptive_trace_train": adaptive_trace(train_loss, params, config.trace_samples, generator),
    }


def evaluate(model: SharedTrunkModel, problem: Problem, config: MechanismConfig, seed: int) -> dict[str, Any]:
    """Per-task train, dev and test losses, and the low-resource tasks' curvature."""
    with torch.no_grad():
        losses = {f"{name}_loss": [float(task_loss(model, split, n)) for n in range(config.num_tasks)]
                  for name, split in (("train", problem.train), ("dev", problem.dev), ("test", problem.test))}
    generator = torch.Generator().manual_seed(_stream_seed(seed, "curvature"))
    curvature = {str(n): curvature_of_task(model, problem, n, config, generator) for n in config.low_tasks}
    return {**losses, "curvature": curvature}


def run_one(config: MechanismConfig, name: str, seed: int, problem: Problem,
            base_temperature: float | None = None) -> dict[str, Any]:
    """Train and evaluate one (method, seed); every number the report needs, per task. A method
    without a temperature of its own runs on ``base_temperature``."""
    start = time.perf_counter()
    method = METHODS[name]
    temperature = method.temperature if method.temperature is not None else base_temperature
    if temperature is None:
        raise ValueError(f"method {name}: runs on the base temperature, and none was given")
    model, scaler = train(config, replace(method, temperature=temperature), seed, problem)
    result = {"method": name, "seed": seed, "temperature": temperature, **evaluate(model, problem, config, seed)}
    result["final_scales"] = None if scaler is None else scaler.scales.tolist()
    result["final_lambda"] = None if scaler is None else scaler.lam
    result["seconds"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------
# summaries


CURVATURE_MEASURES = ("top_eig_train", "top_eig_test", "trace_train", "trace_test", "adaptive_trace_train")


def group_means(run: dict[str, Any], config: MechanismConfig) -> dict[str, float]:
    """Per-run scalars: each group's mean train, dev and test loss, the low tasks' mean curvature."""
    high = range(config.num_high_tasks)
    low = config.low_tasks
    means = {f"{group}_{split}": float(np.mean([run[f"{split}_loss"][n] for n in tasks]))
             for group, tasks in (("high", high), ("low", low)) for split in ("train", "dev", "test")}
    for measure in CURVATURE_MEASURES:
        means[measure] = float(np.mean([run["curvature"][str(n)][measure] for n in low]))
    means["low_share"] = low_update_share(run, config)
    return means


def low_update_share(run: dict[str, Any], config: MechanismConfig) -> float:
    """The low-resource tasks' share of the update's weight after the last step: the sampling
    probabilities p (plain training), p_n s_n normalized (scales and the surgery baselines), or the
    weights w normalized (``weights``, ``softmax``). How far a method moved the mixture."""
    probs = torch.as_tensor(temperature_probs(config.train_sizes, run["temperature"]), dtype=torch.float64)
    weight = probs
    if run["final_scales"] is not None:
        scales = torch.tensor(run["final_scales"], dtype=torch.float64)
        method = METHODS[run["method"]]
        on_mean_gradients = (method.scaler == "cats"
                             and method.cats_config().parameterization in MEAN_GRADIENT_PARAMETERIZATIONS)
        weight = scales if on_mean_gradients else probs * scales
    return float(weight[config.low_tasks].sum() / weight.sum())


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def paired_delta(per_seed: dict[str, dict[int, dict]], method: str, reference: str, key: str) -> tuple[float, float]:
    """Mean +- std over seeds of (method - reference) at the same seed; NaN without a reference."""
    if reference not in per_seed:
        return math.nan, math.nan
    seeds = sorted(per_seed[method])
    return _mean_std([per_seed[method][s][key] - per_seed[reference][s][key] for s in seeds])


def per_seed_means(runs: list[dict[str, Any]], config: MechanismConfig) -> dict[str, dict[int, dict]]:
    """method -> seed -> the run's group means, with the run itself under "run"."""
    per_seed: dict[str, dict[int, dict]] = {}
    for run in runs:
        per_seed.setdefault(run["method"], {})[run["seed"]] = {**group_means(run, config), "run": run}
    return per_seed


def base_baseline(per_seed: dict[str, dict[int, dict]]) -> str | None:
    """The temperature baseline with the lowest mean low-resource dev loss: the base temperature,
    chosen on dev (never on test); None when no baseline ran."""
    baselines = [name for name in per_seed if METHODS[name].scaler == "plain"]
    return min(baselines, key=lambda name: np.mean([v["low_dev"] for v in per_seed[name].values()]), default=None)


def summarize(runs: list[dict[str, Any]], config: MechanismConfig) -> dict[str, Any]:
    """Per-method means, stds and paired deltas, the base temperature baseline, and the correlations."""
    per_seed = per_seed_means(runs, config)
    base = base_baseline(per_seed)
    methods = {}
    for name, seeds in per_seed.items():
        row = {key: _mean_std([v[key] for v in seeds.values()])
               for key in ("high_test", "low_test", "low_dev", "low_train", "low_share", *CURVATURE_MEASURES)}
        row["temperature"] = next(iter(seeds.values()))["run"]["temperature"]
        for key in ("high_test", "low_test"):
            row[f"delta_{key}_vs_T1"] = paired_delta(per_seed, name, "T1", key)
            row[f"delta_{key}_vs_base"] = paired_delta(per_seed, name, base, key) if base else (math.nan, math.nan)
        scales = [v["run"]["final_scales"] for v in seeds.values() if v["run"]["final_scales"] is not None]
        row["final_scales"] = np.mean(scales, axis=0).tolist() if scales else None
        methods[name] = row
    all_runs = [v for seeds in per_seed.values() for v in seeds.values()]
    return {"base": base, "methods": methods, "num_runs": len(all_runs),
            "spearman_vs_low_test": correlations(all_runs),
            "spearman_within_seed": within_seed_correlations(per_seed),
            "spearman_base_runs": correlations([v for v in all_runs if base and
                                                v["run"]["temperature"] == methods[base]["temperature"]])}


def correlations(runs: list[dict[str, float]]) -> dict[str, float]:
    """Spearman rho of each measure with the low-resource test loss over the given runs."""
    low_test = [v["low_test"] for v in runs]
    return {key: float(spearmanr([v[key] for v in runs], low_test).statistic)
            for key in ("low_train", *CURVATURE_MEASURES)}


def within_seed_correlations(per_seed: dict[str, dict[int, dict]]) -> dict[str, tuple[float, float]]:
    """Mean +- std over seeds of the Spearman rho across methods at one seed.

    Seeds draw different problems, whose loss levels differ; within a seed only the methods
    differ, which is the question (does the measure rank methods by generalization?).
    """
    seeds = sorted({seed for runs in per_seed.values() for seed in runs})
    per_seed_rho = [correlations([runs[seed] for runs in per_seed.values() if seed in runs]) for seed in seeds]
    return {key: _mean_std([rho[key] for rho in per_seed_rho]) for key in per_seed_rho[0]}


# ----------------------------------------------------------------------------------------------
# report


def _pm(pair: tuple[float, float], digits: int = 3, signed: bool = False) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return f"{mean:+.{digits}f} ± {std:.{digits}f}" if signed else f"{mean:.{digits}f} ± {std:.{digits}f}"


def loss_table(summary: dict[str, Any]) -> str:
    """Test losses (and the low-resource dev loss the base is chosen on) with same-seed deltas vs T1
    and, where another temperature is the base, vs that one too."""
    references = [ref for ref in dict.fromkeys(["T1", summary["base"]]) if ref]
    delta_titles = "".join(f"Δhigh vs {ref} | Δlow vs {ref} | " for ref in references)
    lines = [f"| method | T | high test loss | low test loss | low dev loss | {delta_titles}low share of the update |",
             "|---|" + "---:|" * (5 + 2 * len(references))]
    keys = ["T1" if ref == "T1" else "base" for ref in references]
    for name, row in summary["methods"].items():
        deltas = "".join(f"{_pm(row[f'delta_high_test_vs_{key}'], signed=True)} | "
                         f"{_pm(row[f'delta_low_test_vs_{key}'], signed=True)} | " for key in keys)
        lines.append(f"| {name} | {row['temperature']:g} | {_pm(row['high_test'])} | {_pm(row['low_test'])} | "
                     f"{_pm(row['low_dev'])} | {deltas}{_pm(row['low_share'], 2)} |")
    return "\n".join(lines)


def curvature_table(summary: dict[str, Any]) -> str:
    lines = ["| method | low train loss | low test loss | " + " | ".join(CURVATURE_MEASURES) + " |",
             "|---|" + "---:|" * (2 + len(CURVATURE_MEASURES))]
    for name, row in summary["methods"].items():
        cells = [_pm(row["low_train"]), _pm(row["low_test"])] + [_pm(row[m], 3) for m in CURVATURE_MEASURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def correlation_table(summary: dict[str, Any]) -> str:
    lines = ["| measure (mean over low-resource tasks) | ρ over all runs | ρ across methods within a seed | "
             "ρ over the runs at the base temperature |", "|---|---:|---:|---:|"]
    for key, rho in summary["spearman_vs_low_test"].items():
        label = f"{key} (not a curvature: reference)" if key == "low_train" else key
        lines.append(f"| {label} | {rho:+.3f} | {_pm(summary['spearman_within_seed'][key], 2, signed=True)} | "
                     f"{summary['spearman_base_runs'][key]:+.3f} |")
    return "\n".join(lines)


def _base_text(summary: dict[str, Any]) -> str:
    base = summary["base"]
    if base is None:
        return "No temperature baseline ran, so the other rows ran at T=1."
    return (f"Base temperature (the baseline with the lowest mean low-resource dev loss, chosen on dev): {base}; "
            f"the CATS and surgery rows ran at T={summary['methods'][base]['temperature']:g}.")


def report_markdown(command: str, config: MechanismConfig, seeds: list[int], summary: dict[str, Any],
                    seconds: float) -> str:
    """The whole report.md."""
    return "\n\n".join([
        "# CATS mechanism benchmark",
        f"```\n{command}\n```",
        f"{config.num_high_tasks} high-resource tasks x {config.high_size} and {config.num_low_tasks} low-resource "
        f"x {config.low_size} training examples, task perturbation {config.task_perturbation}, label noise "
        f"{config.label_noise}, {config.steps} Adam steps of "
        f"{config.batch_size} examples, seeds {seeds}, {seconds:.0f} s in all. Test loss is the mean cross-entropy "
        "over each task's test split, averaged over the group; mean ± std over seeds; Δ is the same-seed "
        f"difference (negative: lower loss than the reference). {_base_text(summary)} cats-VARIANT rows "
        "are the named variants of cats_ds/cats/variants.py, with CATSConfig's defaults for the keys a "
        "variant leaves unset and interval 1 unless it sets one; the -train rows take their meta statistics "
        "from the training batch (rows named tuned-* change the knob their name gives, and are not headline "
        "rows). Low share of the update: the low-resource tasks' share of the update's weight after the last "
        "step (the sampling probabilities for the temperature rows), mean ± std over seeds.",
        "## Test loss", loss_table(summary),
        "## Low-resource curvature", "Means over the low-resource tasks; each task's Hessian over all parameters, "
        "of its full train split or full test split. top_eig: power iteration, "
        f"{config.eig_iterations} Hessian-vector products; trace: Hutchinson, {config.trace_samples} probes; "
        "adaptive_trace: tr(D H D), D = diag(|θ|), scale-invariant for the ReLU trunk.",
        curvature_table(summary),
        "## Which measure tracks generalization",
        f"Spearman ρ between each measure and the low-resource test loss, over all {summary['num_runs']} runs "
        "(every method and seed), across methods within each seed (mean ± std over seeds), and over the runs "
        "at the base temperature only (the CATS and surgery rows and their baseline, which one sampling "
        "temperature's overfitting does not separate into clusters).",
        correlation_table(summary),
    ]) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Low- against high-resource test loss per method, with one-std seed error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^v<>pXh*P"
    figure, (everything, at_base) = plt.subplots(1, 2, figsize=(13, 6))
    for index, (name, row) in enumerate(summary["methods"].items()):
        (x, x_std), (y, y_std) = row["high_test"], row["low_test"]
        style = dict(xerr=x_std, yerr=y_std, fmt=markers[index % len(markers)], color=f"C{index % 10}", capsize=3)
        everything.errorbar(x, y, label=name, **style)
        if METHODS[name].scaler != "plain":  # the rows on the base temperature overlap: a zoomed panel
            at_base.errorbar(x, y, **style)
    everything.set_title("all methods (mean ± std over seeds)")
    at_base.set_title("CATS and surgery rows (on the base temperature), zoomed")
    for axes in (everything, at_base):
        axes.set_xlabel("high-resource test loss")
        axes.set_ylabel("low-resource test loss")
    everything.legend(fontsize=7)
    figure.suptitle("CATS mechanism benchmark")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------
# command line


def run_benchmark(config: MechanismConfig, methods: list[str], seeds: list[int], out: Path,
                  command: str) -> dict[str, Any]:
    """Every (method, seed) run, then report.md, results.json and low_vs_high.png under ``out``."""
    start = time.perf_counter()
    problems = {seed: make_problem(config, seed) for seed in seeds}
    baselines = [name for name in methods if METHODS[name].scaler == "plain"]
    others = [name for name in methods if name not in baselines]
    with tqdm(total=len(methods) * len(seeds), desc="mechanism", unit="run") as progress:
        runs = _run_many(config, baselines, problems, None, progress)
        # The baselines have run: the others run on the base temperature, chosen on their dev loss.
        base = base_baseline(per_seed_means(runs, config))
        runs += _run_many(config, others, problems, METHODS[base].temperature if base else 1.0, progress)
    summary = summarize(runs, config)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    report = report_markdown(command, config, seeds, summary, seconds)
    (out / "report.md").write_text(report)
    results = {"command": command, "config": asdict(config), "seeds": seeds, "seconds": seconds,
               "methods": {name: asdict(METHODS[name]) for name in methods}, "summary": summary, "runs": runs}
    (out / "results.json").write_text(json.dumps(_without_nan(results), indent=1))
    plot(summary, out / "low_vs_high.png")
    print(report)
    return results


def _run_many(config: MechanismConfig, names: list[str], problems: dict[int, Problem],
              base_temperature: float | None, progress: tqdm) -> list[dict[str, Any]]:
    runs = []
    for name, seed in product(names, problems):
        runs.append(run_one(config, name, seed, problems[seed], base_temperature))
        progress.update()
    return runs


def _without_nan(value: Any) -> Any:
    """NaN (e.g. a delta without its reference row) as JSON null: NaN is not JSON."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.mechanism", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds: runs seeds 0 .. SEEDS-1")
    parser.add_argument("--steps", type=int, help=f"optimizer steps (default {MechanismConfig.steps})")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(HEADLINE_METHODS),
                        metavar="METHOD", help="some of: " + ", ".join(METHODS) + " (default: all but the tuned-*)")
    parser.add_argument("--out", type=Path, default=Path("runs/mechanism"), help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--problem", choices=list(PROBLEMS), default="default",
                        help="the synthetic problem: default, or tension (upsampling helps the small tasks, "
                             "then overfits them)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long run of every code path")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.threads < 1:
        parser.error("--seeds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    config = replace(MechanismConfig(), **{**PROBLEMS[args.problem], **(QUICK if args.quick else {})})
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    command = "python -m cats_ds.tools.mechanism " + shlex.join(sys.argv[1:] if argv is None else argv)
    return run_benchmark(config, args.methods, list(range(args.seeds)), args.out, command)


if __name__ == "__main__":
    main()
