"""Studies: a sweep of methods over data variants, model sizes, batch sizes and seeds, with a report.

    python -m cats_ds.tools.study run SPEC.yaml --out DIR     # emit, train the missing runs here, curvature, report
    python -m cats_ds.tools.study emit SPEC.yaml --out DIR    # DIR/jobs.txt for launch/slurm/array.sbatch
    python -m cats_ds.tools.study report DIR [--no-curvature] # curvature of finished runs lacking it, DIR/report.md

A study spec is a sweep spec (cats_ds.tools.sweep: jobs, job names, the jobs file, the learning-rate
rule, ``data`` variants, ``seeds``, ``parallel``) plus:

    baselines: [T1, T5, T100]     # methods that are temperature baselines (required)
    tuned: []                     # methods whose overrides were tuned: labelled "tuned" in the report
    curvature:                    # python -m cats_ds.tools.curvature on every finished run
      enabled: true
      iterations: 20              # Hessian-vector products per task (power iteration)
      batches: 2                  # dev batches per task
      batch_sentences: 16
      seed: 0

``run`` skips runs with results.json (a run stopped before it finished resumes from its last
checkpoint), runs ``parallel`` jobs at a time and stops at the first failure with the path of its
log. Curvature (RUN_DIR/curvature.json, log RUN_DIR/curvature.log) is measured once per finished
run, at its last checkpoint, on CPU. ``emit`` and ``run`` copy the spec to DIR/study.yaml, which
``report`` reads.

report.md, per (data variant, model, tokens per step) group: test BLEU per direction and the
high- and low-resource means of BLEU and chrF++ per method, as mean ± sample standard deviation
over the finished seeds; the deltas of the low and high BLEU means against the best temperature
baseline (the baseline with the lowest mean low-resource dev loss in the group: chosen on the dev
sets, not on the test numbers), paired by seed (the seeds both finished); whether the temperature
baselines show the trade-off CATS is meant to resolve (against the lowest temperature, upsampling
helps the low-resource mean and costs the high-resource one, each beyond the seed spread, with
>= 90% distinct outputs); the low- and high-resource dev loss with the same paired deltas, and
the low-resource share of the update (how far a method moved the mixture, from the logged token
shares and scales); the CATS variant issue 14's rule picks on those dev losses, and whether it helps
(the default chosen on the dev sets); the top Hessian eigenvalue and Hessian trace per task and
method (mean over seeds), and the Spearman correlation over runs of their low-resource means
with the low-resource dev loss and BLEU; and plots/{group}_{bleu,scales,curvature}.png. The
"reading" lines only restate these numbers: a delta is "within seed spread" when its absolute
mean is at most the standard deviation of the paired deltas. Nothing here is a significance test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from cats_ds.config import load_config  # noqa: E402
from cats_ds.configio import ConfigError  # noqa: E402
from cats_ds.metrics import read_metrics  # noqa: E402
from cats_ds.model import PRESETS, ModelConfig, estimate_parameters  # noqa: E402
from cats_ds.tools.sweep import (JOBS_FILE, REPO, Job, SweepSpec, add_spec_commands, emit, finished,  # noqa: E402
                                 load_spec, plan_jobs, run, run_all, run_logged)

STUDY_SPEC, STUDY_INFO, REPORT, CURVATURE = "study.yaml", "study.json", "report.md", "curvature.json"


@dataclass
class CurvatureSettings:
    enabled: bool = True
    iterations: int = 20
    batches: int = 2
    batch_sentences: int = 16
    seed: int = 0
    # Hutchinson probes of the dev-loss Hessian trace per task; 0: none. On the mechanism
    # benchmark the held-out trace was the curvature measure that tracked test loss
    trace_samples: int = 0

    def __post_init__(self) -> None:
        for key in ("iterations", "batches", "batch_sentences"):
            if getattr(self, key) < 1:
                raise ValueError(f"curvature.{key}: must be >= 1, got {getattr(self, key)}")
        if self.trace_samples < 0:
            raise ValueError(f"curvature.trace_samples: must be >= 0, got {self.trace_samples}")

    def arguments(self) -> list[str]:
        return ["--iterations", str(self.iterations), "--batches", str(self.batches),
                "--batch-sentences", str(self.batch_sentences), "--seed", str(self.seed),
                "--trace-samples", str(self.trace_samples)]


@dataclass
class StudySpec(SweepSpec):
    baselines: list[str] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)
    curvature: CurvatureSettings = field(default_factory=CurvatureSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.baselines:
            raise ValueError("baselines: name at least one method as a temperature baseline")
        for key in ("baselines", "tuned"):
            for i, name in enumerate(getattr(self, key)):
                if name not in self.methods:
                    raise ValueError(f"{key}[{i}]: {name!r} is not a method; methods: {', '.join(self.methods)}")


def load_study(path: Path) -> StudySpec:
    return load_spec(path, StudySpec)


# ----------------------------------------------------------------------------------------------
# emit, run, curvature


def save_spec(spec_path: Path, out: Path, command: str) -> None:
    """DIR/study.yaml (the spec the jobs come from, read by ``report``) and DIR/study.json."""
    out.mkdir(parents=True, exist_ok=True)
    if spec_path.resolve() != (out / STUDY_SPEC).resolve():
        shutil.copyfile(spec_path, out / STUDY_SPEC)
    info = {"spec": _relative(str(spec_path.resolve())), "command": command, "at": _now()}
    (out / STUDY_INFO).write_text(json.dumps(info, indent=2))


def emit_study(spec_path: Path, out: Path, command: str) -> list[Job]:
    spec = load_study(spec_path)
    save_spec(spec_path, out, command)
    return emit(spec, spec_path, out)


def run_study(spec_path: Path, out: Path, command: str) -> Path:
    """Trains what is missing, measures the curvature of finished runs, writes the report."""
    spec = load_study(spec_path)
    save_spec(spec_path, out, command)
    jobs = run(spec, spec_path, out, desc="study")
    measure_curvature(spec, jobs)
    return write_report(out, command, spec, jobs)


def measure_curvature(spec: StudySpec, jobs: list[Job]) -> None:
    """python -m cats_ds.tools.curvature on every finished run without curvature.json, parallel at a time."""
    if not spec.curvature.enabled:
        return
    pending = [job for job in jobs if finished(job) and not (job.run_dir / CURVATURE).exists()]
    if not pending:
        return
    threads = str(max(1, (os.cpu_count() or 1) // spec.parallel))
    run_all(pending, lambda job: curvature_job(job, spec.curvature, threads), spec.parallel, "curvature")


def curvature_job(job: Job, settings: CurvatureSettings, threads: str) -> str | None:
    log_path = job.run_dir / "curvature.log"
    command = [sys.executable, "-m", "cats_ds.tools.curvature", str(job.run_dir), *settings.arguments()]
    code = run_logged(command, log_path, {"OMP_NUM_THREADS": threads})
    if code != 0 or not (job.run_dir / CURVATURE).exists():
        return f"curvature of {job.name} failed with exit code {code}; see {log_path}"
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


# ----------------------------------------------------------------------------------------------
# what the run directories hold


@dataclass
class RunData:
    job: Job
    results: dict | None                   # results.json; None while unfinished
    curvature: dict | None                 # curvature.json
    record: dict | None                    # the last "run" record of metrics.jsonl (tasks, parameters)
    scales: dict[int, list[float]]         # step -> CATS / surgery scales (last record of each step)
    low_share: float | None                # the low-resource tasks' mean share of the update
    config: dict                           # the run's config.yaml as the trainer saved it; {} before that

    @property
    def status(self) -> str:
        if self.results is not None:
            return "finished"
        return "started, no results.json" if self.record is not None else "not started"


def load_run(job: Job) -> RunData:
    metrics = job.run_dir / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.exists() else []
    run_record = next((r for r in reversed(records) if r["kind"] == "run"), None)
    steps = {r["step"]: r for r in records if r["kind"] == "train"}     # the last record of each step
    scales = {step: r["cats"]["scales"] for step, r in steps.items() if "cats" in r}
    config_path = job.run_dir / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
    return RunData(job, _json(job.run_dir / "results.json"), _json(job.run_dir / CURVATURE), run_record, scales,
                   low_update_share(list(steps.values()), run_record or {}), config)


def low_update_share(steps: list[dict], run_record: dict) -> float | None:
    """How far a method moved the mixture: the low-resource tasks' share of the update's weight,
    sum over them of pi_n s_n over the sum over all tasks (pi: the step's target-token shares, s: the
    CATS or surgery scales, 1 without them; with weights, pi_n s_n is w_n), mean over the logged steps."""
    low = [i for i, task in enumerate(run_record.get("tasks", [])) if task in run_record.get("low_resource", [])]
    shares = []
    for record in steps:
        if low and "token_share" in record:
            weight = np.asarray(record["token_share"]) * np.asarray(record.get("cats", {}).get("scales", 1.0))
            shares.append(float(weight[low].sum() / weight.sum()))
    return statistics.fmean(shares) if shares else None


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class Group:
    """The runs of one data variant, model and batch size: every method and seed."""

    data: str
    model: str
    tokens: int
    runs: list[RunData]

    @property
    def label(self) -> str:
        return "_".join([*([self.data] if self.data else []), self.model, f"t{self.tokens}"])

    def finished(self, method: str) -> dict:
        """seed -> results.json of the method's finished runs."""
        return {r.job.seed: r.results for r in self.runs if r.job.method == method and r.results is not None}

    def curvatures(self, method: str) -> list[dict]:
        return [r.curvature for r in self.runs if r.job.method == method and r.curvature is not None]

    def scales(self, method: str) -> list[dict[int, list[float]]]:
        """step -> scales of the method's finished runs that logged scales."""
        return [r.scales for r in self.runs if r.job.method == method and r.scales and r.results is not None]

    def tasks(self) -> tuple[list[str], set[str]]:
        """Task names in the trainer's order and the low-resource ones, from a run record."""
        record = next((r.record for r in self.runs if r.record), {})
        return record.get("tasks", []), set(record.get("low_resource", []))


def groups_of(runs: list[RunData]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in runs:
        key = (r.job.data, r.job.model, r.job.tokens_per_step)
        groups.setdefault(key, Group(*key, []))
        groups[key].runs.append(r)
    return list(groups.values())


# ----------------------------------------------------------------------------------------------
# numbers


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no deviation for a single value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(values: list[float], signed: bool = False, digits: int = 2) -> str:
    if not values:
        return "—"
    mean, std = mean_std(values)
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def baseline_means(group: Group, baselines: list[str]) -> dict[str, float]:
    """Mean low-resource dev loss over the finished seeds of each baseline that has any."""
    return {b: statistics.fmean(losses) for b in baselines
            if (losses := _values({s: r.get("dev", {}) for s, r in group.finished(b).items()}, "dev_loss_low"))}


def best_baseline(group: Group, baselines: list[str]) -> str | None:
    """The baseline with the lowest mean low-resource dev loss over its finished seeds (first on ties):
    chosen on the dev sets, so the test scores compared against it did not pick it."""
    means = baseline_means(group, baselines)
    return min(means, key=means.get) if means else None


def _values(by_seed: dict, key: str) -> list[float]:
    return [results[key] for results in by_seed.values() if key in results]


def paired_deltas(method: dict, baseline: dict, key: str) -> list[float]:
    """method - baseline for every seed both finished."""
    return [method[s][key] - baseline[s][key] for s in method if s in baseline and key in method[s]
            and key in baseline[s]]


def spread_verdict(deltas: list[float]) -> str:
    if len(deltas) < 2:
        return "one seed: no spread to compare with"
    mean, std = mean_std(deltas)
    if abs(mean) <= std:
        return "within seed spread"
    return "larger than the seed spread (std of the paired deltas; not a significance test)"


# ----------------------------------------------------------------------------------------------
# tables


def method_order(spec: StudySpec) -> list[str]:
    """Headline methods (documented defaults) first, tuned ones after."""
    return [m for m in spec.methods if m not in spec.tuned] + [m for m in spec.methods if m in spec.tuned]


def method_label(spec: StudySpec, method: str, best: str | None) -> str:
    tags = ["best T baseline" if method == best else "", "tuned" if method in spec.tuned else ""]
    return method + "".join(f" ({t})" for t in tags if t)


def directions_of(group: Group) -> tuple[list[str], set[str]]:
    """Test directions in the trainer's order, and the low-resource ones."""
    names: dict[str, None] = {}
    low: set[str] = set()
    for r in group.runs:
        if r.results is not None:
            names.update(dict.fromkeys(r.results["test"]))
            low.update(r.results.get("low_resource_directions", []))
    return list(names), low


def bleu_table(group: Group, spec: StudySpec) -> list[str]:
    directions, low = directions_of(group)
    best = best_baseline(group, spec.baselines)
    lines = ["| method | seeds | " + " | ".join(d + (" (low)" if d in low else "") for d in directions)
             + " | BLEU high | BLEU low | chrF++ high | chrF++ low | lowest distinct | Δ BLEU low vs best T "
             "| Δ BLEU high vs best T |", "|---|---:|" + "---:|" * (len(directions) + 7)]
    for method in method_order(spec):
        runs = group.finished(method)
        per_direction = [_mean_cell([r["test"][d]["bleu"] for r in runs.values() if d in r["test"]], ".2f")
                         for d in directions]
        lines.append("| " + " | ".join([method_label(spec, method, best), str(len(runs)), *per_direction,
                                        *(fmt(_values(runs, k)) for k in ("bleu_high", "bleu_low", "chrf_high",
                                                                          "chrf_low")),
                                        _lowest_distinct(runs), *_delta_cells(group, method, best)]) + " |")
    return lines


def _lowest_distinct(runs: dict) -> str:
    """Mean over seeds of the lowest share of distinct test outputs over directions."""
    lows = [min(d["distinct"] for d in r["test"].values()) for r in runs.values() if r["test"]]
    return f"{100 * statistics.fmean(lows):.0f}%" if lows else "—"


def _delta_cells(group: Group, method: str, best: str | None) -> list[str]:
    if best is None:
        return ["no baseline finished"] * 2
    if method == best:
        return ["(reference)"] * 2
    return [fmt(paired_deltas(group.finished(method), group.finished(best), key), signed=True)
            for key in ("bleu_low", "bleu_high")]


DEV_LOSSES = ("dev_loss_low", "dev_loss_high")


def dev_by_seed(group: Group, method: str) -> dict[int, dict]:
    """seed -> the dev losses at the evaluated checkpoint of the method's finished runs: the
    low-resource mean as the trainer wrote it, and the high-resource mean over its other tasks."""
    tasks, low = group.tasks()
    high = [i for i, task in enumerate(tasks) if task not in low]
    dev = {}
    for seed, results in group.finished(method).items():
        if "dev" not in results:
            continue
        dev[seed] = {"dev_loss_low": results["dev"]["dev_loss_low"]}
        if high and "task_dev_loss" in results["dev"]:
            dev[seed]["dev_loss_high"] = statistics.fmean(results["dev"]["task_dev_loss"][i] for i in high)
    return dev


def dev_loss_table(group: Group, spec: StudySpec) -> list[str]:
    """Dev loss at the evaluated checkpoint (mean over tasks of each task's per-token loss): it moves
    before BLEU does, so it still separates methods while the models barely use the source."""
    best = best_baseline(group, spec.baselines)
    dev = {m: dev_by_seed(group, m) for m in method_order(spec)}
    lines = ["| method | seeds | dev loss low | dev loss high | Δ dev loss low vs best T | Δ dev loss high vs best T "
             "| low share of the update |", "|---|---:|---:|---:|---:|---:|---:|"]
    for method, by_seed in dev.items():
        if best is None or method == best:
            deltas = ["no baseline finished" if best is None else "(reference)"] * 2
        else:
            deltas = [fmt(paired_deltas(by_seed, dev[best], key), signed=True, digits=3) for key in DEV_LOSSES]
        low_shares = [100 * r.low_share for r in group.runs
                      if r.job.method == method and r.results is not None and r.low_share is not None]
        lines.append("| " + " | ".join([method_label(spec, method, best), str(len(by_seed)),
                                        *(fmt(_values(by_seed, key), digits=3) for key in DEV_LOSSES), *deltas,
                                        fmt(low_shares, digits=1) + ("%" if low_shares else "")]) + " |")
    return lines


def default_choice(group: Group, spec: StudySpec) -> list[str]:
    """Issue 14's rule, applied on the dev sets (never on test scores): of the methods that are neither
    temperature baselines nor tuned and have 2 or more seeds paired with the best temperature baseline,
    those whose high-resource dev loss does not rise beyond its seed spread are admissible, and the
    admissible CATS variant with the lowest mean low-resource dev loss is chosen (PCGrad and MGDA are
    listed beside the variants, not chosen: the default is a ``cats.variant``). Whether it beats the
    baseline is said beside it: where no variant helps, the rule still names the one that costs least."""
    best = best_baseline(group, spec.baselines)
    candidates = [m for m in method_order(spec) if m not in spec.baselines and m not in spec.tuned]
    if not candidates:
        return ["- No untuned method but the temperature baselines in this study: nothing to choose."]
    if best is None:
        return ["- No temperature baseline has finished in this group: nothing to compare with."]
    reference = dev_by_seed(group, best)
    admissible, excluded, too_few_seeds = {}, {}, []
    for method in candidates:
        low, high = (paired_deltas(dev_by_seed(group, method), reference, key) for key in DEV_LOSSES)
        if len(low) < 2:
            too_few_seeds.append(method)
        elif _beyond_spread(high):
            excluded[method] = high
        else:
            admissible[method] = low
    by_gain = sorted(admissible, key=lambda m: statistics.fmean(admissible[m]))
    lines = [f"- Admissible (the high-resource dev loss does not rise beyond its seed spread), by Δ low-resource "
             f"dev loss against {best}: " + (", ".join(f"{m} ({fmt(admissible[m], True, 3)})" for m in by_gain)
                                             or "none") + "."]
    if excluded:
        lines.append("- Excluded (the high-resource dev loss rises beyond its seed spread): "
                     + ", ".join(f"{m} (high {fmt(d, True, 3)})" for m, d in excluded.items()) + ".")
    if too_few_seeds:
        lines.append(f"- Not counted yet (fewer than 2 seeds paired with {best}): {', '.join(too_few_seeds)}.")
    chosen = next((m for m in by_gain if trains_cats(group, m)), None)
    heading = "- Chosen on dev (of the CATS variants)" + (" so far" if too_few_seeds else "")
    if chosen is None:
        return lines + [f"{heading}: none."]
    return lines + [f"{heading}: {chosen}; {_helps(admissible[chosen], best)}."]


def trains_cats(group: Group, method: str) -> bool:
    """Whether ``method``'s runs train with CATS itself (cats.enabled and cats.method cats, the
    default) rather than plain sampling or a surgery method (PCGrad, MGDA): from a run's config.yaml."""
    for run_data in group.runs:
        if run_data.job.method == method and run_data.config:
            cats = run_data.config.get("cats", {})
            return bool(cats.get("enabled")) and cats.get("method", "cats") == "cats"
    return False


def _helps(low_deltas: list[float], best: str) -> str:
    """Whether the chosen variant's low-resource dev-loss deltas against ``best`` are a gain."""
    if _beyond_spread([-d for d in low_deltas]):
        return f"it lowers the low-resource dev loss against {best} beyond the seed spread"
    if _beyond_spread(low_deltas):
        return (f"no CATS variant helps: even this one raises the low-resource dev loss against {best} beyond the "
                "seed spread")
    return f"no CATS variant helps: this one's low-resource dev loss is within the seed spread of {best}'s"


CURVATURE_MEASURES = {"top_eigenvalue": "top Hessian eigenvalue", "hessian_trace": "Hessian trace (Hutchinson)"}


def curvature_table(group: Group, spec: StudySpec, key: str) -> list[str]:
    """One curvature measure (a key of CURVATURE_MEASURES) per task and method, means over seeds."""
    measured = [r.curvature for r in group.runs if r.curvature]
    if not measured:
        return ["No curvature measured yet."]
    if not any(key in entry for c in measured for entry in c["tasks"].values()):
        return [f"Not measured ({key})."]
    tasks, low = list(measured[0]["tasks"]), set(measured[0].get("low_resource", []))
    lines = ["| method | seeds | " + " | ".join(t + (" (low)" if t in low else "") for t in tasks)
             + " | mean high | mean low |", "|---|---:|" + "---:|" * (len(tasks) + 2)]
    for method in method_order(spec):
        runs = group.curvatures(method)
        cells = [_mean_cell([c["tasks"][t].get(key, math.nan) for c in runs if t in c["tasks"]]) for t in tasks]
        means = [_mean_cell([_task_mean(c, [t for t in tasks if (t in low) == is_low], key) for c in runs])
                 for is_low in (False, True)]
        lines.append("| " + " | ".join([method_label(spec, method, None), str(len(runs)), *cells, *means]) + " |")
    return lines


def curvature_correlations(group: Group) -> list[str]:
    """Spearman rho over runs between each curvature measure (mean over the low-resource tasks) and
    the run's low-resource dev loss and test BLEU: whether flatter goes with better at this size."""
    runs = [r for r in group.runs if r.results and r.curvature and "dev_loss_low" in r.results.get("dev", {})]
    if len(runs) < 3:
        return [f"Rank correlations need 3 runs with curvature and results; {len(runs)} have both."]
    dev, bleu = [r.results["dev"]["dev_loss_low"] for r in runs], [r.results["bleu_low"] for r in runs]
    lines = [f"Spearman ρ over the {len(runs)} runs with both (every method and seed), low-resource means; "
             "a positive ρ with dev loss means the sharper runs generalize worse, as the flat-minima argument "
             "predicts:", ""]
    for key, title in CURVATURE_MEASURES.items():
        low = [_task_mean(r.curvature, r.curvature.get("low_resource", []), key) for r in runs]
        if any(math.isnan(v) for v in low):
            lines.append(f"- {title}: not measured in every run.")
            continue
        lines.append(f"- {title}: ρ {spearmanr(low, dev).statistic:+.2f} with low-resource dev loss, "
                     f"{spearmanr(low, bleu).statistic:+.2f} with low-resource test BLEU.")
    return lines


def _task_mean(curvature: dict, tasks: list[str], key: str) -> float:
    """The run's mean of measure ``key`` over ``tasks`` (nan for none)."""
    values = [curvature["tasks"][t].get(key, math.nan) for t in tasks if t in curvature["tasks"]]
    return statistics.fmean(values) if values else float("nan")


def _mean_cell(values: list[float], spec: str = ".4g") -> str:
    values = [v for v in values if v == v]          # nan: no task in that group
    return format(statistics.fmean(values), spec) if values else "—"


def reading(group: Group, spec: StudySpec) -> list[str]:
    """Facts computed from the table: the baseline choice and each method's deltas with their spread."""
    best = best_baseline(group, spec.baselines)
    if best is None:
        return ["- No temperature baseline has finished in this group: no deltas."]
    means = baseline_means(group, spec.baselines)
    lines = [f"- Best temperature baseline: {best} (mean low-resource dev loss "
             + ", ".join(f"{b} {m:.3f}" for b, m in means.items()) + "; chosen on the dev sets)."]
    for method in method_order(spec):
        if method == best:
            continue
        low = paired_deltas(group.finished(method), group.finished(best), "bleu_low")
        high = paired_deltas(group.finished(method), group.finished(best), "bleu_high")
        if not low:
            lines.append(f"- {method}: no seed finished for both it and {best}.")
            continue
        lines.append(f"- {method_label(spec, method, None)} low-resource BLEU delta vs best temperature baseline "
                     f"({best}): {fmt(low, signed=True)} over {len(low)} seed(s): {spread_verdict(low)}; "
                     f"high-resource: {fmt(high, signed=True)}: {spread_verdict(high)}.")
    return lines


def temperature_tradeoff(group: Group, spec: StudySpec) -> list[str]:
    """The trade-off CATS is meant to resolve (issue 14; docs/results/tension_search): against the
    lowest-temperature baseline, does upsampling help the low-resource BLEU mean and cost the
    high-resource one, each by more than the seed spread, in runs that use the source?"""
    temperatures = {b: _temperature(group, b) for b in spec.baselines if group.finished(b)}
    if len(temperatures) < 2:
        return ["- Needs two temperature baselines with finished runs."]
    base = min(temperatures, key=temperatures.get)
    lines = [f"Paired by seed against {base} (the lowest temperature). \"Δ low\" is the baseline minus {base} on "
             f"the low-resource BLEU mean, \"Δ high\" is {base} minus the baseline on the high-resource one: "
             "positive on both is the trade-off.", "",
             "| baseline | seeds | Δ low | Δ high | lowest distinct |", "|---|---:|---:|---:|---:|"]
    helps, costs = [], []
    for other in sorted(temperatures, key=temperatures.get)[1:]:
        low = paired_deltas(group.finished(other), group.finished(base), "bleu_low")
        high = paired_deltas(group.finished(base), group.finished(other), "bleu_high")
        helps += [other] if _beyond_spread(low) else []
        costs += [other] if _beyond_spread(high) else []
        lines.append(f"| {other} | {len(low)} | {fmt(low, signed=True)} | {fmt(high, signed=True)} | "
                     f"{_lowest_distinct(group.finished(other))} |")
    runs = [r for b in temperatures for r in group.finished(b).values() if r["test"]]
    uses_source = all(min(d["distinct"] for d in r["test"].values()) >= 0.9 for r in runs)
    lines += ["", f"- Upsampling helps the low-resource mean beyond the spread: {', '.join(helps) or 'no baseline'}; "
              f"costs the high-resource mean beyond the spread: {', '.join(costs) or 'no baseline'}; every "
              f"baseline run has at least 90% distinct outputs in every direction: {'yes' if uses_source else 'no'}.",
              f"- Trade-off shown: {'yes' if helps and costs and uses_source else 'no'}."]
    return lines


def _temperature(group: Group, method: str) -> float:
    job = next(r.job for r in group.runs if r.job.method == method)
    return load_config(Path(job.config), job.overrides).sampling.temperature


def _beyond_spread(deltas: list[float]) -> bool:
    """At least two seeds and a positive mean larger than the std of the paired deltas."""
    if len(deltas) < 2:
        return False
    mean, std = mean_std(deltas)
    return mean > std


# ----------------------------------------------------------------------------------------------
# plots


def plot_group(group: Group, spec: StudySpec, out_dir: Path) -> list[Path]:
    out_dir.mkdir(exist_ok=True)
    written = []
    directions, low = directions_of(group)
    methods = [m for m in method_order(spec) if group.finished(m)]
    if methods:
        series = {m: _mean_stds([[r["test"][d]["bleu"] for r in group.finished(m).values() if d in r["test"]]
                                 for d in directions]) for m in methods}
        written.append(grouped_bars(out_dir / f"{group.label}_bleu.png", _mark_low(directions, low), series,
                                    "test BLEU (mean over seeds, error bar: std)", group.label))
    measured = [m for m in method_order(spec) if group.curvatures(m)]
    if measured:
        tasks = list(group.curvatures(measured[0])[0]["tasks"])
        series = {m: _mean_stds([[c["tasks"][t]["top_eigenvalue"] for c in group.curvatures(m) if t in c["tasks"]]
                                 for t in tasks]) for m in measured}
        written.append(grouped_bars(out_dir / f"{group.label}_curvature.png", tasks, series,
                                    "top Hessian eigenvalue of the dev loss (mean over seeds)", group.label))
    with_scales = [m for m in method_order(spec) if group.scales(m)]
    if with_scales:
        written.append(plot_scales(out_dir / f"{group.label}_scales.png", group, with_scales))
    return written


def _mean_stds(values: list[list[float]]) -> tuple[list[float], list[float]]:
    stats = [mean_std(v) if v else (float("nan"), None) for v in values]
    return [m for m, _ in stats], [s or 0.0 for _, s in stats]


def _mark_low(names: list[str], low: set[str]) -> list[str]:
    return [n + " (low)" if n in low else n for n in names]


def grouped_bars(path: Path, categories: list[str], series: dict[str, tuple[list[float], list[float]]],
                 ylabel: str, title: str) -> Path:
    """One group of bars per category, one bar per series, standard deviations as error bars."""
    fig, ax = plt.subplots(figsize=(max(8.0, 0.25 * len(categories) * len(series) + 2), 4.5))
    width = 0.8 / len(series)
    x = np.arange(len(categories))
    for i, (name, (means, stds)) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(x, categories, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    return _save(fig, path)


def plot_scales(path: Path, group: Group, methods: list[str]) -> Path:
    """One panel per method: the scales over training, a line per task, mean over seeds at the
    steps every seed logged."""
    fig, axes = plt.subplots(len(methods), 1, figsize=(8, 2.8 * len(methods)), squeeze=False, sharex=True)
    names = _mark_low(*group.tasks())
    for ax, method in zip(axes[:, 0], methods):
        runs = group.scales(method)
        steps = sorted(set.intersection(*(set(s) for s in runs)))
        values = np.mean([[run[step] for step in steps] for run in runs], axis=0)
        for column in range(values.shape[1] if values.ndim == 2 else 0):
            label = names[column] if column < len(names) else f"task {column}"
            ax.plot(steps, values[:, column], linewidth=1.1, label=label)
        ax.set_title(f"{method}: task scales s_n (mean over {len(runs)} seed(s))", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("optimizer step")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# report.md


def write_report(out: Path, command: str, spec: StudySpec | None = None, jobs: list[Job] | None = None) -> Path:
    """DIR/report.md and DIR/plots/*.png from whatever has finished."""
    if spec is None or jobs is None:
        spec, jobs = load_study_dir(out)
    runs = [load_run(job) for job in jobs]
    sections = []
    for group in groups_of(runs):
        plots = plot_group(group, spec, out / "plots")
        sections += group_section(group, spec, out, plots)
    text = "\n".join([*header(out, command, spec, jobs, runs), *limits(spec, runs), *sections]) + "\n"
    (out / REPORT).write_text(text)
    return out / REPORT


def load_study_dir(out: Path) -> tuple[StudySpec, list[Job]]:
    spec_path = out / STUDY_SPEC
    if not spec_path.exists():
        raise ConfigError(f"{spec_path} not found: emit or run the study into {out} first")
    spec = load_study(spec_path)
    return spec, plan_jobs(spec, spec_path, out)


def header(out: Path, command: str, spec: StudySpec, jobs: list[Job], runs: list[RunData]) -> list[str]:
    info = _json(out / STUDY_INFO) or {}
    unfinished = [r for r in runs if r.results is None]
    lines = [f"# Study report: {out.name}", "",
             f"Written {_now()} by `{command}`.", "",
             f"Spec: `{info.get('spec', '?')}` (copied to `{STUDY_SPEC}`); the runs were emitted or run by "
             f"`{info.get('command', '?')}` ({info.get('at', '?')}).", "",
             "## What was run", "", *what_was_run(spec, jobs, runs), "",
             f"Runs: {len(runs) - len(unfinished)} of {len(runs)} finished."]
    if unfinished:
        lines += ["", "Unfinished runs (left out of every number below):", "",
                  *(f"- {r.job.name}: {r.status}" for r in unfinished)]
    return lines + [""]


def what_was_run(spec: StudySpec, jobs: list[Job], runs: list[RunData]) -> list[str]:
    configs = [load_config(Path(job.config), job.overrides) for job in jobs]
    steps = sorted({r.results["step"] for r in runs if r.results})
    sentences = sorted({d["sentences"] for r in runs if r.results for d in r.results["test"].values()
                        if "sentences" in d})
    return [f"- Base config: `{_relative(jobs[0].config)}`; common overrides: {_code(spec.overrides)}",
            "- Data variants: " + ("; ".join(f"{name}: {_code(o)}" for name, o in spec.data.items()) or
                                    f"the base config's (data.preset={configs[0].data.preset}, "
                                    f"data.direction={configs[0].data.direction})"),
            "- Models: " + "; ".join([*(_preset_line(p, configs, runs) for p in spec.presets),
                                      *(_pretrained_line(name, checkpoint, runs)
                                        for name, checkpoint in spec.pretrained.items())]),
            "- Tokens per step: " + "; ".join(sorted({f"{j.tokens_per_step} (optim.lr={j.lr:g})" for j in jobs},
                                                     key=lambda s: int(s.split()[0])))
            + f"; learning-rate rule `{spec.lr_rule}` (cats_ds.tools.sweep)",
            f"- Steps: train.max_steps={_set(c.train.max_steps for c in configs)}, "
            f"train.max_minutes={_set(c.train.max_minutes for c in configs)}; finished runs stopped at step(s) "
            f"{', '.join(map(str, steps)) or '—'}; test sentences per direction: "
            f"{', '.join(map(str, sentences)) or '—'}",
            f"- Seeds (train.seed): {', '.join(map(str, spec.seeds)) if spec.seeds else configs[0].train.seed}",
            "- Methods: " + "; ".join(f"{m}{' [temperature baseline]' if m in spec.baselines else ''}"
                                      f"{' [tuned]' if m in spec.tuned else ''}: {_code(o)}"
                                      for m, o in spec.methods.items()),
            f"- Curvature: {_curvature_line(spec.curvature, runs)}",
            f"- Processes per run: {spec.processes or 'launch/train.sh default'}; runs at a time: {spec.parallel}"]


def _preset_line(preset: str, configs, runs: list[RunData]) -> str:
    d, enc, dec, heads, ffn = PRESETS[preset]
    params = _parameters_of_runs(preset, runs)
    if not params:
        vocab = next(c.data.vocab_size for c in configs if c.model.preset == preset)
        params = f"≈{estimate_parameters(ModelConfig(preset), vocab):,} parameters (estimated: no run started)"
    return f"{preset} (d_model {d}, layers {enc}+{dec}, heads {heads}, ffn {ffn}): {params}"


def _pretrained_line(name: str, checkpoint: str, runs: list[RunData]) -> str:
    return f"{name} (fine-tuned from `{checkpoint}`): {_parameters_of_runs(name, runs) or 'no run started'}"


def _parameters_of_runs(model: str, runs: list[RunData]) -> str:
    """The parameter counts the model's run records state, '' before any run started."""
    counts = sorted({r.record["parameters"] for r in runs if r.record and r.job.model == model})
    if not counts:
        return ""
    return f"{counts[0]:,}" + (f" to {counts[-1]:,}" if len(counts) > 1 else "") + " parameters"


def _curvature_line(settings: CurvatureSettings, runs: list[RunData]) -> str:
    if not settings.enabled:
        return "not measured (curvature.enabled: false)"
    found = sorted({(c["iterations"], c["batches"], c["batch_sentences"], c["seed"], c["tag"])
                    for r in runs if (c := r.curvature)})
    line = (f"top Hessian eigenvalue of each task's dev loss at the last checkpoint, {settings.iterations} "
            f"power iterations on {settings.batches} x {settings.batch_sentences} dev sentences, seed {settings.seed}"
            + (f"; Hessian trace by Hutchinson with {settings.trace_samples} probes" if settings.trace_samples else ""))
    other = [f for f in found if f[:4] != (settings.iterations, settings.batches, settings.batch_sentences,
                                           settings.seed)]
    return line + (f"; some curvature.json files were measured with other settings: {other}" if other else "")


def limits(spec: StudySpec, runs: list[RunData]) -> list[str]:
    seeds = len(spec.seeds) or 1
    best_note = [
        "- Some runs evaluated dev loss during training and kept the best checkpoint: their test scores "
        "may come from an earlier checkpoint than the last one, where curvature is measured."
    ] if any(_keeps_best(r) for r in runs) else []
    return ["## What this shows and what it does not", "",
            f"- Numbers are test-set scores of the runs listed above, at this size and step count only; "
            f"each cell is a mean over the finished seeds (at most {seeds}), ± the sample standard deviation "
            "over seeds (none shown with one seed).",
            "- Deltas are paired by seed against the best temperature baseline of the same group: the one with "
            "the lowest low-resource dev loss, picked on the dev sets, not on these test numbers.",
            f"- With {seeds} seed(s) the spread itself is a rough estimate; no significance test is made, and "
            "\"within seed spread\" means |mean delta| <= std of the paired deltas, nothing more.",
            "- Rows not labelled (tuned) use the base config's documented defaults plus the overrides listed; "
            "rows labelled (tuned) have settings chosen after looking at results.",
            "- \"lowest distinct\" is the lowest share of distinct test outputs over the directions (mean over "
            "seeds); below about 90% the model barely uses the source, and BLEU differences then mostly measure "
            "the target-side language model and the most frequent outputs.",
            "- Curvature is a power-iteration estimate of one eigenvalue on a few dev batches; it is comparable "
            "across methods only at the same settings.",
            *best_note, ""]


def _keeps_best(r: RunData) -> bool:
    if r.results is None or not r.config:
        return False
    return bool(r.config.get("eval", {}).get("every_steps")) and bool(r.config.get("train", {}).get("keep_best", True))


def group_section(group: Group, spec: StudySpec, out: Path, plots: list[Path]) -> list[str]:
    title = ", ".join([*([f"data {group.data}"] if group.data else []), f"model {group.model}",
                       f"{group.tokens} tokens/step"])
    if not any(r.results for r in group.runs):
        return [f"## {title}", "", "No finished run in this group yet.", ""]
    return [f"## {title}", "", "### Test BLEU and chrF++", "",
            "Per-direction cells: mean BLEU over seeds; group means: mean ± std over seeds; deltas: paired by "
            "seed, mean ± std.", "", *bleu_table(group, spec), "", "### Reading (computed from the table)", "",
            *reading(group, spec), "",
            "### Temperature trade-off", "", *temperature_tradeoff(group, spec), "",
            "### Dev loss (per-token cross-entropy, mean over tasks; deltas paired by seed)", "",
            *dev_loss_table(group, spec), "",
            "### The default chosen on the dev sets", "", *default_choice(group, spec), "",
            *(line for key, title in CURVATURE_MEASURES.items()
              for line in [f"### Curvature: {title} of each task's dev loss (mean over seeds)", "",
                           *curvature_table(group, spec, key), ""]),
            "### Curvature against generalization", "", *curvature_correlations(group), "",
            "### Plots", "",
            *(f"![{p.stem}]({p.relative_to(out)})" for p in plots), ""]


def _code(overrides: list[str]) -> str:
    return " ".join(f"`{o}`" for o in overrides) or "none"


def _set(values) -> str:
    return ", ".join(str(v) for v in sorted(set(values)))


def _relative(path: str) -> str:
    return str(Path(path).relative_to(REPO)) if Path(path).is_relative_to(REPO) else path


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_spec_commands(commands, "study")
    report = commands.add_parser("report")
    report.add_argument("out", type=Path)
    report.add_argument("--no-curvature", action="store_true", help="do not measure missing curvature first")
    args = parser.parse_args(argv)
    command = "python -m cats_ds.tools.study " + shlex.join(argv)
    try:
        _dispatch(args, command)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None


def _dispatch(args, command: str) -> None:
    if args.command == "emit":
        jobs = emit_study(args.spec, args.out, command)
        print(f"{len(jobs)} jobs in {args.out / JOBS_FILE}\nslurm: sbatch --array=0-{len(jobs) - 1}%4 "
              f"launch/slurm/array.sbatch {args.out / JOBS_FILE}\n"
              f"then: python -m cats_ds.tools.study report {args.out}")
    elif args.command == "run":
        print(f"report: {run_study(args.spec, args.out, command)}")
    else:
        spec, jobs = load_study_dir(args.out)
        if not args.no_curvature:
            measure_curvature(spec, jobs)
        print(f"report: {write_report(args.out, command, spec, jobs)}")


if __name__ == "__main__":
    main()
