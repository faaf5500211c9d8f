"""The run configuration: one YAML file per run, each section a typed dataclass, overrides from the CLI.

    python -m cats_ds.train --config cats_ds/configs/bible8_cpu.yaml train.max_steps=100 cats.enabled=false

Sections: data (cats_ds.data.pipeline.DataConfig), model (cats_ds.model.ModelConfig),
sampling, optim, train (below), eval (cats_ds.evaluate.EvalConfig), cats (cats_ds.cats.CATSConfig).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cats_ds.cats import CATSConfig
from cats_ds.configio import ConfigError, apply_overrides, from_dict, load_yaml
from cats_ds.data.pipeline import DataConfig
from cats_ds.evaluate import EvalConfig
from cats_ds.model import ModelConfig

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

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"sampling.temperature: must be > 0, got {self.temperature}")
        if self.tokens_per_step < 1 or self.max_tokens_per_micro < 1 or self.sort_block < 1:
            raise ValueError("sampling.tokens_per_step, sampling.max_tokens_per_micro and sampling.sort_block "
                             "must be >= 1")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then inverse-square-root decay."""

    lr: float = 2e-3
    warmup_steps: int = 200
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0              # 0: no clipping (DeepSpeed's gradient_clipping)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr: must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas: two numbers in [0, 1) expected, got {self.betas}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"optim.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_steps < 0 or self.clip_norm < 0:
            raise ValueError("optim.warmup_steps and optim.clip_norm must be >= 0")


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    ds_config: str = "ds_configs/zero2.json"
    max_steps: int = 1000
    max_minutes: float = 0.0            # wall-clock budget for the training loop; 0: none
    log_every: int = 1                  # metrics.jsonl record every k steps
    save_every: int = 500
    keep_last: int = 2                  # newest complete step checkpoints kept
    keep_best: bool = True              # also keep the best one by eval.best_metric, evaluated at the end
    max_nonfinite_steps: int = 5        # stop after this many consecutive steps with a NaN/Inf loss or gradient
    seed: int = 1
    threads: int = 0                    # torch threads per process; 0: cores / local processes
    export: bool = True                 # save_pretrained model + tokenizer at the end
    # auto: DeepSpeed's accelerator (cuda where DeepSpeed finds GPUs, cpu under DS_ACCELERATOR=cpu);
    # cuda or cpu: refuse to start on the other one (GPU configs say cuda)
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"train.max_steps: must be >= 1, got {self.max_steps}")
        if self.max_minutes < 0 or self.log_every < 1 or self.save_every < 0 or self.threads < 0:
            raise ValueError("train.max_minutes, train.save_every, train.threads must be >= 0, train.log_every >= 1")
        if self.keep_last < 1 or self.max_nonfinite_steps < 1:
            raise ValueError("train.keep_last and train.max_nonfinite_steps must be >= 1")
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


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Reads a run config file (or the defaults when ``path`` is None) and applies overrides."""
    data = load_yaml(Path(path)) if path else {}
    apply_overrides(data, list(overrides))
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path or 'defaults'}: {err}") from None
