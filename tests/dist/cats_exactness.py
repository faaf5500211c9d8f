"""CATS in ZeRO against a dense single-process reference; run by tests/test_cats_zero.py.

    deepspeed --num_accelerators 2 tests/dist/cats_exactness.py OUT.json STAGE [STAGE ...] [--configs JSON ...]
        [--pretrained DIR --objective weighted_loss]

For each ZeRO stage, on the same global batches (the plans of a 2-rank sampler; a 1-process
job runs both virtual ranks' micro-batches itself):
  plain   - cats.enabled=false
  ones    - CATS with lr_alpha = lr_lambda = 0 (scales stay 1)
  cats    - CATS lookahead with dev meta gradients, moving scales
  realized - cats.parameterization=weights with the weights held at each step's realized
            token shares pi (w = pi is plain training)
  weights - cats.parameterization=weights, lookahead with dev meta gradients, moving weights
  pcgrad, mgda - the gradient-surgery baselines through the same buffers (``--surgery``)
With --pretrained the model is a checkpoint loaded from DIR through cats_ds.pretrained (under
ZeRO-3 straight into the partitions, every engine loading it afresh), the modes are plain, ones,
realized and cats, and cats runs --objective (the shipped default variant's, weighted_loss).
Rank 0 also computes the dense references: per-task gradients by separate backward passes
over the whole global batch in float64 accounting, the same TaskScaler (or GradientSurgery)
and AdamW.
Everything measured is written to OUT.json, with its relative errors against the references
under "errors" (what launch/gpu_check.sh reports); the test asserts on the measurements.
"""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM

from cats_ds import distributed
from cats_ds.cats import GradientSurgery, TaskScaler
from cats_ds.cats.hook import CATSHook
from cats_ds.cats.statistics import gram_and_dots, mean_gradient_statistics, scales_from_weights
from cats_ds.config import RunConfig
from cats_ds.configio import from_dict
from cats_ds.data.sampler import LanguageSyncSampler
from cats_ds.data.tasks import TaskData, collate
from cats_ds import pretrained
from cats_ds.engine import build_engine, run_ds_config
from cats_ds.loss import token_loss
from cats_ds.model import build_hf_config, build_model
from cats_ds.train import Run, train_step

STEPS = 5
VIRTUAL_WORLD = 2
PAD, EOS, VOCAB = 1, 2, 40
TASK_SIZES = (60, 24, 9)
SURGERY = ("pcgrad", "mgda")
WEIGHTS = ("realized", "weights")
MODES = ("plain", "ones", "cats", *WEIGHTS)


class RealizedShares:
    """A stand-in scaler whose weights are always the step's realized token shares (plain training)."""

    def __init__(self, config) -> None:
        self.config, self.scales, self.lam = config, None, 0.0

    def update_due(self) -> bool:
        return False

    def update(self, losses, gram, meta_dots=None, plain=None):
        self.scales = plain.clone()
        return self.scales

    @property
    def alpha(self):
        return self.scales

    def describe(self) -> dict:
        return {}


def synthetic_task(name: str, size: int, seed: int) -> TaskData:
    rng = np.random.default_rng(seed)
    src = [rng.integers(4, VOCAB, rng.integers(2, 9)).tolist() + [EOS] for _ in range(size)]
    tgt = [rng.integers(4, VOCAB, rng.integers(2, 9)).tolist() + [EOS] for _ in range(size)]

    def flat(rows):
        return np.array([t for r in rows for t in r], dtype=np.int32), np.cumsum([0] + [len(r) for r in rows])

    (src_tokens, src_offsets), (tgt_tokens, tgt_offsets) = flat(src), flat(tgt)
    return TaskData(name, [name], src_tokens, src_offsets, tgt_tokens, tgt_offsets, np.zeros(size, dtype=np.int64))


class VirtualRanks:
    """The global plan of a 2-rank sampler, split over the real ranks (one or two)."""

    def __init__(self, lengths, probs, tokens, micro, seed):
        self.samplers = [LanguageSyncSampler(lengths, probs, tokens, micro, seed=seed, rank=r,
                                             world_size=VIRTUAL_WORLD) for r in range(VIRTUAL_WORLD)]

    def global_plan(self):
        return [s.next_step() for s in self.samplers]

    def next_step(self):
        plans = self.global_plan()
        world, rank = distributed.world_size(), distributed.rank()
        mine = [plans[r] for r in range(VIRTUAL_WORLD) if r % world == rank]
        for windows in zip(*mine):
            windows[0].micro_batches = [mb for w in windows for mb in w.micro_batches]
        return mine[0]


def make_config(stage: int, mode: str, ds_config: str = "", objective: str = "lookahead") -> RunConfig:
    cats = {"enabled": mode != "plain", "method": mode if mode in SURGERY else "cats",
            "objective": objective, "meta_source": "dev", "ema_decay": 0.5,
            "meta_tokens_per_task": 60, "cosine_every": 1,
            "lr_alpha": 0.0 if mode == "ones" else 0.2, "lr_lambda": 0.0 if mode == "ones" else 0.5,
            "epsilon": 0.7, "parameterization": "weights" if mode in WEIGHTS else "scales"}
    return from_dict(RunConfig, {
        "model": {"preset": "tiny", "dropout": 0.0},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "clip_norm": 0.0, "label_smoothing": 0.1},
        "sampling": {"temperature": 2.0, "tokens_per_step": 160, "max_tokens_per_micro": 30},
        "train": {"ds_config": ds_config or f"ds_configs/zero{stage}.json"},
        "cats": cats,
    })


def probabilities(tasks):
    from cats_ds.data.sampler import temperature_probs
    return temperature_probs([len(t) for t in tasks], 2.0)


def flat_params(engine) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param
    return torch.cat([safe_get_full_fp32_param(p).reshape(-1).double() for p in engine.module.parameters()])


def run_engine(stage: int, mode: str, train, valid, model, ds_config: str = "", objective: str = "lookahead"):
    """``model``: a module (each engine gets a copy) or a callable that loads one for a DeepSpeed config."""
    config = make_config(stage, mode, ds_config, objective)
    engine_config = run_ds_config(config)
    module = copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model(engine_config)
    engine = build_engine(config, module, engine_config)
    sampler = VirtualRanks([t.lengths() for t in train], probabilities(train), 160, 30, seed=3)
    cats = CATSHook.build(config, engine, valid, PAD, EOS, probabilities(train))
    if mode == "realized":
        cats.scaler = RealizedShares(config.cats)
    if cats is not None:
        cats.dev_sampler = VirtualRanks([t.lengths() for t in valid], np.full(len(valid), 1 / len(valid)),
                                        60 * len(valid), 30, seed=4)
    run = Run(config, engine, train, valid, sampler, cats, PAD, EOS)
    grams, trajectory = [], []
    if cats is not None:
        original = cats.buffers.reduce_statistics

        def recording(with_meta):
            gram, dots = original(with_meta)
            grams.append(gram.tolist())
            return gram, dots
        cats.buffers.reduce_statistics = recording
    for _ in range(STEPS):
        metrics = train_step(run)
        if cats is not None:
            trajectory.append({"alpha": metrics["cats"]["alpha"], "lambda": metrics["cats"]["lambda"]})
    return {"params": flat_params(engine).tolist(), "grams": grams, "trajectory": trajectory}


def dense_reference(train, valid, model, mode: str = "cats", objective: str = "lookahead") -> dict:
    """Single process, per-task gradients by separate backward passes over the global batch."""
    config = make_config(2, mode, objective=objective)
    model = copy.deepcopy(model).double()
    params = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr, betas=tuple(config.optim.betas), eps=config.optim.eps,
                                  weight_decay=config.optim.weight_decay)
    warmup = config.optim.warmup_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, (warmup / (s + 1)) ** 0.5))
    if mode in SURGERY:
        scaler = GradientSurgery(config.cats, len(train), seed=config.train.seed)
    else:
        scaler = TaskScaler(config.cats, num_tasks=len(train),
                            initial=probabilities(train) if mode in WEIGHTS else None)
    sampler = VirtualRanks([t.lengths() for t in train], probabilities(train), 160, 30, seed=3)
    dev_sampler = VirtualRanks([t.lengths() for t in valid], np.full(len(valid), 1 / len(valid)),
                               60 * len(valid), 30, seed=4)
    grams, trajectory, initial_alpha = [], [], scaler.alpha.tolist()
    for _ in range(STEPS):
        plans = sampler.global_plan()
        total = sum(float(t.tgt_lengths()[mb].sum()) for p in plans for w in p for mb in w.micro_batches
                    for t in [train[w.task]])
        task_grads, losses, shares = [], [], []
        for n, task in enumerate(train):
            micro = [mb for p in plans for mb in p[n].micro_batches]
            grad, nll, tokens = task_gradient(model, task, micro, config.optim.label_smoothing, total)
            task_grads.append(grad)
            shares.append(sum(float(task.tgt_lengths()[mb].sum()) for mb in micro) / total)
        dev_plans = dev_sampler.global_plan()
        h = torch.zeros_like(task_grads[0])
        for n, task in enumerate(valid):
            micro = [mb for p in dev_plans for mb in p[n].micro_batches]
            tokens = sum(float(task.tgt_lengths()[mb].sum()) for mb in micro)
            grad, nll, _ = task_gradient(model, task, micro, 0.0, tokens)
            h += grad
            losses.append(nll / tokens)
        g = torch.stack(task_grads)
        gram, dots = gram_and_dots(g, h)
        grams.append(gram.tolist())
        if mode in WEIGHTS:   # the scaler sees the mean gradients g_n / pi_n and returns weights
            pi = torch.tensor(shares, dtype=torch.float64)
            weights = scaler.update(torch.tensor(losses), *mean_gradient_statistics(gram, dots, pi), plain=pi)
            scales = scales_from_weights(weights, pi)
        else:
            scales = scaler.update(torch.tensor(losses), gram, dots)
        trajectory.append({"alpha": scaler.alpha.tolist(), "lambda": float(scaler.lam)})
        combined = scales @ g
        offset = 0
        for p in params:
            p.grad = combined[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()
        schedule.step()
    return {"params": torch.cat([p.detach().reshape(-1) for p in params]).tolist(), "grams": grams,
            "trajectory": trajectory, "initial_alpha": initial_alpha}


def task_gradient(model, task, micro_batches, label_smoothing, total_tokens):
    model.zero_grad()
    nll = 0.0
    for mb in micro_batches:
        batch = collate(task, mb, PAD)
        loss = token_loss(model, batch, label_smoothing, PAD, EOS)
        (loss.smoothed_sum / total_tokens).backward()
        nll += float(loss.nll_sum)
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in model.parameters()])
    return grad, nll, total_tokens


def relative(a, b) -> float:
    """||a - b|| / ||b|| over all entries (float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def errors(results: dict) -> dict:
    """Relative errors: scales fixed at 1 and weights at the realized shares against plain, CATS
    (scales and weights) against its dense reference."""
    alpha = [t["alpha"] for t in results["reference"]["trajectory"]]

    def against(run: dict, reference: dict) -> dict:
        return {"first_gram": relative(run["grams"][0], reference["grams"][0]),
                "grams": relative(run["grams"], reference["grams"]),
                "params": relative(run["params"], reference["params"]),
                "alpha": relative([t["alpha"] for t in run["trajectory"]],
                                  [t["alpha"] for t in reference["trajectory"]]),
                "finite": bool(np.isfinite(run["params"]).all())}
    stages = {stage: {"ones_vs_plain": relative(runs["ones"]["params"], runs["plain"]["params"]),
                      "realized_vs_plain": relative(runs["realized"]["params"], runs["plain"]["params"]),
                      "plain_moved": relative(runs["plain"]["params"], results["initial"]),
                      "cats_vs_reference": against(runs["cats"], results["reference"]),
                      **({"weights_vs_reference": against(runs["weights"], results["weights_reference"])}
                         if "weights" in runs else {})}
              for stage, runs in results["stages"].items()}
    configs = {path: against(run, results["reference"]) for path, run in results["configs"].items()}
    return {"stages": stages, "configs": configs,
            "reference_alpha_moved": float(np.abs(np.asarray(alpha[-1]) - 1 / len(alpha[-1])).max())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("stages", type=int, nargs="+")
    parser.add_argument("--configs", nargs="*", default=[], help="also run CATS with these DeepSpeed JSONs")
    parser.add_argument("--surgery", action="store_true", help="also run PCGrad and MGDA on ZeRO-2")
    parser.add_argument("--pretrained", help="a pretrained checkpoint's directory instead of the tiny preset")
    parser.add_argument("--objective", default="lookahead", help="the objective of the cats mode")
    parser.add_argument("--local_rank", type=int)
    args = parser.parse_args()
    out, stages = args.out, args.stages
    distributed.init()
    torch.set_num_threads(1)
    train = [synthetic_task(f"t{n}", size, seed=n) for n, size in enumerate(TASK_SIZES)]
    valid = [synthetic_task(f"t{n}", 12, seed=100 + n) for n in range(len(TASK_SIZES))]
    modes, objective = (("plain", "ones", "realized", "cats") if args.pretrained else MODES), args.objective
    if args.pretrained:
        hf_config = pretrained.load_config(args.pretrained)
        assert (hf_config.pad_token_id, hf_config.decoder_start_token_id) == (PAD, EOS), "a fairseq-style model"
        # no dropout, as the preset's config: every engine must see the same function of its weights
        hf_config.dropout = hf_config.attention_dropout = hf_config.activation_dropout = 0.0
        model = AutoModelForSeq2SeqLM.from_pretrained(args.pretrained, config=hf_config)   # whole, for the reference
        load = lambda ds_config: pretrained.load_model(args.pretrained, hf_config, "", ds_config, torch.float32)  # noqa: E731
    else:
        model = load = build_model(build_hf_config(make_config(2, "plain").model, VOCAB, 16, PAD, 0, EOS), seed=7)
    initial = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]).tolist()
    results = {"world_size": distributed.world_size(), "initial": initial, "stages": {}}
    for stage in stages:
        results["stages"][stage] = {mode: run_engine(stage, mode, train, valid, load, objective=objective)
                                    for mode in modes}
    # other DeepSpeed JSONs (low precision: the Gram matrix must come out unscaled, fp16 divides by loss_scale**2)
    results["configs"] = {path: run_engine(2, "cats", train, valid, model, path) for path in args.configs}
    if args.surgery:
        results["surgery"] = {mode: run_engine(2, mode, train, valid, model) for mode in SURGERY}
    if distributed.rank() == 0:
        results["reference"] = dense_reference(train, valid, model, objective=objective)
        if "weights" in modes:
            results["weights_reference"] = dense_reference(train, valid, model, "weights")
        if args.surgery:
            results["surgery_reference"] = {mode: dense_reference(train, valid, model, mode) for mode in SURGERY}
        results["errors"] = errors(results)
        with open(out, "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main()
