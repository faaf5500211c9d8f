"""The DeepSpeed engine of a run: its JSON config merged with the run config, AdamW and the
inverse-square-root schedule.

The trainer owns the batch size, accumulation and clipping (token-budget batches with manual
accumulation boundaries), so a DeepSpeed JSON that sets them is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import deepspeed
import torch

from cats_ds import packaged
from cats_ds.config import RunConfig


def run_ds_config(config: RunConfig) -> dict:
    """The run's DeepSpeed JSON (train.ds_config) with what the trainer sets itself."""
    return load_ds_config(packaged.ds_config(config.train.ds_config), config)


def build_engine(config: RunConfig, model: torch.nn.Module, ds_config: dict | None = None,
                 load_universal: bool = False):
    """deepspeed.initialize with the run's DeepSpeed JSON (``ds_config``: run_ds_config's), our AdamW
    and inverse-sqrt schedule; ``load_universal`` when the checkpoint to resume from is a universal
    one (new world size)."""
    ds_config = dict(ds_config or run_ds_config(config))
    if load_universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    # DeepSpeed casts parameters but not buffers (M2M100's sinusoidal position table), and CPU
    # kernels refuse mixed dtypes: cast the whole module first
    model = model.to(model_dtype(ds_config))
    optim = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    warmup = max(1, optim.warmup_steps)

    def inverse_sqrt(step: int) -> float:   # LambdaLR's step 0 is the first update
        step += 1
        return min(step / warmup, math.sqrt(warmup / step))

    def make_scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, inverse_sqrt)

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=make_scheduler,
                                           config=ds_config)
    return engine


def model_dtype(ds_config: dict) -> torch.dtype:
    """The dtype of the model's weights the DeepSpeed JSON asks for (bf16, fp16 or fp32)."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


# keys the trainer sets itself: a DeepSpeed JSON that sets them is refused
_OWNED_KEYS = ("optimizer", "scheduler", "train_batch_size", "train_micro_batch_size_per_gpu",
               "gradient_accumulation_steps", "gradient_clipping")


def load_ds_config(path: Path, config: RunConfig) -> dict:
    try:
        ds_config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"train.ds_config: {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None
    owned = [key for key in _OWNED_KEYS if key in ds_config]
    if owned:
        raise ValueError(f"{path}: remove {', '.join(owned)}; cats-ds sets these from the run config "
                         "(optim.*, sampling.*)")
    # token-budget batches and manual boundaries: DeepSpeed sees one "sample" per micro-step
    return {**ds_config, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "gradient_clipping": config.optim.clip_norm, "zero_allow_untested_optimizer": True,
            "steps_per_print": ds_config.get("steps_per_print", 10 ** 9)}
