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
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from cats_ds import checkpoint, distributed, placement, rundir
from cats_ds.cats.hook import CATSHook
from cats_ds.config import RunConfig, from_command_line
from cats_ds.data import pipeline
from cats_ds.data.bible import BibleSourceError
from cats_ds.data.sampler import LanguageSyncSampler, temperature_probs
from cats_ds.data.tasks import TaskData, collate
from cats_ds.engine import build_engine, model_dtype, run_ds_config
from cats_ds.evaluate import METRICS, dev_losses, evaluate_bleu
from cats_ds.export import decoding_limit, export_model
from cats_ds.loss import plan_tokens, token_loss
from cats_ds.metrics import MetricsWriter
from cats_ds.model import (count_parameters, describe, fit_max_len, load_pretrained_config, load_pretrained_tokenizer,
                           make_model)
from cats_ds.nonfinite import NonFiniteGuard
from cats_ds.results import bleu_summary, write_results
from cats_ds.stopping import Stopping

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
    decoder_start_id: int                        # the model config's decoder_start_token_id
    step: int = 0
    best: dict = field(default_factory=dict)     # {"metric": value, "step": n, "stale_evals": k}
    nonfinite: NonFiniteGuard = field(init=False)  # takes or skips each optimizer step

    def __post_init__(self) -> None:
        self.nonfinite = NonFiniteGuard(self.config.train.max_nonfinite_steps, [t.name for t in self.train_tasks])


# ----------------------------------------------------------------------------------------------
# one optimizer step


def train_step(run: Run) -> dict:
    """Runs one optimizer step and returns its metrics (identical on every rank). A step with a
    non-finite loss, gradient or CATS statistics is skipped (cats_ds/nonfinite.py)."""
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
                              config.optim.label_smoothing, run.pad_id, run.decoder_start_id)
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
    statistics_finite = True
    if cats:
        metrics["cats"], statistics_finite = cats.before_optimizer_step(task_loss, tokens[0] / target_total, run.step)
    applied = run.nonfinite.step(engine, task_loss, statistics_finite, run.step + 1)
    run.step += 1
    metrics.update(lr=engine.get_lr()[0], step_applied=applied, grad_norm=_grad_norm(engine, applied),
                   nonfinite_steps=run.nonfinite.total)
    return metrics


def _grad_norm(engine, applied: bool) -> float:
    grad_norm = engine.get_global_grad_norm() if applied else None
    return float(grad_norm) if grad_norm is not None else float("nan")


# ----------------------------------------------------------------------------------------------
# set-up


def prepare_data(config: RunConfig, pretrained_tokenizer=None) -> pipeline.PreparedData:
    """Local rank 0 prepares (downloads, cleans, tokenizes, caches); the others then read the cache.
    pretrained_tokenizer: a pretrained model's (cats_ds/families), used instead of training one."""
    if distributed.local_rank() != 0:
        distributed.barrier()
    data = pipeline.prepare(config.data, threads=torch.get_num_threads(), pretrained=pretrained_tokenizer)
    if distributed.local_rank() == 0:
        distributed.barrier()
    return data


def refuse_another_pretrained(config: RunConfig, run_dir: Path) -> None:
    """A run with checkpoints continues only from the pretrained model it started from: another one
    would fail deep inside DeepSpeed's checkpoint loading (other shapes), or load its weights over
    another tokenizer's ids. Checked against the run's config.yaml before it is written again."""
    saved_path = run_dir / "config.yaml"
    if not (saved_path.is_file() and checkpoint.step_checkpoints(run_dir / "checkpoints")):
        return
    saved = (yaml.safe_load(saved_path.read_text()) or {}).get("model") or {}
    for key in ("pretrained", "revision"):
        if saved.get(key, "") != getattr(config.model, key):
            raise ValueError(f"model.{key}: {run_dir} holds checkpoints of a run with model.{key}="
                             f"{saved.get(key, '')!r}, now {getattr(config.model, key)!r}; resume with the saved "
                             f"value, or start a new run in another train.run_dir")


def local_processes() -> int:
    """Processes of this run on this machine: the deepspeed launcher's LOCAL_SIZE, torchrun's
    LOCAL_WORLD_SIZE, or 1."""
    return int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)


def _set_threads(config: RunConfig) -> None:
    threads = config.train.threads or max(1, (os.cpu_count() or 1) // local_processes())
    torch.set_num_threads(threads)
    # denormal floats make CPU matmuls several times slower late in training
    torch.set_flush_denormal(True)


# ----------------------------------------------------------------------------------------------
# checkpoints and evaluation


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
    losses = dev_losses(run.engine, run.valid_tasks, config, run.pad_id, run.decoder_start_id)
    low = [i for i, name in enumerate(data.task_names) if name in data.low_resource]
    record = {"dev_loss": float(losses.mean()), "task_dev_loss": losses.tolist()}
    if low:
        record["dev_loss_low"] = float(losses[low].mean())
    if config.bleu_during_training or config.best_metric.startswith(("bleu", "chrf")):
        scores, _ = evaluate_bleu(run.engine.module, data.tokenizer, data.valid_text, config,
                                  synced=_zero3(run.engine), limit=config.test_sentences)
        record.update(bleu_summary(scores, data.low_resource_directions))
    return record


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


# refusals and bad input (config keys, corpus files, tokenizer settings, checkpoints' settings,
# a busy run directory): one line from rank 0, not a traceback from every rank
REFUSALS = (ValueError, rundir.RunDirectoryBusy, BibleSourceError, distributed.StaleBuildLock)
TRACEBACK_ENV = "CATS_DS_TRACEBACK"   # =1: raise them with their traceback instead


def main(argv: list[str] | None = None) -> dict:
    config = parse_args(argv)
    try:
        distributed.init()
        with rundir.owned(config.train.run_dir):
            return train(config)
    except REFUSALS as error:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        if distributed.launch_rank() == 0:
            print(f"error: {error} (run with {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
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
    refuse_another_pretrained(config, run_dir)
    pretrained_config = load_pretrained_config(config.model, config.data.max_len, config.data.max_len_auto)
    if pretrained_config is not None:   # data.max_len_auto's cap within the positions: config.yaml records it
        config.data.max_len = fit_max_len(config.data.max_len, pretrained_config)

    data = prepare_data(config, pretrained_config and load_pretrained_tokenizer(config.model, pretrained_config))
    CATSHook.check_settings(config, data.valid)   # what the hook would refuse, before the model is built
    tokenizer = data.tokenizer
    ds_config = run_ds_config(config)
    model = make_model(config.model, pretrained_config, tokenizer, config.data.max_len, config.train.seed,
                       ds_config, model_dtype(ds_config))
    log.info("model: %s, %s parameters; %d tasks: %s; world size %d", describe(config.model, model.config),
             f"{count_parameters(model):,}", len(data.task_names), ", ".join(data.task_names),
             distributed.world_size())
    checkpoints = run_dir / "checkpoints"
    resume = checkpoint.choose_resume(checkpoints)
    engine = build_engine(config, model, ds_config, load_universal=bool(resume and resume.universal))
    probs = temperature_probs([len(t) for t in data.train], config.sampling.temperature)
    log.info("sampling T=%g: %s", config.sampling.temperature,
             ", ".join(f"{n} {p:.3f}" for n, p in zip(data.task_names, probs)))
    sampler = LanguageSyncSampler([t.lengths() for t in data.train], probs, config.sampling.tokens_per_step,
                                  config.sampling.max_tokens_per_micro, seed=config.train.seed,
                                  rank=rank, world_size=distributed.world_size(),
                                  sort_block=config.sampling.sort_block, task_names=data.task_names)
    decoder_start_id = model.config.decoder_start_token_id
    cats = CATSHook.build(config, engine, data.valid, tokenizer.pad_id, decoder_start_id, probs)
    run = Run(config, engine, data.train, data.valid, sampler, cats, tokenizer.pad_id, decoder_start_id)
    if run.cats:
        log.info("CATS on: %s", config.cats)

    if resume:
        checkpoint.resume_run(run, checkpoints, resume)
    if rank == 0:   # only now: a start refused or failed above leaves the run's record as it was
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))

    writer = MetricsWriter(run_dir, rank == 0, start_step=run.step)
    record = {"tasks": data.task_names, "low_resource": sorted(data.low_resource), "cats": config.cats.enabled,
              "parameters": count_parameters(model), "world_size": distributed.world_size(),
              "sampling_probs": probs.tolist(), "resumed_from": resume.tag if resume else None,
              "data": data.accounting}
    if run.cats:   # the CATS state training starts (or resumes) from
        record["cats_state"] = run.cats.describe_start()
    writer.write("run", run.step, record)
    with Stopping(config.train.max_minutes, config.train.max_steps, run.step) as stopping:
        stop = train_loop(run, data, writer, checkpoints, stopping)
    if stop == "signal":
        checkpoint.save_run(run, checkpoints)
        log.info("%s received: checkpoint of step %d saved; run the same command again to resume",
                 stopping.received, run.step)
        return {"step": run.step, "interrupted": stopping.received}
    return finish(run, data, run_dir, checkpoints, stopped_early=stop == "patience")


def train_loop(run: Run, data: pipeline.PreparedData, writer: MetricsWriter, checkpoints: Path,
               stopping: Stopping) -> str:
    """Trains until max_steps, the time budget, early stopping or a stop signal; returns which
    ("max_steps", "time", "patience" or "signal")."""
    config = run.config
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
            bar.total = stopping.expected_last_step(run.step)
        bar.update(1)
        if config.eval.every_steps and run.step % config.eval.every_steps == 0:
            if _evaluate_and_track(run, data, writer, checkpoints):
                return "patience"
        if config.train.save_every and run.step % config.train.save_every == 0:
            checkpoint.save_run(run, checkpoints)
            checkpoint.prune(checkpoints, config.train.keep_last)
        stop = stopping.requested()
        if stop:
            log.info("stopping at step %d: %s", run.step,
                     "time budget reached" if stop == "time" else f"{stopping.received} received")
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
        checkpoint.mark_best(checkpoints, checkpoint.save_run(run, checkpoints))
        checkpoint.prune(checkpoints, run.config.train.keep_last)
    patience = run.config.eval.patience
    return bool(patience) and run.best["stale_evals"] >= patience


def finish(run: Run, data: pipeline.PreparedData, run_dir: Path, checkpoints: Path, stopped_early: bool) -> dict:
    """Last checkpoint, final dev evaluation, test BLEU table, results files, export."""
    config = run.config
    last_tag = checkpoint.save_run(run, checkpoints)
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
        print("\n" + write_results(run_dir, results, hypotheses, low_dirs), flush=True)
    if config.train.export:
        export_model(run.engine, data.tokenizer, run_dir / "export", config.eval.beam, decoding_limit(config),
                     list(data.test))
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


if __name__ == "__main__":
    main()
