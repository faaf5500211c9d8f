"""Scaling sweeps: a spec -> a jobs file, local runs of it, and a results table with plots.

    python -m cats_ds.tools.sweep emit SPEC.yaml --out DIR     # DIR/jobs.txt, one job a line: CONFIG.yaml key=value ...
    python -m cats_ds.tools.sweep run SPEC.yaml --out DIR      # emit, then run the jobs here (``parallel`` at a time)
    python -m cats_ds.tools.sweep collect DIR                  # DIR/results.md and DIR/plots/*.png

A job is every combination of ``data`` x models x ``tokens_per_step`` x ``seeds`` x
``methods``, the models being ``presets`` and ``pretrained`` checkpoints together; job
``[{data}_]{model}_t{tokens}_{method}[_s{seed}]`` trains in DIR/{name}: the
``{data}_`` prefix only when the spec has ``data`` variants, the ``_s{seed}`` suffix only when
it has ``seeds`` (so a spec without either keeps the names ``{model}_t{tokens}_{method}``).
Each jobs-file line is the base config followed by the overrides ``overrides`` (common), the
data variant's, the method's, then ``model.preset`` or ``model.pretrained``, ``sampling.tokens_per_step``,
``optim.lr``, ``train.seed`` (with ``seeds``) and ``train.run_dir``; launch/slurm/array.sbatch
runs line i+1 in array task i through launch/train.sh, and ``run`` runs the same lines
(launch/train.sh, or ``python -m cats_ds.train`` for ``processes: 1``), skipping jobs whose
results.json exists; a job stopped before it finished resumes from its last checkpoint.

Learning-rate rule for the batch size (``lr_rule``): optim.lr = base_lr x (tokens_per_step /
base_tokens_per_step)^e with e = 0.5 for ``sqrt`` (square-root scaling, the usual rule for
Adam), 1 for ``linear``, 0 for ``none``; base_lr and base_tokens_per_step default to the base
config's optim.lr and sampling.tokens_per_step (after the common overrides).

Spec keys (a YAML mapping; unknown keys and bad values are errors naming the key):

    base_config: cats_ds/configs/bible8_cpu.yaml   # path relative to the repository root, or absolute
    presets: [tiny, cpu]                           # cats_ds.model presets trained from scratch
    pretrained: {}                                 # name -> checkpoint (hub id or directory) to fine-tune,
                                                   #   e.g. {base: runs/base/export}; presets, pretrained
                                                   #   or both (the model axis is the two together)
    tokens_per_step: [800, 1600]
    methods: {plain: [cats.enabled=false], cats: [cats.enabled=true]}   # name -> overrides (the default)
    data: {}                                       # variant name -> overrides, e.g.
                                                   #   {diverse_en2x: [data.preset=bible8-diverse, data.direction=en2x]}
                                                   # {} (the default): the base config's data, no name prefix
    seeds: []                                      # train.seed of each job; [] (the default): the config's seed
    lr_rule: sqrt                                  # sqrt | linear | none
    base_lr: 0                                     # 0: the base config's optim.lr
    base_tokens_per_step: 0                        # 0: the base config's sampling.tokens_per_step
    overrides: [train.max_steps=30]                # for every job
    processes: 0                                   # for `run`: 0 launch/train.sh's default, 1 no launcher, n: -n n
    parallel: 1                                    # for `run`: jobs at a time (e.g. 2 one-process, one-thread
                                                   # jobs with train.threads=1 on 2 cores)

``collect`` reads every DIR/*/config.yaml with its results.json (final dev loss, test BLEU)
and metrics.jsonl (parameters, last train loss, tokens/s); runs without results.json are
listed as unfinished and left out of the plots.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cats_ds.config import RunConfig, load_config  # noqa: E402
from cats_ds.configio import ConfigError, from_dict, load_yaml  # noqa: E402
from cats_ds.distributed import free_port  # noqa: E402
from cats_ds.metrics import read_metrics  # noqa: E402
from cats_ds.model import ARCHITECTURE_KEYS, PRESETS, ModelConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LR_EXPONENTS = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}
SWEEP_KEYS = ("model.preset", "model.pretrained", "sampling.tokens_per_step", "optim.lr", "train.run_dir")  # set per job
SEED_KEY = "train.seed"                                     # set per job where the spec has seeds
JOBS_FILE, JOB_INFO, RESULTS_TABLE = "jobs.txt", "sweep.json", "results.md"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class SweepSpec:
    base_config: str
    tokens_per_step: list[int]
    presets: list[str] = field(default_factory=list)
    pretrained: dict[str, str] = field(default_factory=dict)
    methods: dict[str, list[str]] = field(
        default_factory=lambda: {"plain": ["cats.enabled=false"], "cats": ["cats.enabled=true"]})
    lr_rule: Literal["sqrt", "linear", "none"] = "sqrt"
    base_lr: float = 0.0
    base_tokens_per_step: int = 0
    overrides: list[str] = field(default_factory=list)
    processes: int = 0
    seeds: list[int] = field(default_factory=list)
    data: dict[str, list[str]] = field(default_factory=dict)
    parallel: int = 1

    def __post_init__(self) -> None:
        if not self.presets and not self.pretrained:
            raise ValueError("presets, pretrained: at least one model is needed (a preset or a checkpoint)")
        if self.presets:
            _check_list("presets", self.presets)
        for i, preset in enumerate(self.presets):
            if preset not in PRESETS:
                raise ValueError(f"presets[{i}]: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        for name, checkpoint in self.pretrained.items():
            if not _NAME.match(name) or name in self.presets:
                raise ValueError(f"pretrained.{name}: a name holds only letters, digits, '_', '.', '-' and is "
                                 "not also a preset's")
            if not checkpoint or any(c.isspace() for c in checkpoint):
                raise ValueError(f"pretrained.{name}: {checkpoint!r} is not a hub id or a path without spaces")
        _check_list("tokens_per_step", self.tokens_per_step)
        if min(self.tokens_per_step) < 1:
            raise ValueError(f"tokens_per_step: values must be >= 1, got {self.tokens_per_step}")
        if not self.methods:
            raise ValueError("methods: at least one method (name -> overrides) is needed")
        reserved = SWEEP_KEYS + ((SEED_KEY,) if self.seeds else ())
        for key, variants in (("methods", self.methods), ("data", self.data)):
            for name, overrides in variants.items():
                if not _NAME.match(name):
                    raise ValueError(f"{key}.{name}: a name may hold only letters, digits, '_', '.', '-'")
                _check_overrides(f"{key}.{name}", overrides, reserved)
        _check_overrides("overrides", self.overrides, reserved)
        if self.seeds:
            _check_list("seeds", self.seeds)
            if min(self.seeds) < 0:
                raise ValueError(f"seeds: values must be >= 0, got {self.seeds}")
        if self.base_lr < 0 or self.base_tokens_per_step < 0 or self.processes < 0:
            raise ValueError("base_lr, base_tokens_per_step and processes must be >= 0")
        if self.parallel < 1:
            raise ValueError(f"parallel: must be >= 1 (jobs at a time), got {self.parallel}")

    def models(self, common: RunConfig) -> dict[str, list[str]]:
        """The model axis: each model's name -> the overrides that select it. A checkpoint decides its
        own architecture and dropout, so its jobs reset the ones the common config sets (for the
        presets' jobs) to their defaults, which model.pretrained accepts beside it."""
        defaults = ModelConfig()
        reset = [f"model.{key}={getattr(defaults, key)}" for key in ARCHITECTURE_KEYS
                 if getattr(common.model, key) != getattr(defaults, key)]
        return {**{preset: [f"model.preset={preset}"] for preset in self.presets},
                **{name: [*reset, f"model.pretrained={checkpoint}"] for name, checkpoint in self.pretrained.items()}}


def _check_list(key: str, values: list) -> None:
    if not values:
        raise ValueError(f"{key}: at least one value is needed")
    if len(set(values)) != len(values):
        raise ValueError(f"{key}: repeated values in {values}")


def _check_overrides(key: str, overrides: list[str], reserved: tuple[str, ...] = SWEEP_KEYS) -> None:
    for i, item in enumerate(overrides):
        name, sep, _ = item.partition("=")
        if not sep or not name or any(c.isspace() for c in item):
            raise ValueError(f"{key}[{i}]: {item!r} is not key.sub=value without spaces (the jobs file "
                             "separates words by spaces)")
        if name in reserved:
            raise ValueError(f"{key}[{i}]: {name} is set by the sweep for every job; use presets, "
                             "pretrained, tokens_per_step, base_lr, seeds or --out instead")


def load_spec(path: Path, cls: type = SweepSpec):
    """The spec in ``path`` as ``cls`` (SweepSpec or a subclass); errors name the file and the key."""
    try:
        return from_dict(cls, load_yaml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------------------------
# emit and run


@dataclass
class Job:
    name: str
    method: str
    model: str                  # a preset's name, or a pretrained checkpoint's name in the spec
    tokens_per_step: int
    lr: float
    config: str                 # absolute path of the base config
    overrides: list[str]
    run_dir: Path
    data: str = ""              # the data variant's name; "" without data variants
    seed: int | None = None     # train.seed set by the sweep; None without seeds

    def line(self) -> str:
        return " ".join([self.config, *self.overrides])

    def info(self) -> dict:
        """What DIR/{name}/sweep.json records for collect and the study report."""
        return {"method": self.method, "model": self.model, "tokens_per_step": self.tokens_per_step,
                "lr": self.lr, "data": self.data, "seed": self.seed}


def job_name(data: str, model: str, tokens: int, method: str, seed: int | None) -> str:
    """[{data}_]{model}_t{tokens}_{method}[_s{seed}]: the parts a spec without data variants or
    seeds does not vary are left out."""
    return "_".join([*([data] if data else []), model, f"t{tokens}", method,
                     *([f"s{seed}"] if seed is not None else [])])


def base_config_path(spec: SweepSpec, spec_path: Path) -> Path:
    base = Path(spec.base_config)
    base = base if base.is_absolute() else REPO / base
    if not base.is_file():
        raise ConfigError(f"{spec_path}: base_config: {base} does not exist")
    return base


def plan_jobs(spec: SweepSpec, spec_path: Path, out: Path) -> list[Job]:
    """Every job of the spec, each config checked by loading it (errors name the job and the key)."""
    base = base_config_path(spec, spec_path)
    out = out.resolve()
    if any(c.isspace() for c in str(out) + str(base)):
        raise ConfigError(f"{out} or {base}: paths in a jobs file may not contain spaces")
    common = load_config(base, spec.overrides)
    base_lr = spec.base_lr or common.optim.lr
    base_tokens = spec.base_tokens_per_step or common.sampling.tokens_per_step
    jobs: dict[str, Job] = {}
    models = spec.models(common)
    for data, model, tokens, seed, method in itertools.product(
            spec.data or [""], models, spec.tokens_per_step, spec.seeds or [None], spec.methods):
        name = job_name(data, model, tokens, method, seed)
        if name in jobs:
            raise ConfigError(f"{spec_path}: two jobs are named {name}; rename a data variant or method")
        lr = _round(base_lr * (tokens / base_tokens) ** LR_EXPONENTS[spec.lr_rule])
        overrides = [*spec.overrides, *spec.data.get(data, []), *spec.methods[method], *models[model],
                     f"sampling.tokens_per_step={tokens}", f"optim.lr={_yaml_scalar(lr)}",
                     *([f"{SEED_KEY}={seed}"] if seed is not None else []), f"train.run_dir={out / name}"]
        try:
            load_config(base, overrides)
        except (ConfigError, ValueError) as err:
            raise ConfigError(f"{spec_path}: job {name}: {err}") from None
        jobs[name] = Job(name, method, model, tokens, lr, str(base), overrides, out / name, data, seed)
    return list(jobs.values())


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _yaml_scalar(value: float) -> str:
    """The value as YAML reads it back as a float (a bare 2e-05 would be read as a string)."""
    return yaml.safe_dump(value).splitlines()[0]


def emit(spec: SweepSpec, spec_path: Path, out: Path) -> list[Job]:
    """Writes DIR/jobs.txt and each job's DIR/{name}/sweep.json (method, model, lr: for collect)."""
    jobs = plan_jobs(spec, spec_path, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JOBS_FILE).write_text("".join(job.line() + "\n" for job in jobs))
    for job in jobs:
        job.run_dir.mkdir(exist_ok=True)
        (job.run_dir / JOB_INFO).write_text(json.dumps(job.info(), indent=2))
    return jobs


def job_command(job: Job, processes: int) -> list[str]:
    """The deepspeed launcher through launch/train.sh, or one process without a launcher."""
    if processes == 1:
        return [sys.executable, "-m", "cats_ds.train", "--config", job.config, *job.overrides]
    return ["bash", str(REPO / "launch" / "train.sh"), *(["-n", str(processes)] if processes else []),
            job.config, *job.overrides]


def finished(job: Job) -> bool:
    return (job.run_dir / "results.json").exists()


def run(spec: SweepSpec, spec_path: Path, out: Path, desc: str = "sweep") -> list[Job]:
    """Runs the jobs not yet finished, ``spec.parallel`` at a time (output in DIR/{name}/train.log),
    skipping those with results.json; stops at the first failure (jobs already running finish)."""
    jobs = emit(spec, spec_path, out)
    pending = [job for job in jobs if not finished(job)]
    if len(pending) < len(jobs):
        tqdm.write(f"{len(jobs) - len(pending)} of {len(jobs)} jobs have results.json: skipped")
    if spec.parallel > 1 and len(pending) > 1:
        prepare_data(pending)
    run_all(pending, lambda job: run_job(job, spec.processes, desc), spec.parallel, desc, total=len(jobs))
    return jobs


def run_job(job: Job, processes: int, desc: str = "sweep") -> str | None:
    """Trains one job; None when it wrote results.json, else what went wrong and where its log is."""
    log_path = job.run_dir / "train.log"
    code = run_logged(job_command(job, processes), log_path, {"MASTER_PORT": str(free_port())})
    if code != 0:
        return f"{desc} job {job.name} failed with exit code {code}; see {log_path}"
    if not finished(job):
        return (f"{desc} job {job.name} stopped without results.json (a stop signal?); run again to resume "
                f"from its last checkpoint; see {log_path}")
    return None


def run_logged(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Runs ``command`` from the repository root with stdout and stderr in ``log_path``."""
    with open(log_path, "w") as log:
        return subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env=job_environment(env or {})).returncode


def job_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``, with DeepSpeed's CPU accelerator where no NVIDIA
    GPU is visible (what launch/env.sh does for the launch scripts)."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    if "DS_ACCELERATOR" not in environment and shutil.which("nvidia-smi") is None:
        environment["DS_ACCELERATOR"] = "cpu"
    return environment


def run_all(items: Iterable, work: Callable[[object], str | None], parallel: int, desc: str,
            total: int | None = None) -> None:
    """``work(item)`` for every item, ``parallel`` at a time, with a progress bar over ``total``
    (default: the items; more where some were skipped). ``work`` returns None or an error
    message; after the first error no new item starts, the running ones finish, and the
    message ends the program (SystemExit). On Ctrl-C the running jobs, which receive the signal
    too (a trainer saves a checkpoint and exits), are waited for."""
    items = list(items)
    total = len(items) if total is None else total
    errors: list[str] = []
    queue = iter(items)
    with tqdm(total=total, initial=total - len(items), desc=desc, unit="job") as bar, \
            ThreadPoolExecutor(max_workers=parallel) as pool:
        running: set[Future] = set()
        while True:
            while not errors and len(running) < parallel and (item := next(queue, None)) is not None:
                running.add(pool.submit(work, item))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                bar.update(1)
                error = future.result()
                if error:
                    errors.append(error)
                    if running:
                        tqdm.write(f"{error}\nwaiting for the {len(running)} job(s) still running")
    if errors:
        raise SystemExit("\n".join(errors))


def prepare_data(jobs: list[Job]) -> None:
    """Prepares (or finds in the cache) each distinct data config of ``jobs`` once, here, so that
    jobs started side by side never build the same cache entry at the same time."""
    from cats_ds.data import pipeline

    prepared: set[str] = set()
    for job in jobs:
        data = load_config(Path(job.config), job.overrides).data
        if data.key() not in prepared:
            tqdm.write(f"preparing the data of {job.name} (data key {data.key()})")
            pipeline.prepare(data)
            prepared.add(data.key())


# ----------------------------------------------------------------------------------------------
# collect


@dataclass
class RunSummary:
    name: str
    method: str
    model: str                  # the preset, or the pretrained checkpoint's name in the spec
    parameters: int
    tokens_per_step: int
    lr: float
    steps: int
    train_loss: float
    tokens_per_second: float
    results: dict | None        # results.json, None while the run is unfinished

    def value(self, key: str) -> float:
        """dev_loss / dev_loss_low from the final dev evaluation, bleu* from the test set."""
        if self.results is None:
            return float("nan")
        source = self.results["dev"] if key.startswith("dev_") else self.results
        return float(source.get(key, float("nan")))


def summarize(run_dir: Path) -> RunSummary | None:
    """One run's summary, or None when it has not written its run record yet."""
    metrics = run_dir / "metrics.jsonl"
    runs = read_metrics(metrics, "run") if metrics.exists() else []
    if not runs:
        return None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    train = read_metrics(metrics, "train")
    info = json.loads((run_dir / JOB_INFO).read_text()) if (run_dir / JOB_INFO).exists() else {}
    results_path = run_dir / "results.json"
    return RunSummary(
        name=run_dir.name,
        method=info.get("method", "cats" if config["cats"]["enabled"] else "plain"),
        model=info.get("model") or config["model"].get("pretrained") or config["model"]["preset"],
        parameters=runs[-1]["parameters"],
        tokens_per_step=config["sampling"]["tokens_per_step"], lr=config["optim"]["lr"],
        steps=train[-1]["step"] if train else 0,
        train_loss=train[-1]["loss"] if train else float("nan"),
        tokens_per_second=statistics.median(r["tokens_per_second"] for r in train) if train else float("nan"),
        results=json.loads(results_path.read_text()) if results_path.exists() else None)


COLUMNS = (("dev loss", "dev_loss"), ("dev loss (low)", "dev_loss_low"), ("BLEU", "bleu"),
           ("BLEU (low)", "bleu_low"), ("BLEU (high)", "bleu_high"))


def results_table(rows: list[RunSummary]) -> str:
    lines = ["| run | method | model | parameters | tokens/step | lr | steps | train loss | tokens/s | "
             + " | ".join(title for title, _ in COLUMNS) + " |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(COLUMNS)]
    for row in rows:
        finished = [f"{row.value(key):.3f}" if key.startswith("dev") else f"{row.value(key):.2f}"
                    for _, key in COLUMNS] if row.results else ["unfinished"] + [""] * (len(COLUMNS) - 1)
        cells = [row.name, row.method, row.model, f"{row.parameters:,}", str(row.tokens_per_step), f"{row.lr:.4g}",
                 str(row.steps), f"{row.train_loss:.3f}", f"{row.tokens_per_second:.0f}", *finished]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scaling(rows: list[RunSummary], out_dir: Path) -> list[Path]:
    """Dev loss and BLEU against parameters (a line per method and batch) and against tokens per step."""
    out_dir.mkdir(exist_ok=True)
    finished = [r for r in rows if r.results is not None]
    written = []
    for key, ylabel in (("dev_loss", "final dev loss (nats per target token)"), ("bleu", "test BLEU")):
        written.append(_lines(out_dir / f"{key}_vs_parameters.png", finished, "parameters",
                              lambda r: (r.method, f"{r.tokens_per_step} tokens/step"), key, ylabel))
        written.append(_lines(out_dir / f"{key}_vs_tokens_per_step.png", finished, "tokens_per_step",
                              lambda r: (r.method, r.model), key, ylabel))
    return written


def _lines(path: Path, rows: list[RunSummary], x_key: str, group, y_key: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label in sorted({group(r) for r in rows}):
        points = sorted((getattr(r, x_key), r.value(y_key)) for r in rows if group(r) == label)
        ax.plot(*zip(*points), marker="o", linewidth=1.2, label=", ".join(label))
    ax.set_xscale("log")
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def collect(out: Path) -> tuple[Path, list[Path]]:
    summaries = (summarize(config.parent) for config in sorted(out.glob("*/config.yaml")))
    rows = sorted((s for s in summaries if s is not None), key=lambda r: (r.method, r.parameters, r.tokens_per_step))
    if not rows:
        raise ValueError(f"{out}: no run directories with config.yaml and a run record in metrics.jsonl")
    table = out / RESULTS_TABLE
    table.write_text(f"# Sweep results: {out}\n\n{results_table(rows)}\n")
    return table, plot_scaling(rows, out / "plots")


def add_spec_commands(commands, kind: str) -> None:
    """The ``emit SPEC --out DIR`` and ``run SPEC --out DIR`` subcommands of a sweep or a study."""
    for name in ("emit", "run"):
        sub = commands.add_parser(name)
        sub.add_argument("spec", type=Path)
        sub.add_argument("--out", type=Path, required=True, help=f"{kind} directory (jobs file, one run dir per job)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_spec_commands(commands, "sweep")
    commands.add_parser("collect").add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "emit":
        jobs = emit(load_spec(args.spec), args.spec, args.out)
        print(f"{len(jobs)} jobs in {args.out / JOBS_FILE}")
    elif args.command == "run":
        run(load_spec(args.spec), args.spec, args.out)
        print(f"sweep done; python -m cats_ds.tools.sweep collect {args.out}")
    else:
        table, plots = collect(args.out)
        print(table.read_text())
        print("\n".join(str(p) for p in plots))


if __name__ == "__main__":
    main()
