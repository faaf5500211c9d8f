"""The training loop, top to bottom in one file.

    python -m cats_ds.train --config cats_ds/configs/bible8_cpu.yaml [key.sub=value ...]
    deepspeed --num_accelerators 2 --module cats_ds.train --config ... (DS_ACCELERATOR=cpu on CPU)

One optimizer step = one plan from the language-synchronous sampler: a window of micro-steps
per task, the same task on every rank in every micro-step. With CATS on, each window ends on
a DeepSpeed accumulation boundary and CATS enters only as calls to its component
(cats_ds/cats/hook.py): ``begin_step`` (the dev meta pass), ``begin_window``/``end_window``
(the task's gradient into its buffer) and ``before_optimizer_step`` (statistics, scales, the
rescaled sum written back into the partition before ``engine.step()``). With CATS off the
very same loop runs with one boundary per step.

Every loss is a sum over target tokens divided by the step's global target-token count, so
sum_n g_n is exactly the plain gradient of the mean token loss over the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import numpy as np
import torch
import yaml
from tqdm import tqdm

from cats_ds import checkpoint, distributed, faults, placement, rundir
from cats_ds.cats.hook import CATSHook
from cats_ds.cats.zero import discard_gradients
from cats_ds.config import RunConfig, TrainConfig, from_command_line
from cats_ds.data import pipeline
from cats_ds.data.sampler import LanguageSyncSampler, reshard_states, temperature_probs
from cats_ds.data.tasks import TaskData, collate
from cats_ds.evaluate import METRICS, dev_losses, evaluate_bleu, group_means, results_table, source_use_check
from cats_ds.loss import plan_tokens, token_loss
from cats_ds.metrics import MetricsWriter, run_file
from cats_ds.model import build_hf_config, build_model, count_parameters, describe

log = logging.getLogger("cats_ds.train")


@dataclass
class Run:
    """The pieces one training step touches."""

    config: RunConfig
    engine: object
    train_tasks: list[TaskData]
    valid_tasks: list[TaskData]
    sampler: LanguageSyncSampler
    cats: CATSHook | None                        # everything CATS adds to a step; None: plain training
    pad_id: int
    eos_id: int
    step: int = 0
    best: dict = field(default_factory=dict)     # {"metric": value, "step": n, "stale_evals": k}
    nonfinite_steps: int = 0                     # steps skipped for a NaN/Inf loss or gradient, in all
    nonfinite_streak: int = 0                    # ... and in a row up to now


# ----------------------------------------------------------------------------------------------
# one optimizer step


def train_step(run: Run) -> dict:
    """Runs one optimizer step and returns its metrics (identical on every rank).

    A step whose loss, gradient or CATS statistics are not finite is skipped: no optimizer
    update, the TaskScaler untouched (fp16: DeepSpeed's loss scaler skips it); see _count_nonfinite."""
    config, engine, cats = run.config, run.engine, run.cats
    world = distributed.world_size()
    plan = run.sampler.next_step()
    num_tasks = len(run.train_tasks)
    tokens = plan_tokens(plan, run.train_tasks, num_tasks)        # [2, N]: target, source tokens (global)
    target_total = float(tokens[0].sum())
    if cats:
        cats.begin_step()

    sums = placement.zeros(num_tasks)                             # summed NLL per task (this rank)
    for index, window in enumerate(plan):
        task = run.train_tasks[window.task]
        if cats:
            cats.begin_window()
        last_window = index == len(plan) - 1
        for k, micro in enumerate(window.micro_batches):
            last_micro = k == len(window.micro_batches) - 1
            engine.set_gradient_accumulation_boundary(last_micro and (cats is not None or last_window))
            loss = token_loss(engine, placement.to_device(collate(task, micro, run.pad_id)),
                              config.optim.label_smoothing, run.pad_id, run.eos_id)
            if faults.poisons_loss(run.step + 1, window.task):
                loss = dataclasses.replace(loss, smoothed_sum=loss.smoothed_sum * math.nan,
                                           nll_sum=loss.nll_sum * math.nan)
            # DeepSpeed averages over ranks; scaling by world makes the result a sum over the global batch
            engine.backward(loss.smoothed_sum * (world / target_total))
            sums[window.task] += loss.nll_sum
        if cats:
            cats.end_window(window.task)
    sums = distributed.all_reduce_sum(sums).cpu()
    task_loss = (sums / tokens[0].clamp(min=1)).numpy()

    metrics = {"loss": float(sums.sum() / target_total), "task_loss": task_loss.tolist(),
               "target_tokens": target_total, "source_tokens": float(tokens[1].sum()),
               "token_share": (tokens[0] / target_total).tolist()}
    finite = bool(np.isfinite(task_loss).all())
    if cats:
        metrics["cats"], finite = cats.before_optimizer_step(task_loss, tokens[0] / target_total, finite, run.step)
    if finite or engine.fp16_enabled():
        engine.step()       # fp16: DeepSpeed's loss scaler sees the overflow, skips and backs off
    else:
        discard_gradients(engine)
    applied = finite and bool(engine.was_step_applied())
    metrics.update(lr=engine.get_lr()[0], step_applied=applied, grad_norm=_grad_norm(engine, applied))
    run.step += 1
    # an fp16 gradient overflow with a finite loss is the loss scaler's business, not divergence
    loss_scaler_skip = engine.fp16_enabled() and bool(np.isfinite(task_loss).all())
    _count_nonfinite(run, applied, loss_scaler_skip, metrics)
    return metrics


def _grad_norm(engine, applied: bool) -> float:
    grad_norm = engine.get_global_grad_norm() if applied else None
    return float(grad_norm) if grad_norm is not None else float("nan")


def _count_nonfinite(run: Run, applied: bool, loss_scaler_skip: bool, metrics: dict) -> None:
    """Counts skipped steps; a run that keeps producing NaN/Inf stops instead of training on garbage."""
    run.nonfinite_streak = 0 if applied or loss_scaler_skip else run.nonfinite_streak + 1
    run.nonfinite_steps += not applied
    metrics["nonfinite_steps"] = run.nonfinite_steps
    if not applied:
        bad = [run.train_tasks[n].name for n, value in enumerate(metrics["task_loss"]) if not math.isfinite(value)]
        log.warning("step %d skipped: non-finite %s", run.step, f"loss in {', '.join(bad)}" if bad else "gradient")
    limit = run.config.train.max_nonfinite_steps
    if run.nonfinite_streak >= limit:
        raise FloatingPointError(
            f"{limit} steps in a row had a non-finite loss or gradient (up to step {run.step}); the model is "
            "diverging: lower optim.lr, raise optim.warmup_steps or check the data, then resume from the last "
            "checkpoint (train.max_nonfinite_steps sets this limit)")


# ----------------------------------------------------------------------------------------------
# set-up


def build_engine(config: RunConfig, model: torch.nn.Module, load_universal: bool = False):
    """deepspeed.initialize with the run's DeepSpeed JSON, our AdamW and inverse-sqrt schedule;
    ``load_universal`` when the checkpoint to resume from is a universal one (new world size)."""
    ds_config = _load_ds_config(Path(config.train.ds_config), config)
    if load_universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    # DeepSpeed casts parameters but not buffers (M2M100's sinusoidal position table), and CPU
    # kernels refuse mixed dtypes: cast the whole module first
    model = model.to(_model_dtype(ds_config))
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


def _model_dtype(ds_config: dict) -> torch.dtype:
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


# keys the trainer sets itself: a DeepSpeed JSON that sets them is refused
_OWNED_KEYS = ("optimizer", "scheduler", "train_batch_size", "train_micro_batch_size_per_gpu",
               "gradient_accumulation_steps", "gradient_clipping")


def _load_ds_config(path: Path, config: RunConfig) -> dict:
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


def prepare_data(config: RunConfig) -> pipeline.PreparedData:
    """Local rank 0 prepares (downloads, cleans, tokenizes, caches); the others then read the cache."""
    if distributed.local_rank() != 0:
        distributed.barrier()
    data = pipeline.prepare(config.data, threads=torch.get_num_threads())
    if distributed.local_rank() == 0:
        distributed.barrier()
    return data


def _set_threads(config: RunConfig) -> None:
    threads = config.train.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_SIZE", "1")))
    torch.set_num_threads(threads)
    # denormal floats make CPU matmuls several times slower late in training
    torch.set_flush_denormal(True)


# ----------------------------------------------------------------------------------------------
# checkpoints and evaluation


# settings a run may change when it resumes: how long it runs, how it logs, saves and evaluates
_RESUMABLE_CHANGES = ("train.run_dir", "train.max_steps", "train.max_minutes", "train.log_every", "train.save_every",
                      "train.keep_last", "train.keep_best", "train.max_nonfinite_steps", "train.threads",
                      "train.export", "train.device", "data.cache_dir", "eval.")


def trajectory_settings(config: RunConfig) -> dict:
    """The flattened settings a run's trajectory depends on (all but _RESUMABLE_CHANGES)."""
    flat = _flatten(dataclasses.asdict(config))
    return {key: value for key, value in flat.items() if not key.startswith(_RESUMABLE_CHANGES)}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def client_state(run: Run) -> dict:
    state = {"step": run.step, "best": run.best, "nonfinite_steps": run.nonfinite_steps,
             "settings": trajectory_settings(run.config), "per_rank": {"sampler": run.sampler.state_dict()}}
    if run.cats:
        state.update(run.cats.state_dict())
        state["per_rank"].update(run.cats.per_rank_state())
    return state


def restore(run: Run, state: dict, where: Path) -> None:
    """Continues the run saved in ``state`` (read from checkpoint ``where``)."""
    _check_same_settings(trajectory_settings(run.config), state["settings"], where)
    run.step, run.best, run.nonfinite_steps = state["step"], state["best"], state["nonfinite_steps"]
    own = _own_rank_state(state["per_rank"], run.config.train.seed, run.step)
    run.sampler.load_state_dict(own["sampler"])
    if run.cats:
        run.cats.load_state_dict(state, own, where)


def _check_same_settings(now: dict, saved: dict, where: Path) -> None:
    differing = sorted(key for key in now.keys() | saved.keys() if now.get(key) != saved.get(key))
    if differing:
        details = "; ".join(f"{key}: saved {saved.get(key)!r}, now {now.get(key)!r}" for key in differing)
        raise ValueError(f"{where} belongs to a run with other settings ({details}); resume with the saved "
                         "settings, or start a new run in another train.run_dir")


def _own_rank_state(per_rank: list[dict], seed: int, step: int) -> dict:
    """This rank's sampler states and RNG. After a world-size change the samplers are resharded
    (no example skipped, see reshard_states) and the RNG is seeded from (seed, step, rank)."""
    rank, world = distributed.rank(), distributed.world_size()
    if len(per_rank) == world:
        own = per_rank[rank]
        placement.set_rng_state(own["rng"])
        return own
    log.warning("resuming a %d-rank checkpoint on %d ranks: data shards are redistributed", len(per_rank), world)
    torch.manual_seed(int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]))
    return {key: reshard_states([state[key] for state in per_rank], world)[rank]
            for key in per_rank[0] if key != "rng"}


@contextlib.contextmanager
def evaluation_mode(engine):
    """No dropout while evaluating; back to training mode afterwards."""
    engine.eval()
    try:
        yield
    finally:
        engine.train()


def evaluate_dev(run: Run, data: pipeline.PreparedData) -> dict:
    with evaluation_mode(run.engine):
        return _evaluate_dev(run, data)


def _evaluate_dev(run: Run, data: pipeline.PreparedData) -> dict:
    config = run.config.eval
    losses = dev_losses(run.engine, run.valid_tasks, config, run.pad_id, run.eos_id)
    low = [i for i, name in enumerate(data.task_names) if name in data.low_resource]
    record = {"dev_loss": float(losses.mean()), "task_dev_loss": losses.tolist()}
    if low:
        record["dev_loss_low"] = float(losses[low].mean())
    if config.bleu_during_training or config.best_metric.startswith(("bleu", "chrf")):
        scores, _ = evaluate_bleu(run.engine.module, data.tokenizer, data.valid_text, config,
                                  synced=_zero3(run.engine), limit=config.test_sentences)
        record.update(bleu_summary(scores, data.low_resource_directions))
    return record


def bleu_summary(scores: dict, low_directions: set[str]) -> dict:
    """bleu, bleu_low, bleu_high, chrf, chrf_low, chrf_high (where the group exists)."""
    summary = {}
    for key in ("bleu", "chrf"):
        for group, value in group_means(scores, low_directions, key).items():
            summary[key if group == "all" else f"{key}_{group}"] = value
    return summary


def _update_best(run: Run, record: dict) -> bool:
    """Tracks the best evaluation; returns True when this one is the new best."""
    metric = run.config.eval.best_metric
    value = record.get(metric)
    if value is None:
        raise ValueError(f"eval.best_metric={metric!r} is not available (no low-resource tasks defined?)")
    higher = METRICS[metric]
    best = run.best.get("value")
    improved = best is None or (value > best if higher else value < best)
    if improved:
        run.best = {"metric": metric, "value": value, "step": run.step, "stale_evals": 0}
    else:
        run.best["stale_evals"] += 1
    return improved


def _zero3(engine) -> bool:
    return engine.zero_optimization_stage() == 3


# ----------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None) -> RunConfig:
    """The run config of the command line (cats_ds.config.from_command_line: --config, --help,
    --print-config, key.sub=value overrides)."""
    return from_command_line(argv, prog="python -m cats_ds.train", description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    distributed.init()
    try:
        with rundir.owned(config.train.run_dir):
            return train(config)
    finally:
        distributed.shutdown()


def train(config: RunConfig) -> dict:
    """Prepares data, model and engine, resumes if a checkpoint exists, trains and finishes."""
    placement.check_requested(config.train.device)
    rank = distributed.rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True)
    _set_threads(config)
    run_dir = Path(config.train.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    data = prepare_data(config)
    tokenizer = data.tokenizer
    hf_config = build_hf_config(config.model, tokenizer.vocab_size, config.data.max_len + 2,
                                tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    model = build_model(hf_config, config.train.seed, config.model.activation_checkpointing)
    log.info("model: %s, %s parameters; %d tasks: %s; world size %d", describe(config.model),
             f"{count_parameters(model):,}", len(data.task_names), ", ".join(data.task_names),
             distributed.world_size())
    checkpoints = run_dir / "checkpoints"
    resume = checkpoint.choose_resume(checkpoints)
    engine = build_engine(config, model, load_universal=bool(resume and resume.universal))
    probs = temperature_probs([len(t) for t in data.train], config.sampling.temperature)
    log.info("sampling T=%g: %s", config.sampling.temperature,
             ", ".join(f"{n} {p:.3f}" for n, p in zip(data.task_names, probs)))
    sampler = LanguageSyncSampler([t.lengths() for t in data.train], probs, config.sampling.tokens_per_step,
                                  config.sampling.max_tokens_per_micro, seed=config.train.seed,
                                  rank=rank, world_size=distributed.world_size(),
                                  sort_block=config.sampling.sort_block, task_names=data.task_names)
    cats = CATSHook.build(config, engine, data.valid, tokenizer.pad_id, tokenizer.eos_id, probs)
    run = Run(config, engine, data.train, data.valid, sampler, cats, tokenizer.pad_id, tokenizer.eos_id)
    if run.cats:
        log.info("CATS on: %s", config.cats)

    if resume:
        restore(run, checkpoint.load(engine, checkpoints, resume.tag), checkpoints / resume.tag)
        log.info("resumed from %s at step %d (saved by %d ranks)", checkpoints / resume.tag, run.step,
                 resume.saved_world_size)

    writer = MetricsWriter(run_dir, rank == 0, start_step=run.step)
    record = {"tasks": data.task_names, "low_resource": sorted(data.low_resource), "cats": config.cats.enabled,
              "parameters": count_parameters(model), "world_size": distributed.world_size(),
              "sampling_probs": probs.tolist(), "resumed_from": resume.tag if resume else None,
              "data": data.accounting}
    if run.cats:   # the CATS state training starts (or resumes) from
        record["cats_state"] = run.cats.describe_start()
    writer.write("run", run.step, record)
    with StopSignals() as signals:
        stop = train_loop(run, data, writer, checkpoints, signals)
    if stop == "signal":
        checkpoint.save(engine, checkpoints, run.step, client_state(run))
        log.info("%s received: checkpoint of step %d saved; run the same command again to resume",
                 signals.received, run.step)
        return {"step": run.step, "interrupted": signals.received}
    return finish(run, data, run_dir, checkpoints, stopped_early=stop == "patience")


class StopSignals:
    """SIGTERM and SIGUSR1 (what Slurm sends before a time limit or preemption) ask training to
    stop at the next step boundary, save a checkpoint and exit cleanly; the handlers only record
    the signal, so a save or an evaluation in progress is never cut."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _record(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name


def train_loop(run: Run, data: pipeline.PreparedData, writer: MetricsWriter, checkpoints: Path,
               signals: StopSignals) -> str:
    """Trains until max_steps, the time budget, early stopping or a stop signal; returns which
    ("max_steps", "time", "patience" or "signal")."""
    config = run.config
    started, first_step = time.monotonic(), run.step
    bar = tqdm(total=config.train.max_steps, initial=run.step, desc="train", unit="step",
               disable=distributed.rank() != 0, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)  # log files (Slurm, CI) get a line per 30 s
    window_tokens, window_start = 0.0, time.monotonic()
    while run.step < config.train.max_steps:
        metrics = train_step(run)
        window_tokens += metrics["target_tokens"] + metrics["source_tokens"]
        if run.step % config.train.log_every == 0 or run.step == config.train.max_steps:
            elapsed = time.monotonic() - window_start
            metrics["tokens_per_second"] = window_tokens / max(elapsed, 1e-9)
            window_tokens, window_start = 0.0, time.monotonic()
            writer.write("train", run.step, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_second']:.0f}", refresh=False)
            bar.total = _expected_last_step(run.step - first_step, time.monotonic() - started, run.step, config.train)
        bar.update(1)
        faults.inject("step", run.step)
        if config.eval.every_steps and run.step % config.eval.every_steps == 0:
            if _evaluate_and_track(run, data, writer, checkpoints):
                return "patience"
        if config.train.save_every and run.step % config.train.save_every == 0:
            checkpoint.save(run.engine, checkpoints, run.step, client_state(run))
            checkpoint.prune(checkpoints, config.train.keep_last)
        stop = _stop_requested(started, config.train.max_minutes, signals)
        if stop:
            log.info("stopping at step %d: %s", run.step,
                     "time budget reached" if stop == "time" else f"{signals.received} received")
            return stop
    bar.close()
    return "max_steps"


def _evaluate_and_track(run: Run, data, writer: MetricsWriter, checkpoints: Path) -> bool:
    """Dev evaluation, best checkpoint, early stopping; returns True when patience ran out."""
    record = evaluate_dev(run, data)
    improved = _update_best(run, record)
    writer.write("eval", run.step, {**record, "best": run.best})
    log.info("step %d: dev loss %.4f%s", run.step, record["dev_loss"], " (best)" if improved else "")
    if improved and run.config.train.keep_best:
        checkpoint.mark_best(checkpoints, checkpoint.save(run.engine, checkpoints, run.step, client_state(run)))
        checkpoint.prune(checkpoints, run.config.train.keep_last)
    patience = run.config.eval.patience
    return bool(patience) and run.best["stale_evals"] >= patience


def _expected_last_step(steps_done: int, elapsed: float, step: int, config: TrainConfig) -> int:
    """The step training will stop at: max_steps, or sooner where the time budget runs out first."""
    if not config.max_minutes or steps_done == 0:
        return config.max_steps
    remaining = max(0.0, 60 * config.max_minutes - elapsed)
    return min(config.max_steps, step + int(remaining * steps_done / elapsed))


def _stop_requested(started: float, budget_minutes: float, signals: StopSignals) -> str | None:
    """"signal", "time" or None. Every rank must stop at the same step: one all-reduce shares
    the slowest rank's clock and the stop signal any rank received (then recorded on all)."""
    received = signal.Signals[signals.received].value if signals.received else 0
    state = placement.as_tensor([time.monotonic() - started, received])
    elapsed, signum = distributed.all_reduce_max(state).tolist()
    if signum:
        signals.received = signal.Signals(int(signum)).name
        return "signal"
    return "time" if budget_minutes and elapsed >= 60 * budget_minutes else None


def finish(run: Run, data: pipeline.PreparedData, run_dir: Path, checkpoints: Path, stopped_early: bool) -> dict:
    """Last checkpoint, final dev evaluation, test BLEU table, results files, export."""
    config = run.config
    last_tag = checkpoint.save(run.engine, checkpoints, run.step, client_state(run))
    checkpoint.prune(checkpoints, config.train.keep_last)
    evaluated, dev = _evaluated_checkpoint(run, data, checkpoints, last_tag)
    with evaluation_mode(run.engine):
        scores, hypotheses = evaluate_bleu(run.engine.module, data.tokenizer, data.test, config.eval,
                                           synced=_zero3(run.engine), limit=config.eval.test_sentences)
    low_dirs = data.low_resource_directions
    results = {"step": run.step, "checkpoint": evaluated, "stopped_early": stopped_early, "dev": dev,
               "test": scores, **bleu_summary(scores, low_dirs), "low_resource_directions": sorted(low_dirs),
               "cats": config.cats.enabled}
    if distributed.rank() == 0:
        _write_results(run_dir, results, hypotheses, low_dirs)
    if config.train.export:
        export_dir = run_dir / "export"
        from cats_ds.export import export_model
        # evaluation's decoding limit is per batch (ratio x longest source); the export's is for the longest one
        longest_source = config.data.max_len + 2
        export_model(run.engine, data.tokenizer_path, export_dir, config.eval.beam,
                     int(config.eval.max_len_ratio * longest_source) + 10)
    return results


def _evaluated_checkpoint(run: Run, data: pipeline.PreparedData, checkpoints: Path, last_tag: str) -> tuple[dict, dict]:
    """The checkpoint the results describe ({"tag", "step"}) and its dev record: with evaluations
    during training and train.keep_best, the best by eval.best_metric, the final evaluation
    included (``best`` moves to the last checkpoint when it wins); else the last one. The best
    one is verified first; one that does not verify is reported and the last one evaluated."""
    last, dev = {"tag": last_tag, "step": run.step}, evaluate_dev(run, data)
    if not (run.config.eval.every_steps and run.best and run.config.train.keep_best):
        return last, dev
    if _update_best(run, dev):
        checkpoint.mark_best(checkpoints, last_tag)
        return last, dev
    best = {"tag": checkpoint.step_tag(run.best["step"]), "step": run.best["step"]}
    problem = checkpoint.why_unusable(checkpoints / best["tag"])
    if problem:
        log.error("not evaluating the best checkpoint: %s; the results describe the last one, %s", problem, last_tag)
        return last, dev
    log.info("evaluating the best checkpoint %s (by %s)", best["tag"], run.best["metric"])
    checkpoint.load(run.engine, checkpoints, best["tag"], load_optimizer=False)
    return best, evaluate_dev(run, data)


def _write_results(run_dir: Path, results: dict, hypotheses: dict, low_dirs: set[str]) -> None:
    table = results_table(results["test"], low_dirs)
    evaluated = results["checkpoint"]
    title = (f"Results of checkpoint {evaluated['tag']} (step {evaluated['step']}; "
             f"training ran to step {results['step']})")
    text = f"# {title}\n\n{table}\n\n{source_use_check(results['test'], low_dirs)}\n"
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(text)
    (run_dir / "hypotheses").mkdir(exist_ok=True)
    for name, lines in hypotheses.items():
        run_file(run_dir, f"hypotheses/test.{name}.txt").write_text("\n".join(lines) + "\n")
    print("\n" + text, flush=True)


if __name__ == "__main__":
    main()
