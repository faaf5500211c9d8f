"""The run configuration: one YAML file per run, each section a typed dataclass, overrides from the CLI.

    python -m cats_ds.train --config bible8_cpu train.max_steps=100 optim.lr=3e-4 cats.enabled=false

The comment beside each field is that key's meaning in ``--help`` (cats_ds.configio.keys_help).

Sections: data (cats_ds.data.pipeline.DataConfig), model (cats_ds.model.ModelConfig),
sampling, optim, train (below), eval (cats_ds.evaluate.EvalConfig), cats (cats_ds.cats.CATSConfig).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cats_ds.cats import CATSConfig
from cats_ds.cats.variants import with_variant
from cats_ds.configio import ConfigError, apply_overrides, from_dict, keys_help, load_yaml
from cats_ds.data.pipeline import DataConfig, planned_tasks
from cats_ds.evaluate import METRICS, EvalConfig
from cats_ds.model import ARCHITECTURE_KEYS, ModelConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class SamplingConfig:
    """Which tasks each optimizer step sees, and how many tokens (see cats_ds.data.sampler)."""

    temperature: float = 5.0            # task p_n ~ size_n^(1/T): 1 proportional, 5, 100 about uniform
    tokens_per_step: int = 4000         # source+target tokens per optimizer step, all ranks together
    max_tokens_per_micro: int = 2000    # per rank and micro-step; more becomes more micro-steps
    # each rank's shard is length-sorted in blocks of this many (1: no sorting). Sorted blocks pad
    # less but make consecutive steps all-short or all-long; measured on the CPU default (plain, 1
    # process, 12 min): 512 left the model ignoring the source, 1 gave 74-89% distinct outputs
    sort_block: int = 1


@dataclass
class OptimConfig:
    """AdamW with linear warmup then inverse-square-root decay."""

    lr: float = 2e-3                    # peak learning rate
    warmup_steps: int = 200             # linear warmup to lr over this many steps
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW's (beta1, beta2)
    eps: float = 1e-8                   # AdamW's epsilon
    weight_decay: float = 0.0           # AdamW's decoupled weight decay
    label_smoothing: float = 0.1        # of the training loss (evaluation uses none)
    clip_norm: float = 1.0              # gradient norm clip; 0: none (DeepSpeed's gradient_clipping)

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas: two numbers expected, got {self.betas}")


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"       # checkpoints, metrics, results and the export go here
    ds_config: str = "ds_configs/zero2.json"  # DeepSpeed JSON (ZeRO stage, precision)
    max_steps: int = 1000               # optimizer steps
    max_minutes: float = 0.0            # wall-clock budget for the training loop; 0: none
    log_every: int = 1                  # metrics.jsonl record every k steps
    save_every: int = 500               # checkpoint every k steps; 0: only at the end
    keep_last: int = 2                  # newest complete step checkpoints kept
    keep_best: bool = True              # also keep the best one by eval.best_metric, evaluated at the end
    max_nonfinite_steps: int = 5        # stop after this many consecutive steps with a NaN/Inf loss or gradient
    seed: int = 1                       # seed of the model's initialization and the sampler
    threads: int = 0                    # torch threads per process; 0: cores / local processes
    export: bool = True                 # save_pretrained model + tokenizer at the end
    # auto: DeepSpeed's accelerator (cuda where DeepSpeed finds GPUs, cpu under DS_ACCELERATOR=cpu);
    # cuda or cpu: refuse to start on the other one (GPU configs say cuda)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"train.device: auto, cuda or cpu, got {self.device!r}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cats: CATSConfig = field(default_factory=CATSConfig)


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: finite, between ``low`` and ``high`` (ends as given)."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above_low and below_high

    def __str__(self) -> str:
        left, right = "(" if self.low_open else "[", ")" if self.high_open or self.high == math.inf else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


_POSITIVE, _NON_NEGATIVE, _AT_LEAST_ONE = Range(0, low_open=True), Range(0), Range(1)
_PROBABILITY, _SEED = Range(0, 1, high_open=True), Range(0, 2 ** 32 - 1)   # numpy seeds are 32-bit
_PRESET_OR_SIZE = Range(-1)    # model sizes: 0 or -1 keep the preset's value
# p_n ~ size_n^(1/T) > 0 for every task (each runs in every step): at T >= 0.1 even sizes 1 and
# 1e9 give p > 1e-90; below, a small task's probability underflows to 0 and the sampler refuses
_SAMPLING_TEMPERATURE = Range(0.1)

# every numeric key of RunConfig and its valid values, checked at start (a list's range holds
# for each element); tests/test_config.py checks that no numeric key is missing
NUMERIC_RANGES: dict[str, Range] = {
    "data.low_resource_size": _AT_LEAST_ONE, "data.vocab_size": Range(100), "data.tokenizer_temperature": _POSITIVE,
    "data.tokenizer_sentences": Range(1000), "data.max_len": Range(4), "data.seed": _SEED,
    "model.d_model": _PRESET_OR_SIZE, "model.encoder_layers": _PRESET_OR_SIZE, "model.decoder_layers": _PRESET_OR_SIZE,
    "model.attention_heads": _PRESET_OR_SIZE, "model.ffn_dim": _PRESET_OR_SIZE, "model.dropout": _PROBABILITY,
    "model.attention_dropout": _PROBABILITY,
    "sampling.temperature": _SAMPLING_TEMPERATURE, "sampling.tokens_per_step": _AT_LEAST_ONE,
    "sampling.max_tokens_per_micro": _AT_LEAST_ONE, "sampling.sort_block": _AT_LEAST_ONE,
    "optim.lr": _POSITIVE, "optim.warmup_steps": _NON_NEGATIVE, "optim.betas": _PROBABILITY, "optim.eps": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE, "optim.label_smoothing": _PROBABILITY, "optim.clip_norm": _NON_NEGATIVE,
    "train.max_steps": _AT_LEAST_ONE, "train.max_minutes": _NON_NEGATIVE, "train.log_every": _AT_LEAST_ONE,
    "train.save_every": _NON_NEGATIVE, "train.keep_last": _AT_LEAST_ONE, "train.max_nonfinite_steps": _AT_LEAST_ONE,
    "train.seed": _SEED, "train.threads": _NON_NEGATIVE,
    "eval.every_steps": _NON_NEGATIVE, "eval.dev_sentences": _AT_LEAST_ONE, "eval.test_sentences": _NON_NEGATIVE,
    "eval.beam": _AT_LEAST_ONE, "eval.batch_sentences": _AT_LEAST_ONE, "eval.max_len_ratio": _NON_NEGATIVE,
    "eval.patience": _NON_NEGATIVE,
    "cats.lr_alpha": _NON_NEGATIVE, "cats.lr_lambda": _NON_NEGATIVE, "cats.epsilon": _POSITIVE,
    "cats.ema_decay": _PROBABILITY, "cats.alpha_min": Range(0, 1), "cats.warmup_steps": _NON_NEGATIVE,
    "cats.interval": _AT_LEAST_ONE, "cats.cosine_every": _AT_LEAST_ONE, "cats.meta_tokens_per_task": _AT_LEAST_ONE,
    "cats.meta_ema": _PROBABILITY, "cats.second_order_lr": _POSITIVE, "cats.curvature_every": _AT_LEAST_ONE,
    "cats.curvature_step": Range(0, 1, low_open=True),
}


def check_ranges(section: Any, prefix: str = "") -> None:
    """Raises ConfigError naming the first numeric key whose value is outside its NUMERIC_RANGES entry."""
    for item in dataclasses.fields(section):
        key, value = f"{prefix}{item.name}", getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
        elif key in NUMERIC_RANGES:
            values = value if isinstance(value, list) else [value]
            for index, number in enumerate(values):
                if number not in NUMERIC_RANGES[key]:
                    where = f"{key}[{index}]" if isinstance(value, list) else key
                    raise ConfigError(f"{where}: must be a finite number in {NUMERIC_RANGES[key]}, got {number!r}")


def check_consistency(config: RunConfig) -> None:
    """Cross-field checks, run at start before any data is prepared; ConfigError names the keys."""
    longest_pair = 2 * config.data.max_len   # a kept pair has at most data.max_len tokens a side
    if config.sampling.max_tokens_per_micro < longest_pair:
        raise ConfigError(f"sampling.max_tokens_per_micro={config.sampling.max_tokens_per_micro} is smaller than "
                          f"one longest pair, 2 * data.max_len = {longest_pair} tokens: the sampler could not "
                          f"place it; raise sampling.max_tokens_per_micro or lower data.max_len")
    try:
        plan = planned_tasks(config.data)
    except ValueError as err:
        raise ConfigError(f"data: {err}") from None
    if plan is not None:   # None: a local directory that is missing, which data preparation reports
        tasks, low = set(plan[0].values()), plan[1]
        _check_best_metric(config.eval.best_metric, tasks, low)
        _check_alpha_min(config, len(tasks))


def _check_best_metric(metric: str, tasks: set[str], low: set[str]) -> None:
    group = metric.rpartition("_")[2]
    if group == "low" and not low:
        raise ConfigError(f"eval.best_metric={metric} averages the low-resource tasks, but the data section has "
                          f"none (data.low_resource is empty and the corpus names no low-resource language); "
                          f"list them in data.low_resource or choose another of {', '.join(METRICS)}")
    if group == "high" and not tasks - low:
        raise ConfigError(f"eval.best_metric={metric} averages the high-resource tasks, but every task of the data "
                          f"section is low-resource ({', '.join(sorted(low))}); check data.low_resource or "
                          f"choose another of {', '.join(METRICS)}")


def _check_alpha_min(config: RunConfig, num_tasks: int) -> None:
    alpha_min = config.cats.alpha_min
    # the TaskScaler's floored simplex needs alpha_min * N <= 1 (cats_ds.cats.scaler); it exists only
    # when CATS itself scales the tasks
    if config.cats.enabled and config.cats.method == "cats" and alpha_min * num_tasks > 1 + 1e-9:
        raise ConfigError(f"cats.alpha_min={alpha_min:g} times the {num_tasks} tasks of the data section "
                          f"(data.source={config.data.source}, data.tasks={config.data.tasks}) is "
                          f"{alpha_min * num_tasks:g} > 1: weights of at least alpha_min cannot sum to 1; "
                          f"set cats.alpha_min <= {1 / num_tasks:.6g}")


def _with_cats_variant(written: dict[str, Any], overrides: list[str], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (the file ``written`` with ``overrides``) with cats.variant's keys filled in
    (cats_ds/cats/variants.py: keys set where the variant is named, or later, win)."""
    below, above = written.get("cats", {}), apply_overrides(RunConfig, {}, overrides).get("cats", {})
    if not (isinstance(below, dict) and isinstance(above, dict)):
        return data   # a cats value that is no mapping: from_dict reports it
    try:
        return {**data, "cats": with_variant(below, above)}
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_pretrained(data: dict[str, Any]) -> None:
    """model.pretrained decides the architecture: preset and dimension keys beside it, other than
    their defaults (which a saved config.yaml repeats), are refused."""
    model = data.get("model")
    if not (isinstance(model, dict) and model.get("pretrained")):
        return
    defaults = ModelConfig()
    given = [key for key in ARCHITECTURE_KEYS if key in model and model[key] != getattr(defaults, key)]
    if given:
        raise ConfigError(f"model.pretrained={model['pretrained']} is set together with "
                          f"{', '.join(f'model.{key}' for key in given)}: the pretrained checkpoint's config.json "
                          f"decides its architecture and dropout; remove them")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Reads a run config file (or the defaults when ``path`` is None), applies overrides, fills in
    cats.variant's keys (cats_ds/cats/variants.py), checks every numeric key's range and the
    cross-field rules (check_consistency)."""
    written = load_yaml(Path(path)) if path else {}
    data = apply_overrides(RunConfig, written, list(overrides))
    try:
        _check_pretrained(data)
        config = from_dict(RunConfig, _with_cats_variant(written, list(overrides), data))
        check_ranges(config)
        check_consistency(config)
    except ConfigError as err:
        raise ConfigError(f"{path or 'defaults'}{' + overrides' if overrides else ''}: {err}") from None
    return config


def config_path(name_or_path: str) -> Path:
    """A shipped config's file for a NAME (``bible8_cpu``: cats_ds/configs/bible8_cpu.yaml), else the path."""
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    shipped = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
    if name_or_path not in shipped:
        nearest = difflib.get_close_matches(name_or_path, shipped, n=1)
        hint = f"did you mean {nearest[0]}? " if nearest else ""
        raise ConfigError(f"--config {name_or_path}: no shipped config of that name ({hint}shipped: "
                          f"{', '.join(shipped)}); give a file as a path (e.g. ./{name_or_path}.yaml)")
    return CONFIG_DIR / f"{name_or_path}.yaml"


def from_command_line(argv: list[str] | None, prog: str, description: str = "") -> RunConfig:
    """The run config of ``[--config NAME|PATH] [--print-config] [key.sub=value ...]``. ``--help``
    lists every key with its default and meaning and exits; ``--print-config`` prints the resolved
    config as YAML and exits 0, before any data preparation or distributed start; a config error
    exits 2 with its message. ``--local_rank`` (passed by the deepspeed launcher) is accepted and ignored."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"keys (key=default, meaning):\n{keys_help(RunConfig)}")
    shipped = ", ".join(sorted(path.stem for path in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("--config", help=f"a shipped config's name ({shipped}) or a YAML file "
                                          "(default: the defaults below)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="overrides, values written as in YAML (lists: [a, b]): train.max_steps=100 "
                             "optim.lr=3e-4 cats.enabled=false")
    args = parser.parse_args(argv)
    try:
        config = load_config(config_path(args.config) if args.config else None, args.overrides)
    except ConfigError as err:   # a usage error: the message without a traceback, exit status 2
        parser.error(str(err))
    if args.print_config:
        print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), end="")
        parser.exit(0)
    return config
