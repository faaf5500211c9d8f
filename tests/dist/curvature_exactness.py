"""The second_order objective's curvature matrix in ZeRO against float64 Hessian-vector products;
run by tests/test_cats_zero.py.

    deepspeed --num_accelerators 2 tests/dist/curvature_exactness.py OUT.json DS_CONFIG [DS_CONFIG ...] [--step 1e-3]

For each DeepSpeed config (one CATS refuses is recorded with its refusal only), the trainer's
steps run with cats.objective=second_order and cats.parameterization=weights on the tiny model and
batches of tests/dist/cats_exactness.py. At every curvature update the hook's M (of the
share-weighted task gradients g_n, before the mean-gradient transform) is recorded with the model's
full parameters before and after the finite differences. Rank 0 then rebuilds, at each recorded
parameter vector, the step's g_n and the Hessian of the same summed dev loss in float64 by double
backward, M_ref = G H G^T, on the same global batches. OUT.json holds both and the relative errors.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cats_exactness import (EOS, PAD, TASK_SIZES, VOCAB, VirtualRanks, make_config, probabilities, synthetic_task,
                            task_gradient)
from cats_ds import distributed
from cats_ds.cats.hook import CATSHook
from cats_ds.cats.zero import UnsupportedSetupError
from cats_ds.data.tasks import collate
from cats_ds.loss import token_loss
from cats_ds.model import build_hf_config, build_model
from cats_ds.train import Run, build_engine, train_step

STEPS = 2


def curvature_config(ds_config: str, step: float):
    config = make_config(0, "weights", ds_config)
    config.cats = dataclasses.replace(config.cats, objective="second_order", second_order_lr=0.5, curvature_step=step)
    return config


def model_parameters(engine) -> torch.Tensor:
    """The full parameters the model computes with (gathered on ZeRO-3)."""
    from deepspeed import zero
    parameters = list(engine.module.parameters())
    with zero.GatheredParameters(parameters, enabled=engine.zero_optimization_stage() == 3):
        return torch.cat([p.detach().reshape(-1).double() for p in parameters])


def run_config(ds_config: str, train, valid, model, step: float) -> dict:
    config = curvature_config(ds_config, step)
    engine = build_engine(config, copy.deepcopy(model))
    try:
        cats = CATSHook.build(config, engine, valid, PAD, EOS, probabilities(train))
    except UnsupportedSetupError as err:
        return {"refusal": str(err)}
    cats.dev_sampler = VirtualRanks([t.lengths() for t in valid], np.full(len(valid), 1 / len(valid)),
                                    60 * len(valid), 30, seed=4)
    sampler = VirtualRanks([t.lengths() for t in train], probabilities(train), 160, 30, seed=3)
    run = Run(config, engine, train, valid, sampler, cats, PAD, EOS)
    records, computing = [], cats._curvature

    def recording(gram):
        before = model_parameters(engine)
        curvature = computing(gram)
        after = model_parameters(engine)
        records.append({"step": run.step, "curvature": curvature.tolist(), "theta": before.tolist(),
                        "restored": bool(torch.equal(before, after))})
        return curvature
    cats._curvature = recording
    alpha = [train_step(run)["cats"]["alpha"] for _ in range(STEPS)]
    return {"records": records, "alpha": alpha, "final_theta": model_parameters(engine).tolist()}


def reference_curvature(model, theta: list[float], step: int, train, valid) -> list[list[float]]:
    """M_ref = G H_dev G^T in float64 at parameters theta, on global step ``step``'s batches."""
    model = copy.deepcopy(model).double()
    params = list(model.parameters())
    torch.nn.utils.vector_to_parameters(torch.tensor(theta, dtype=torch.float64), params)
    sampler = VirtualRanks([t.lengths() for t in train], probabilities(train), 160, 30, seed=3)
    dev_sampler = VirtualRanks([t.lengths() for t in valid], np.full(len(valid), 1 / len(valid)),
                               60 * len(valid), 30, seed=4)
    for _ in range(step):
        sampler.global_plan(), dev_sampler.global_plan()
    plans, dev_plans = sampler.global_plan(), dev_sampler.global_plan()
    total = sum(float(t.tgt_lengths()[mb].sum()) for p in plans for w in p for mb in w.micro_batches
                for t in [train[w.task]])
    rows = torch.stack([task_gradient(model, task, [mb for p in plans for mb in p[n].micro_batches], 0.1, total)[0]
                        for n, task in enumerate(train)])
    dev_loss = 0.0
    for n, task in enumerate(valid):   # the meta pass's loss: each task's dev NLL (no smoothing) over its dev tokens
        micro = [mb for p in dev_plans for mb in p[n].micro_batches]
        tokens = sum(float(task.tgt_lengths()[mb].sum()) for mb in micro)
        dev_loss = dev_loss + sum(token_loss(model, collate(task, mb, PAD), 0.0, PAD, EOS).smoothed_sum
                                  for mb in micro) / tokens
    flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(dev_loss, params, create_graph=True)])
    products = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ row, params,
                                                                                  retain_graph=True)])
                            for row in rows])
    return (rows @ products.T).tolist()


def reference_with_double_backward(*args) -> list[list[float]]:
    """reference_curvature with the math attention kernel: the fused CPU kernel has no double backward."""
    with sdpa_kernel(SDPBackend.MATH):
        return reference_curvature(*args)


def unit_relative(measured, reference) -> float:
    """||D^-1 (M - M_ref) D^-1|| / ||D^-1 M_ref D^-1|| with D = diag sqrt|M_ref[n, n]|: the task gradients'
    scales differ with their token shares, so the error is measured on M in units of each task's own
    curvature, where the relative finite-difference step gives every row the same error."""
    measured, reference = np.asarray(measured), np.asarray(reference)
    scale = np.sqrt(np.abs(np.diag(reference)))
    norm = np.outer(scale, scale)
    return float(np.linalg.norm((measured - reference) / norm) / np.linalg.norm(reference / norm))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("ds_configs", nargs="+")
    parser.add_argument("--step", type=float, default=1e-3, help="cats.curvature_step")
    parser.add_argument("--local_rank", type=int)
    args = parser.parse_args()
    distributed.init()
    torch.set_num_threads(1)
    train = [synthetic_task(f"t{n}", size, seed=n) for n, size in enumerate(TASK_SIZES)]
    valid = [synthetic_task(f"t{n}", 12, seed=100 + n) for n in range(len(TASK_SIZES))]
    model = build_model(build_hf_config(make_config(2, "plain").model, VOCAB, 16, PAD, 0, EOS), seed=7)
    results = {"world_size": distributed.world_size(),
               "configs": {path: run_config(path, train, valid, model, args.step) for path in args.ds_configs}}
    if distributed.rank() == 0:
        for runs in results["configs"].values():
            for record in runs.get("records", []):
                record["reference"] = reference_with_double_backward(model, record["theta"], record["step"], train, valid)
                record["error"] = unit_relative(record["curvature"], record["reference"])
                print(f"curvature M at step {record['step']}: relative error {record['error']:.2e}", flush=True)
                del record["theta"]
        with open(args.out, "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main()
