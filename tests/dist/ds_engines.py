"""Builds the trainer's engine for each DeepSpeed JSON given, runs one step, and asks CATS about it.

    deepspeed --num_accelerators 1 tests/dist/ds_engines.py OUT.json ds_configs/A.json [...]

The tiny model runs with activation checkpointing, so every ZeRO stage also meets the
recomputed forward. Per file OUT.json holds the step's loss and CATS's refusal (None: accepted).
"""

from __future__ import annotations

import argparse
import json

import torch

from cats_ds import distributed
from cats_ds.cats.zero import PartitionGradients, UnsupportedSetupError
from cats_ds.config import RunConfig
from cats_ds.configio import from_dict
from cats_ds.model import build_hf_config, build_model
from cats_ds.engine import build_engine

PAD, EOS, VOCAB = 1, 2, 50


def one_step(ds_config: str) -> dict:
    config = from_dict(RunConfig, {"model": {"preset": "tiny", "activation_checkpointing": True},
                                   "train": {"ds_config": ds_config}})
    model = build_model(build_hf_config(config.model, VOCAB, 16, PAD, 0, EOS), seed=0,
                        activation_checkpointing=config.model.activation_checkpointing)
    engine = build_engine(config, model)
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, VOCAB, (4, 10), generator=generator),
             "labels": torch.randint(3, VOCAB, (4, 8), generator=generator)}
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    try:
        PartitionGradients(engine)
        refusal = None
    except UnsupportedSetupError as err:
        refusal = str(err)
    return {"loss": float(loss), "cats_refusal": refusal}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("ds_configs", nargs="+")
    parser.add_argument("--local_rank", type=int)
    args = parser.parse_args()
    distributed.init()
    results = {path: one_step(path) for path in args.ds_configs}
    with open(args.out, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main()
