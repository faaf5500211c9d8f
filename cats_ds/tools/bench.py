"""Cost of CATS: plain ZeRO and CATS ZeRO side by side, same process group, same batches.

One measurement (run it under the launcher; prints one line per rank):

    DS_ACCELERATOR=cpu deepspeed --num_accelerators 2 --module cats_ds.tools.bench [--stage 2] [--tasks 8]
        [--config cats_ds/configs/bible8_cpu.yaml] [--precision fp32|bf16] [--steps 20] [--warmup K]
        [--peak-tflops P] [--json FILE] [key.sub=value ...]

The table over ZeRO stages and rank counts (launches the measurement once per combination and
prints a markdown table; --out also writes it with the command, date, machine and load average):

    DS_ACCELERATOR=cpu python -m cats_ds.tools.bench --ranks 1 2 --stages 1 2 3 --steps 30 [--out FILE] [...]

The cost per variant (plain, each named CATS variant of cats_ds/cats/variants.py, pcgrad, mgda),
one engine each in the same process on the same plans, every variant updating on every step;
with --ranks/--stages the same as a table (second_order's M: add e.g. cats.curvature_every=5):

    DS_ACCELERATOR=cpu python -m cats_ds.tools.bench --variants all|NAME,NAME --ranks 1 --stages 2 [--out FILE]

All engines start from the same weights and consume the very same plans. Memory first: each
engine is built and runs the warmup steps alone (by default up to CATS's first update, so its
dev meta pass and meta buffer are included), and its memory is what it adds over the level
before it was built: the peak, and what it still holds afterwards (CUDA: allocated bytes; CPU:
resident set size; see ``MemoryMeter``). Then the timed steps rotate the engines' order
every step, so machine noise hits all alike. Reported per rank: mean step time (CATS's meta
pass, every cats.interval steps, included), training tokens/s (source+target, all ranks), the
ratio, the median ratio of steps without a meta pass, CATS's buffer memory against the
partition size, each engine's memory, and the model TFLOP/s of the training batches
(cats_ds.tools.sizes.training_flops; CATS's meta pass is extra work, not counted), as model FLOP
utilization when ``--peak-tflops`` gives the device's measured matrix rate. Step times are taken
with the device's queue drained before and after each step. The model, batch and CATS settings come from the run
config (default: the embedded default's), so the figures describe what users run; with
``model.pretrained`` the checkpoint's architecture and vocabulary, randomly initialized. Synthetic
token data (random ids, Bible-like lengths) keeps the benchmark self-contained.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from cats_ds import distributed, placement
from cats_ds.cats.hook import CATSHook
from cats_ds.cats.variants import VARIANTS
from cats_ds.config import CONFIG_DIR, RunConfig, load_config
from cats_ds.data.sampler import LanguageSyncSampler, temperature_probs
from cats_ds.data.tasks import TaskData
from cats_ds.model import (ModelConfig, build_hf_config, build_model, count_parameters, fit_max_len, load_pretrained_config,
                           pretrained_dimensions)
from cats_ds.engine import build_engine
from cats_ds.tools.sizes import training_flops
from cats_ds.train import Run, train_step

PAD, EOS = 1, 2
# --variants: plain training, each named CATS variant, and the gradient-surgery baselines
VARIANT_RUNS = ("plain", *VARIANTS, "pcgrad", "mgda")


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


def timed_step(run: Run) -> tuple[float, dict]:
    """Seconds and metrics of one optimizer step (the device's queue drained on both sides)."""
    placement.synchronize()
    start = time.perf_counter()
    metrics = train_step(run)
    placement.synchronize()
    return time.perf_counter() - start, metrics


class MemoryMeter:
    """Memory an engine adds over the level before it was built: peak and held afterwards (MiB).

    CUDA: the caching allocator's allocated bytes. CPU: resident set size, with the kernel's peak
    reset before each engine (/proc/self/clear_refs). glibc would keep the first engine's freed
    activations in its heap and hand them to the second unseen, so while measuring, every
    allocation of 64 KiB or more is mmapped and returned to the system when freed (mallopt);
    ``timing()`` then restores heap reuse for the timed steps, at the thresholds glibc's own
    adaptive setting reaches in a long run (mmap from 32 MiB, heap trimmed beyond 64 MiB free).
    """

    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

    def __init__(self) -> None:
        self.cuda = placement.on_gpu()
        self._mallopt(self._M_MMAP_THRESHOLD, 64 * 1024)

    def start(self) -> float:
        gc.collect()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2 ** 20
        try:
            Path("/proc/self/clear_refs").write_text("5")   # peak RSS := current RSS (Linux >= 4.0)
        except OSError:
            pass    # the peak is then the process's lifetime peak: an upper bound
        return psutil.Process().memory_info().rss / 2 ** 20

    def since(self, base: float) -> dict[str, float]:
        if self.cuda:
            peak, held = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        else:
            peak, held = _vm_hwm_bytes(), psutil.Process().memory_info().rss
        return {"peak_mib": peak / 2 ** 20 - base, "held_mib": held / 2 ** 20 - base}

    def timing(self) -> None:
        self._mallopt(self._M_MMAP_THRESHOLD, 32 * 2 ** 20)
        self._mallopt(self._M_TRIM_THRESHOLD, 64 * 2 ** 20)

    def _mallopt(self, option: int, value: int) -> None:
        if not self.cuda and platform.libc_ver()[0] == "glibc":
            ctypes.CDLL(ctypes.util.find_library("c")).mallopt(option, value)


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_peak_mib() -> float:
    """The whole process's peak (both engines): CUDA max allocated, else peak RSS."""
    if placement.on_gpu():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_update_step(config: RunConfig) -> int:
    """The step of CATS's first update (with its dev meta pass): cats.warmup_steps + cats.interval."""
    return config.cats.warmup_steps + config.cats.interval


def make_run(config: RunConfig, model, tasks: list[TaskData], plans: FixedPlans) -> Run:
    engine = build_engine(config, copy.deepcopy(model))
    probs = temperature_probs([len(t) for t in tasks], config.sampling.temperature)
    pad, start = model.config.pad_token_id, model.config.decoder_start_token_id
    return Run(config, engine, tasks, tasks, plans, CATSHook.build(config, engine, tasks, pad, start, probs), pad, start)


def without_cats(config: RunConfig) -> RunConfig:
    plain = copy.deepcopy(config)
    plain.cats.enabled = False
    return plain


def build_runs(configs: dict[str, RunConfig], model, tasks: list[TaskData], plans: FixedPlans, warmup_plans: list,
               meter: MemoryMeter) -> tuple[dict[str, Run], dict[str, dict]]:
    """Builds one engine per config in order, each warmed up alone on the same plans; returns runs
    and their memory.

    A throwaway plain engine takes one step first, so that one-time costs (library set-up, the
    first collectives' buffers) are in no engine's figure.
    """
    primer = make_run(without_cats(next(iter(configs.values()))), model, tasks, plans)
    plans.plan = warmup_plans[0]
    train_step(primer)
    del primer
    runs, memory = {}, {}
    for name, config in configs.items():
        base = meter.start()
        runs[name] = make_run(config, model, tasks, plans)
        for plan in warmup_plans:
            plans.plan = plan
            train_step(runs[name])
        memory[name] = meter.since(base)
    return runs, memory


def timed_steps(runs: dict[str, Run], sampler: LanguageSyncSampler, plans: FixedPlans, steps: int) -> list[dict]:
    """Times every run on the same plans, the order rotated every step so that machine noise hits
    all alike. Per step: {name: (seconds, metrics, whether the step ran a dev meta pass)}."""
    names, timeline = list(runs), []
    for step in range(steps):
        plans.plan = sampler.next_step()
        order = names[step % len(names):] + names[:step % len(names)]
        entry = {}
        for name in order:
            cats = runs[name].cats
            meta_step = cats is not None and cats.scaler.update_due() and cats.scaler.config.meta_source == "dev"
            seconds, metrics = timed_step(runs[name])
            entry[name] = (seconds, metrics, meta_step)
        timeline.append(entry)
    return timeline


def stage_config(args: argparse.Namespace, overrides: list[str]) -> RunConfig:
    """The run config with the ZeRO stage and precision of the arguments."""
    suffix = "" if args.precision == "fp32" else f"_{args.precision}"
    return load_config(args.config, [f"train.ds_config=ds_configs/zero{args.stage}{suffix}.json", *overrides])


def setup(args: argparse.Namespace, config: RunConfig) -> tuple[list[TaskData], object, float]:
    """Synthetic tasks, the model and the mean sequence length. With model.pretrained, the
    checkpoint's architecture and vocabulary, randomly initialized: timing needs no weights."""
    max_len = config.data.max_len
    if config.model.pretrained:
        from transformers import AutoModelForSeq2SeqLM
        torch.manual_seed(config.train.seed)
        hf_config = load_pretrained_config(config.model, max_len, config.data.max_len_auto)
        max_len = fit_max_len(max_len, hf_config)
        model = AutoModelForSeq2SeqLM.from_config(hf_config)
    else:
        model = build_model(build_hf_config(config.model, config.data.vocab_size, max_len + 2, PAD, 0, EOS),
                            config.train.seed)
    tasks = synthetic_tasks(args.tasks, model.config.vocab_size, max_len, seed=1)
    seq_len = float(np.mean(np.concatenate([t.src_lengths() for t in tasks])))
    return tasks, model, seq_len


def flop_dimensions(config: RunConfig, model) -> tuple[ModelConfig, int]:
    """The dimensions and vocabulary the FLOP formula reads: the preset's, or the checkpoint's."""
    if config.model.pretrained:
        return pretrained_dimensions(model.config), model.config.vocab_size
    return config.model, config.data.vocab_size


def plan_sampler(config: RunConfig, tasks: list[TaskData]) -> LanguageSyncSampler:
    probs = temperature_probs([len(t) for t in tasks], config.sampling.temperature)
    return LanguageSyncSampler([t.lengths() for t in tasks], probs, config.sampling.tokens_per_step,
                               config.sampling.max_tokens_per_micro, seed=1, rank=distributed.rank(),
                               world_size=distributed.world_size(), sort_block=config.sampling.sort_block)


def init_process() -> MemoryMeter:
    distributed.init()
    if not placement.on_gpu():
        torch.set_num_threads(1)
        torch.set_flush_denormal(True)
    return MemoryMeter()


def measure(args: argparse.Namespace) -> dict:
    """One stage at this launch's world size; returns this rank's result (printed on rank 0)."""
    meter = init_process()
    config = stage_config(args, args.overrides)
    tasks, model, seq_len = setup(args, config)
    sampler, plans = plan_sampler(config, tasks), FixedPlans()
    warmup = args.warmup if args.warmup is not None else first_update_step(config)
    runs, memory = build_runs({"plain": without_cats(config), "cats": config}, model, tasks, plans,
                              [sampler.next_step() for _ in range(warmup)], meter)
    meter.timing()
    times, tokens, flops = {"plain": [], "cats": []}, {"plain": 0.0, "cats": 0.0}, {"plain": 0.0, "cats": 0.0}
    without_meta = []   # CATS/plain ratio of the steps that ran no meta pass
    for entry in timed_steps(runs, sampler, plans, args.steps):
        for name, (seconds, metrics, _) in entry.items():
            times[name].append(seconds)
            tokens[name] += metrics["target_tokens"] + metrics["source_tokens"]
            # the training batch's model FLOPs on this rank; CATS's meta pass is extra work, not counted
            flops[name] += training_flops(*flop_dimensions(config, model), metrics["source_tokens"],
                                          metrics["target_tokens"], seq_len) / distributed.world_size()
        if not entry["cats"][2]:
            without_meta.append(entry["cats"][0] / entry["plain"][0])
    buffers = runs["cats"].cats.buffers
    result = {
        "stage": args.stage, "world_size": distributed.world_size(), "tasks": args.tasks,
        "parameters": count_parameters(model), "cats_interval": config.cats.interval, "warmup": warmup,
        "steps": args.steps, "tokens_per_step": config.sampling.tokens_per_step,
        "plain_step_s": statistics.mean(times["plain"]), "cats_step_s": statistics.mean(times["cats"]),
        "plain_tokens_per_s": tokens["plain"] / sum(times["plain"]),
        "cats_tokens_per_s": tokens["cats"] / sum(times["cats"]),
        "precision": args.precision, "device": _machine(),
        **{f"{name}_model_tflops": flops[name] / sum(times[name]) / 1e12 for name in times},
        "ratio_without_meta_pass": statistics.median(without_meta) if without_meta else float("nan"),
        "partition_elements": buffers.tasks.shape[1], "meta_buffer": buffers.meta is not None,
        "cats_buffer_mib": sum(t.numel() * t.element_size() for t in (buffers.tasks, buffers.meta) if t is not None)
        / 2 ** 20,
        "memory": memory, "process_peak_mib": process_peak_mib(),
    }
    result["ratio"] = result["cats_step_s"] / result["plain_step_s"]
    if args.peak_tflops:   # model FLOP utilization against the device's measured matrix rate
        for name in times:
            result[f"{name}_mfu"] = result[f"{name}_model_tflops"] / args.peak_tflops
    report = distributed.all_gather_objects(result)
    if distributed.rank() == 0:
        for r, item in enumerate(report):
            print(f"rank {r}: ZeRO-{item['stage']} W={item['world_size']} N={item['tasks']} "
                  f"params={item['parameters']:,} plain {item['plain_step_s']:.3f}s cats {item['cats_step_s']:.3f}s "
                  f"ratio {item['ratio']:.3f} (steps without meta pass: {item['ratio_without_meta_pass']:.3f}); "
                  f"tokens/s plain {item['plain_tokens_per_s']:.0f} cats {item['cats_tokens_per_s']:.0f}; "
                  f"model TFLOP/s plain {item['plain_model_tflops']:.3g} cats {item['cats_model_tflops']:.3g}; "
                  f"partition {item['partition_elements']:,} elements, "
                  f"CATS buffers {item['cats_buffer_mib']:.1f} MiB; "
                  f"memory {json.dumps(item['memory'])} MiB; process peak {item['process_peak_mib']:.0f} MiB")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return result


# ----------------------------------------------------------------------------------------------
# the cost per variant (--variants)

# every variant updates on every step, so its figures are the cost of an update; a variant's own
# interval divides its meta-pass share of the cost
EVERY_STEP = ["cats.warmup_steps=0", "cats.interval=1"]


def variant_overrides(name: str) -> list[str]:
    """The overrides that make the run config one of VARIANT_RUNS (before EVERY_STEP and the user's)."""
    if name == "plain":
        return ["cats.enabled=false"]
    if name in ("pcgrad", "mgda"):
        return ["cats.enabled=true", f"cats.method={name}"]
    return ["cats.enabled=true", f"cats.variant={name}"]


def variant_names(text: str) -> list[str]:
    """--variants: ``all`` or names of VARIANT_RUNS, comma-separated; plain always, first (the ratios' base)."""
    names = list(VARIANT_RUNS) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANT_RUNS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected all or names of {', '.join(VARIANT_RUNS)} "
                                         f"separated by commas (unknown: {', '.join(unknown) or 'none given'})")
    return ["plain", *dict.fromkeys(name for name in names if name != "plain")]


def measure_variants(args: argparse.Namespace) -> dict:
    """Every variant of ``args.variants`` (plain first) on the same plans, this launch's world size
    and stage; returns this rank's result (printed and written on rank 0)."""
    meter = init_process()
    configs = {name: stage_config(args, [*variant_overrides(name), *EVERY_STEP, *args.overrides])
               for name in args.variants}
    tasks, model, _ = setup(args, configs["plain"])
    sampler, plans = plan_sampler(configs["plain"], tasks), FixedPlans()
    warmup = args.warmup if args.warmup is not None else 1
    runs, memory = build_runs(configs, model, tasks, plans, [sampler.next_step() for _ in range(warmup)], meter)
    meter.timing()
    timeline = timed_steps(runs, sampler, plans, args.steps)
    variants = {}
    for name, config in configs.items():
        # M's time on the steps that computed it (second_order; the hook logs it)
        curvature = [entry[name][1].get("cats", {}).get("curvature_s") for entry in timeline]
        variants[name] = {"step_s": statistics.mean(entry[name][0] for entry in timeline), "memory": memory[name],
                          "curvature_s": [seconds for seconds in curvature if seconds is not None],
                          "curvature_every": config.cats.curvature_every}
    result = {"stage": args.stage, "world_size": distributed.world_size(), "tasks": args.tasks,
              "parameters": count_parameters(model), "cats_interval": 1, "warmup": warmup, "steps": args.steps,
              "tokens_per_step": configs["plain"].sampling.tokens_per_step, "precision": args.precision,
              "device": _machine(), "variants": variants}
    report = distributed.all_gather_objects(result)
    if distributed.rank() == 0:
        print("\n".join(f"rank {r}: ZeRO-{item['stage']} W={item['world_size']} {name} "
                        f"{cost['step_s']:.3f}s/step ({cost['step_s'] / item['variants']['plain']['step_s']:.3f} "
                        f"x plain), memory {json.dumps(cost['memory'])} MiB, M {cost['curvature_s']} s"
                        for r, item in enumerate(report) for name, cost in item["variants"].items()))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return result


def variants_table(reports: list[list[dict]]) -> str:
    """One row per launch and variant: time (mean over ranks) against plain, memory beyond plain
    (max over ranks), and the curvature term's time per M and amortized per step (mean over ranks)."""
    lines = ["| ZeRO | ranks | variant | s/step | time vs plain | peak MiB | extra peak MiB | extra held MiB "
             "| M computed | s per M | M s/step amortized |",
             "|---:|---:|---|" + "---:|" * 8]
    for ranks in reports:
        plain_s = _mean([r["variants"]["plain"] for r in ranks], "step_s")
        for name in ranks[0]["variants"]:
            costs = [r["variants"][name] for r in ranks]
            step_s = _mean(costs, "step_s")
            extra = {key: max(r["variants"][name]["memory"][key] - r["variants"]["plain"]["memory"][key]
                              for r in ranks) for key in ("peak_mib", "held_mib")}
            cells = [ranks[0]["stage"], ranks[0]["world_size"], name, f"{step_s:.3f}", f"{step_s / plain_s:.3f}",
                     f"{max(c['memory']['peak_mib'] for c in costs):.0f}", f"{extra['peak_mib']:.0f}",
                     f"{extra['held_mib']:.0f}", *_curvature_cells(costs, ranks[0]["steps"])]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _curvature_cells(costs: list[dict], steps: int) -> list[str]:
    """How often M was computed (and cats.curvature_every), its mean time, and its time per timed step."""
    times = [seconds for cost in costs for seconds in cost["curvature_s"]]
    if not times:
        return ["-", "-", "-"]
    per_step = statistics.mean(sum(cost["curvature_s"]) / steps for cost in costs)
    return [f"{len(costs[0]['curvature_s'])}x (every {costs[0]['curvature_every']})",
            f"{statistics.mean(times):.3f}", f"{per_step:.3f}"]


# ----------------------------------------------------------------------------------------------
# the table over stages and rank counts


def launch(args: argparse.Namespace, world: int, stage: int, json_path: Path) -> list[dict]:
    """Runs one measurement under the deepspeed launcher; returns its per-rank results."""
    launcher = Path(sys.executable).with_name("deepspeed")
    command = [str(launcher), "--num_accelerators", str(world), "--master_port", str(distributed.free_port()),
               "--module", "cats_ds.tools.bench", "--config", args.config, "--stage", str(stage),
               "--tasks", str(args.tasks),
               "--precision", args.precision, *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []),
               "--steps", str(args.steps), "--json", str(json_path),
               *(["--variants", ",".join(args.variants)] if args.variants else []),
               *(["--warmup", str(args.warmup)] if args.warmup is not None else []), *args.overrides]
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        raise SystemExit(f"benchmark ZeRO-{stage} W={world} failed ({result.returncode}):\n"
                         f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    print("\n".join(line for line in result.stdout.splitlines() if line.startswith("rank ")), flush=True)
    return json.loads(json_path.read_text())


def markdown_table(reports: list[list[dict]]) -> str:
    """One row per launch: time and tokens/s (mean over ranks), memory per rank (max over ranks)."""
    lines = ["| ZeRO | ranks | plain s/step | CATS s/step | CATS/plain time | without meta pass "
             "| plain tokens/s | CATS tokens/s | plain peak MiB | CATS peak MiB | CATS/plain peak "
             "| CATS buffers MiB | process peak MiB |",
             "|---:|---:|" + "---:|" * 11]
    for ranks in reports:
        plain_s, cats_s = _mean(ranks, "plain_step_s"), _mean(ranks, "cats_step_s")
        plain_peak, cats_peak = (max(r["memory"][m]["peak_mib"] for r in ranks) for m in ("plain", "cats"))
        cells = [ranks[0]["stage"], ranks[0]["world_size"], f"{plain_s:.3f}", f"{cats_s:.3f}",
                 f"{cats_s / plain_s:.3f}", f"{_mean(ranks, 'ratio_without_meta_pass'):.3f}",
                 f"{_mean(ranks, 'plain_tokens_per_s'):.0f}", f"{_mean(ranks, 'cats_tokens_per_s'):.0f}",
                 f"{plain_peak:.0f}", f"{cats_peak:.0f}", f"{cats_peak / plain_peak:.2f}",
                 f"{max(r['cats_buffer_mib'] for r in ranks):.1f}", f"{max(r['process_peak_mib'] for r in ranks):.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _mean(ranks: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in ranks)


def table(args: argparse.Namespace) -> str:
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        reports = [launch(args, world, stage, Path(tmp) / f"w{world}_s{stage}.json")
                   for world in args.ranks for stage in args.stages]
    text = variants_table(reports) if args.variants else markdown_table(reports)
    first, seconds = reports[0][0], (datetime.datetime.now(datetime.timezone.utc) - started).seconds
    header = (f"Command: `{shlex.join(['python', '-m', 'cats_ds.tools.bench', *sys.argv[1:]])}`\n\n"
              f"Started {started:%Y-%m-%d %H:%M} UTC, took {seconds} s; {_machine()}; load average (1, 5, 15 min) "
              f"before {_load(load_before)}, after {_load(os.getloadavg())}.\n"
              f"{first['parameters']:,} parameters, N={first['tasks']} tasks, {first['tokens_per_step']} tokens per "
              f"step, {first['warmup']} warmup and {first['steps']} timed steps per engine, CATS interval "
              f"{first['cats_interval']}{VARIANTS_NOTE if args.variants else ''}.\n")
    if args.out:
        Path(args.out).write_text(header + "\n" + text + "\n")
    return header + "\n" + text


VARIANTS_NOTE = (" (every variant updates on every step: the figures are its cost per update); extra MiB: "
                 "beyond plain's; M: second_order's curvature matrix, logged per computation by the CATS hook")


def _machine() -> str:
    if placement.on_gpu():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), 1 thread per rank"


def _load(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> dict | str:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG_DIR / "bible8_cpu.yaml"))
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="ds_configs/zero{stage}.json or zero{stage}_bf16.json")
    parser.add_argument("--peak-tflops", type=float, help="the device's measured matrix rate, for the MFU figures")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, help="untimed steps per engine, >= 1 (default: up to CATS's first update)")
    parser.add_argument("--json", help="also write the results to this file (rank 0)")
    parser.add_argument("--ranks", type=int, nargs="+", help="table mode: launch once per rank count and stage")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], help="table mode: ZeRO stages")
    parser.add_argument("--out", help="table mode: also write the table (with command, date, machine) here")
    parser.add_argument("--variants", type=variant_names, metavar="all|NAME,NAME",
                        help=f"the cost per variant instead, against plain: all, or some of {', '.join(VARIANT_RUNS)}")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="run-config overrides, e.g. cats.interval=1")
    args = parser.parse_args(argv)
    if args.warmup is not None and args.warmup < 1:
        parser.error("--warmup must be >= 1: the memory figures need each engine's first optimizer step")
    if args.ranks:
        text = table(args)
        print(text)
        return text
    return measure_variants(args) if args.variants else measure(args)


if __name__ == "__main__":
    main()
