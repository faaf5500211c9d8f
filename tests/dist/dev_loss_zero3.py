"""Dev losses under ZeRO-3 for dev sets smaller than the world and uneven over its ranks.

    deepspeed --num_accelerators 2 tests/dist/dev_loss_zero3.py OUT.json

Writes, per case "DEV_SENTENCES/BATCH_SENTENCES", cats_ds.evaluate.dev_losses on a ZeRO-3
engine and the reference: Hugging Face's own mean loss per example, on the plain module
before DeepSpeed wraps it, weighted by each example's target tokens.
"""

from __future__ import annotations

import json
import os
import sys

import deepspeed
import numpy as np
import torch

from cats_ds import distributed
from cats_ds.data.tasks import TaskData, collate
from cats_ds.evaluate import EvalConfig, dev_losses
from cats_ds.model import ModelConfig, build_hf_config, build_model

PAD, EOS, VOCAB = 1, 2, 50
CASES = [(1, 4), (3, 1), (5, 2), (7, 3)]     # dev sentences, batch sentences: all uneven over 2 ranks


def random_task(name: str, examples: int, seed: int) -> TaskData:
    generator = np.random.default_rng(seed)
    sides = {}
    for side in ("src", "tgt"):
        lengths = generator.integers(3, 9, examples)
        sides[f"{side}_tokens"] = generator.integers(3, VOCAB, int(lengths.sum())).astype(np.int32)
        sides[f"{side}_offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TaskData(name, [name], direction_index=np.zeros(examples, dtype=np.int64), **sides)


@torch.no_grad()
def reference(model, task: TaskData, count: int) -> float:
    total = tokens = 0.0
    for index in range(count):
        batch = collate(task, [index], PAD)
        target_tokens = int(batch["labels"].ne(-100).sum())
        total += float(model(**batch).loss) * target_tokens
        tokens += target_tokens
    return total / tokens


def main() -> None:
    out = sys.argv[-1]      # the deepspeed launcher puts its --local_rank=N before the script's arguments
    distributed.init()
    model = build_model(build_hf_config(ModelConfig(preset="tiny", dropout=0.0), VOCAB, 16, PAD, 0, EOS), seed=0).eval()
    tasks = [random_task("a", 9, 1), random_task("b", 4, 2)]
    expected = {f"{d}/{b}": [reference(model, task, min(len(task), d)) for task in tasks] for d, b in CASES}
    config = {"train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 3}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)
    engine.eval()
    actual = {f"{d}/{b}": dev_losses(engine, tasks, EvalConfig(dev_sentences=d, batch_sentences=b), PAD, EOS).tolist()
              for d, b in CASES}
    if distributed.rank() == 0:
        with open(out, "w") as handle:
            json.dump({"expected": expected, "actual": actual}, handle)
    distributed.barrier()
    distributed.shutdown()
    # what is measured is written; skip interpreter teardown, where a ZeRO-3 engine's rank
    # sometimes aborted ("terminate called without an active exception", about 1 run in 7 here)
    os._exit(0)


if __name__ == "__main__":
    main()
