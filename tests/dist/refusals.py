"""Starts a 1-process engine per unsupported DeepSpeed setting and prints what CATS says.

    deepspeed --num_accelerators 1 tests/dist/refusals.py OUT.json
"""

from __future__ import annotations

import argparse
import json

import torch

from cats_ds import distributed
from cats_ds.cats.zero import PartitionGradients, UnsupportedSetupError
from cats_ds.model import ModelConfig, build_hf_config, build_model

SETTINGS = {
    "stage0": {"zero_optimization": {"stage": 0}},
    "offload": {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
                "zero_force_ds_cpu_optimizer": False},
    "bf16_optimizer": {"bf16": {"enabled": True}, "zero_optimization": {"stage": 1},
                       "data_types": {"grad_accum_dtype": "fp32"}},
    "supported": {"zero_optimization": {"stage": 2}},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--local_rank", type=int)
    args = parser.parse_args()
    distributed.init()
    import deepspeed
    messages = {}
    for name, ds_config in SETTINGS.items():
        model = build_model(build_hf_config(ModelConfig(preset="tiny"), 50, 16, 1, 0, 2), seed=0)
        config = {**ds_config, "train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True}
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)
        try:
            PartitionGradients(engine)
            messages[name] = None
        except UnsupportedSetupError as err:
            messages[name] = str(err)
    with open(args.out, "w") as handle:
        json.dump(messages, handle)


if __name__ == "__main__":
    main()
