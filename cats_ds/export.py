"""Export a trained model so that plain transformers loads it: save_pretrained + the sentencepiece model."""

from __future__ import annotations

import shutil
from pathlib import Path

import deepspeed

from cats_ds import distributed

TOKENIZER_FILE = "spm.model"


def export_model(engine, tokenizer_path: Path, out_dir: Path) -> None:
    """Writes ``out_dir`` with config.json, model weights and spm.model; all ranks must call it.

    Under ZeRO-3 the parameters are gathered to every rank first; rank 0 writes.
    """
    module = engine.module
    params = list(module.parameters())
    gather = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
        if distributed.rank() == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            module.save_pretrained(out_dir)
            shutil.copyfile(tokenizer_path, out_dir / TOKENIZER_FILE)
    distributed.barrier()
