"""Cost of CATS: plain ZeRO and CATS ZeRO side by side, same process group, same batches.

    DS_ACCELERATOR=cpu deepspeed --num_accelerators 2 --module cats_ds.bench [--stage 2] [--tasks 8]
        [--config cats_ds/configs/bible8_cpu.yaml] [--steps 20] [key.sub=value ...]

Both engines start from the same weights and each step both consume the very same plan, in
alternating order, so machine noise hits both alike. The model, batch and CATS settings come
from the run config (default: the embedded default's), so the figures describe what users
run. Printed per rank: mean step time of each (CATS's dev-batch meta pass, every
cats.interval steps, is included in the mean), the ratio, the median ratio of steps without
a meta pass, CATS's buffer memory against the partition size, and the peak memory (CUDA: max
allocated per engine; CPU: the process's peak RSS, which covers both engines).
Synthetic token data (random ids, Bible-like lengths) keeps the benchmark self-contained.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time

import numpy as np
import torch

from cats_ds import distributed
from cats_ds.config import CONFIG_DIR, load_config
from cats_ds.data.sampler import LanguageSyncSampler, temperature_probs
from cats_ds.data.tasks import TaskData
from cats_ds.model import build_hf_config, build_model, count_parameters
from cats_ds.train import Run, build_cats, build_engine, train_step

PAD, EOS = 1, 2


def synthetic_tasks(num_tasks: int, vocab: int, max_len: int, seed: int) -> list[TaskData]:
    """Imbalanced tasks (half of them 20x smaller) with verse-like lengths (15 to max_len tokens)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for n in range(num_tasks):
        size = 4000 if n < num_tasks // 2 else 200
        src_lengths = rng.integers(15, max_len - 4, size)
        tgt_lengths = np.clip(src_lengths + rng.integers(-5, 6, size), 5, max_len)
        src = rng.integers(4, vocab, src_lengths.sum()).astype(np.int32)
        tgt = rng.integers(4, vocab, tgt_lengths.sum()).astype(np.int32)
        tasks.append(TaskData(f"task{n}", [f"task{n}"], src, np.concatenate([[0], np.cumsum(src_lengths)]),
                              tgt, np.concatenate([[0], np.cumsum(tgt_lengths)]), np.zeros(size, dtype=np.int64)))
    return tasks


class FixedPlans:
    """Serves the same plan to both runs of a step."""

    def __init__(self) -> None:
        self.plan = None

    def next_step(self):
        return self.plan


def timed_step(run: Run) -> float:
    start = time.perf_counter()
    train_step(run)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(CONFIG_DIR / "bible8_cpu.yaml"))
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file (rank 0)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="run-config overrides, e.g. cats.interval=1")
    args = parser.parse_args(argv)
    distributed.init()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
    config = load_config(args.config, [f"train.ds_config=ds_configs/zero{args.stage}.json", *args.overrides])
    tasks = synthetic_tasks(args.tasks, config.data.vocab_size, config.data.max_len, seed=1)
    model = build_model(build_hf_config(config.model, config.data.vocab_size, config.data.max_len + 2, PAD, 0, EOS),
                        config.train.seed)
    probs = temperature_probs([len(t) for t in tasks], config.sampling.temperature)
    sampler = LanguageSyncSampler([t.lengths() for t in tasks], probs, config.sampling.tokens_per_step, config.sampling.max_tokens_per_micro,
                                  seed=1, rank=distributed.rank(), world_size=distributed.world_size(),
                                  sort_block=config.sampling.sort_block)
    plans = FixedPlans()
    runs = {}
    for name, enabled in (("plain", False), ("cats", True)):
        run_config = copy.deepcopy(config)
        run_config.cats.enabled = enabled
        engine = build_engine(run_config, copy.deepcopy(model))
        runs[name] = Run(run_config, engine, tasks, tasks, plans, build_cats(run_config, engine, tasks), PAD, EOS)
    times = {"plain": [], "cats": []}
    without_meta = []   # CATS/plain ratio of the steps that ran no meta pass
    peaks = {}
    for step in range(args.warmup + args.steps):
        plans.plan = sampler.next_step()
        meta_step = runs["cats"].cats.scaler.update_due() and config.cats.meta_source == "dev"
        order = ("plain", "cats") if step % 2 == 0 else ("cats", "plain")
        elapsed = {}
        for name in order:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            elapsed[name] = timed_step(runs[name])
            peaks[name] = max(peaks.get(name, 0.0), peak_memory_mib())
        if step >= args.warmup:
            for name in elapsed:
                times[name].append(elapsed[name])
            if not meta_step:
                without_meta.append(elapsed["cats"] / elapsed["plain"])
    buffers = runs["cats"].cats.buffers
    partition = buffers.tasks.shape[1]
    result = {
        "stage": args.stage, "world_size": distributed.world_size(), "tasks": args.tasks,
        "parameters": count_parameters(model), "cats_interval": config.cats.interval,
        "plain_step_s": statistics.mean(times["plain"]), "cats_step_s": statistics.mean(times["cats"]),
        "ratio_without_meta_pass": statistics.median(without_meta) if without_meta else float("nan"),
        "partition_elements": partition,
        "cats_buffer_mib": (buffers.tasks.numel() * buffers.tasks.element_size()
                            + (buffers.meta.numel() * buffers.meta.element_size() if buffers.meta is not None else 0))
        / 2 ** 20,
        "peak_mib": peaks,
    }
    result["ratio"] = result["cats_step_s"] / result["plain_step_s"]
    result["tokens_per_step"] = config.sampling.tokens_per_step
    report = distributed.all_gather_objects(result)
    if distributed.rank() == 0:
        for r, item in enumerate(report):
            print(f"rank {r}: ZeRO-{item['stage']} W={item['world_size']} N={item['tasks']} "
                  f"params={item['parameters']:,} plain {item['plain_step_s']:.3f}s cats {item['cats_step_s']:.3f}s "
                  f"ratio {item['ratio']:.3f} (steps without meta pass: {item['ratio_without_meta_pass']:.3f}); "
                  f"partition {item['partition_elements']:,} elements, "
                  f"CATS buffers {item['cats_buffer_mib']:.1f} MiB; peak {json.dumps(item['peak_mib'])} MiB")
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
