"""CATS in the training loop: one component, called at three points of an optimizer step.

    cats = CATSHook.build(config, engine, valid_tasks, pad_id, decoder_start_id)   # None when cats.enabled is false
    cats.begin_step()                 # before the first micro-step: the dev meta pass, when an update is due
    cats.begin_window()               # before each task's window of micro-steps
    cats.end_window(task)             # after it: the task's reduced gradient moves into its buffer
    record, finite = cats.before_optimizer_step(train_loss, shares, step)   # before engine.step()

Everything CATS adds to a step lives here: the partition buffers (cats_ds/cats/zero.py), the
scaler (TaskScaler, or a gradient-surgery baseline), the dev sampler and meta pass, the
statistics, the curvature matrix of ``second_order`` (cats_ds/cats/hessian.py, on the step's
meta batch, before the write-back), the write-back of sum_n s_n g_n, the step's metrics record
and the state a checkpoint keeps. A new parameterization or an extra meta pass is a change
inside this class; the loop (cats_ds/train.py) only calls it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from cats_ds import distributed, placement
from cats_ds.cats.hessian import curvature_matrix
from cats_ds.cats.scaler import MEAN_GRADIENT_PARAMETERIZATIONS, TaskScaler, check_alpha_min
from cats_ds.cats.statistics import all_finite, mean_gradient_matrix, mean_gradient_statistics, scales_from_weights
from cats_ds.cats.surgery import GradientSurgery
from cats_ds.cats.zero import PartitionGradients, PartitionParameters, TaskGradientBuffers
from cats_ds.data.sampler import LanguageSyncSampler
from cats_ds.data.tasks import TaskData, collate
from cats_ds.loss import plan_tokens, token_loss

BUFFER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CATSHook:
    engine: object
    scaler: TaskScaler | GradientSurgery
    buffers: TaskGradientBuffers
    dev_sampler: LanguageSyncSampler | None     # dev batches for meta losses / the meta gradient
    valid_tasks: list[TaskData]
    pad_id: int
    decoder_start_id: int                # the model config's decoder_start_token_id
    scales: torch.Tensor                         # float64 [N], applied this step
    parameters: PartitionParameters | None = None   # moved by the curvature term (second_order)
    meta: dict | None = None                     # this step's dev meta pass, if one ran
    curvature_s: float = float("nan")            # seconds the last M took (its cost per update, logged)

    @staticmethod
    def check_settings(config, valid_tasks: list[TaskData]) -> None:
        """What the hook refuses for these tasks (the floor on alpha, meta batches larger than a
        dev set), checkable before the model and engine exist: the trainer calls it right after
        preparing the data, so a bad setting fails in seconds, naming its key."""
        if not config.cats.enabled or config.cats.method != "cats":
            return
        check_alpha_min(config.cats.alpha_min, len(valid_tasks))
        if config.cats.meta_source == "dev":
            check_dev_sets(valid_tasks, config.cats.meta_tokens_per_task)

    @classmethod
    def build(cls, config, engine, valid_tasks: list[TaskData], pad_id: int, decoder_start_id: int,
              sampling_probs: np.ndarray) -> CATSHook | None:
        """The hook for a run config (cats_ds.config.RunConfig); None when CATS is off. Weights
        (``cats.parameterization: weights`` or ``softmax``) start at the sampling distribution."""
        if not config.cats.enabled:
            return None
        cls.check_settings(config, valid_tasks)
        num_tasks = len(valid_tasks)
        if config.cats.method == "cats":
            weights = config.cats.parameterization in MEAN_GRADIENT_PARAMETERIZATIONS
            scaler = TaskScaler(config.cats, num_tasks=num_tasks, initial=sampling_probs if weights else None)
        else:
            scaler = GradientSurgery(config.cats, num_tasks, seed=config.train.seed)
        buffers = TaskGradientBuffers(PartitionGradients(engine), num_tasks, BUFFER_DTYPES[config.cats.buffer_dtype])
        dev_sampler = None
        if config.cats.meta_source == "dev" and config.cats.method == "cats":
            uniform = np.full(num_tasks, 1.0 / num_tasks)
            dev_sampler = LanguageSyncSampler([t.lengths() for t in valid_tasks], uniform,
                                              config.cats.meta_tokens_per_task * num_tasks,
                                              config.sampling.max_tokens_per_micro, seed=config.train.seed + 1,
                                              rank=distributed.rank(), world_size=distributed.world_size(),
                                              sort_block=config.sampling.sort_block,
                                              task_names=[t.name for t in valid_tasks])
        second_order = config.cats.method == "cats" and config.cats.objective == "second_order"
        parameters = PartitionParameters(engine) if second_order else None
        return cls(engine, scaler, buffers, dev_sampler, valid_tasks, pad_id, decoder_start_id,
                   torch.ones(num_tasks, dtype=torch.float64), parameters)

    # ------------------------------------------------------------------------------------------
    # the three calls of a step

    def begin_step(self) -> None:
        """Runs the dev meta pass when this step updates the scales (before the training windows,
        whose gradients it must not mix with)."""
        due = self.scaler.update_due() and self.scaler.config.meta_source == "dev"
        self.meta = self._meta_pass() if due else None

    def begin_window(self) -> None:
        self.buffers.begin_window()

    def end_window(self, task: int) -> None:
        self.buffers.end_window(task)

    def before_optimizer_step(self, train_loss: np.ndarray, shares: torch.Tensor, step: int) -> tuple[dict, bool]:
        """Gram matrix, scaler update, rescaled gradient written into the ZeRO partition.

        ``shares``: the step's realized target-token share per task (pi). Returns the step's CATS
        record and whether CATS's inputs (training and meta losses, Gram matrix, meta dots, M) were
        finite; when they are not, the scaler is left untouched and the step keeps its scales, or
        its weights (fp16: the partition is flagged, so DeepSpeed's overflow check skips the step
        and lowers the loss scale). Whether the step is taken is cats_ds/nonfinite.py's decision."""
        meta = self.meta
        with_gradient = meta is not None and meta["has_gradient"]
        gram, dots = self.buffers.reduce_statistics(with_meta=with_gradient)
        dots = dots if with_gradient else None
        losses = torch.from_numpy(meta["losses"] if meta is not None else train_loss)
        finite = all_finite(gram, losses, dots, torch.from_numpy(train_loss))
        due = self.parameters is not None and self.scaler.curvature_due()
        curvature = self._curvature(gram) if finite and due else None
        weights = self.scaler.config.parameterization in MEAN_GRADIENT_PARAMETERIZATIONS
        if weights:   # the scaler sees the per-task mean gradients gbar_n = g_n / pi_n
            gram, dots = mean_gradient_statistics(gram, dots, shares)
            curvature = None if curvature is None else mean_gradient_matrix(curvature, shares)
        finite = finite and all_finite(gram, dots, curvature)   # the mean-gradient statistics too
        if finite:   # plain: the weights of plain training; curvature: only second_order's scaler takes M
            extra = {"plain": shares} if weights else {}
            extra.update({"curvature": curvature} if curvature is not None else {})
            self.scales = self.scaler.update(losses, gram, dots, **extra)
        if weights:
            self.scales = scales_from_weights(self.scaler.scales, shares)
        self.buffers.write_combined(self.scales)
        if not finite and self.engine.fp16_enabled():
            self.buffers.flag_overflow()
        return self._record(gram, dots, losses, curvature, step), finite

    def _curvature(self, gram: torch.Tensor) -> torch.Tensor:
        """M[n, m] = g_n^T H_dev g_m of this step's task gradients, by finite differences of the dev
        meta gradient on this step's dev batch (cats_ds/cats/hessian.py): 2 dev passes per task."""
        plan, tokens = self.meta["plan"], self.meta["tokens"]
        partition, group = self.buffers.partition, self.buffers.partition.dp_group

        def dev_gradient(out: torch.Tensor) -> None:
            self._dev_pass(plan, tokens, need_gradient=True)
            partition.read_into(out)
        placement.synchronize()   # the device's queue drained on both sides: the time is M's alone
        start = time.perf_counter()
        curvature = curvature_matrix(self.buffers.tasks, gram.diagonal(), self.parameters, dev_gradient,
                                     self.scaler.config.curvature_step,
                                     lambda values: distributed.all_reduce_sum(values, group=group))
        placement.synchronize()
        self.curvature_s = time.perf_counter() - start
        return curvature

    def _record(self, gram: torch.Tensor, dots: torch.Tensor | None, losses: torch.Tensor,
                curvature: torch.Tensor | None, step: int) -> dict:
        """The step's CATS metrics; gram, dots and M as the scaler saw them (mean gradients for weights)."""
        norms = gram.diagonal().clamp(min=0).sqrt()
        record = {"variant": self.scaler.config.variant, "parameterization": self.scaler.config.parameterization,
                  "scales": self.scales.tolist(),
                  "alpha": self.scaler.alpha.tolist(), "lambda": float(self.scaler.lam), "grad_norm": norms.tolist(),
                  "meta_losses": losses.tolist(), **self.scaler.describe()}
        if dots is not None:   # what drives the lookahead objective: the alignment <h, g_n> of each task
            record["alignment"] = dots.tolist()
        if curvature is not None:   # the second_order objective's quadratic term, on the steps that compute it
            record["curvature"] = curvature.tolist()
            record["curvature_s"] = self.curvature_s
        if step % self.scaler.config.cosine_every == 0:
            record["cosine"] = (gram / torch.outer(norms, norms).clamp(min=1e-30)).tolist()
        return record

    def _meta_pass(self) -> dict:
        """Dev-batch meta losses, and for ``lookahead`` the dev meta gradient h in the meta buffer.

        h = sum_n grad of task n's mean token loss on its dev batch, so each task's loss is divided
        by that task's own global dev target tokens.
        """
        need_gradient = self.scaler.config.objective in ("lookahead", "second_order")
        plan = self.dev_sampler.next_step()
        tokens = plan_tokens(plan, self.valid_tasks, len(self.valid_tasks))[0].clamp(min=1)
        sums = self._dev_pass(plan, tokens, need_gradient)
        if need_gradient:
            self.buffers.capture_meta()
        losses = distributed.all_reduce_sum(sums).cpu() / tokens
        return {"losses": losses.numpy(), "has_gradient": need_gradient, "plan": plan, "tokens": tokens}

    def _dev_pass(self, plan, tokens: torch.Tensor, need_gradient: bool) -> torch.Tensor:
        """Forward (and backward) passes over a dev plan, from a cleared partition; returns this
        rank's summed NLL per task. With the gradient, the partition then holds sum_n of the
        gradient of task n's dev NLL sum / ``tokens[n]`` (one boundary, on the last micro-step)."""
        engine, tasks, world = self.engine, self.valid_tasks, distributed.world_size()
        sums = placement.zeros(len(tasks))
        engine.eval()  # no dropout in the held-out gradient
        self.buffers.begin_window()
        with torch.set_grad_enabled(need_gradient):
            for index, window in enumerate(plan):
                task = tasks[window.task]
                for k, micro in enumerate(window.micro_batches):
                    last = index == len(plan) - 1 and k == len(window.micro_batches) - 1
                    loss = token_loss(engine, placement.to_device(collate(task, micro, self.pad_id)), 0.0,
                                      self.pad_id, self.decoder_start_id)
                    if need_gradient:
                        engine.set_gradient_accumulation_boundary(last)
                        engine.backward(loss.smoothed_sum * (world / float(tokens[window.task])))
                    sums[window.task] += loss.nll_sum
        engine.train()
        return sums

    # ------------------------------------------------------------------------------------------
    # checkpoints and the run record

    def state_dict(self) -> dict:
        """What every rank saves alike (the per-rank dev sampler is in per_rank_state)."""
        return {"cats": self.scaler.state_dict(), "cats_scales": self.scales.tolist()}

    def per_rank_state(self) -> dict:
        return {"dev_sampler": self.dev_sampler.state_dict()} if self.dev_sampler else {}

    def load_state_dict(self, state: dict, own: dict, where) -> None:
        """Restores ``state_dict()`` and this rank's ``per_rank_state()`` (``own``) saved in ``where``."""
        if "cats" not in state:
            raise ValueError(f"{where} was saved without CATS; resume it with cats.enabled=false")
        self.scaler.load_state_dict(state["cats"])
        self.scales = torch.tensor(state["cats_scales"], dtype=torch.float64)
        if self.dev_sampler:
            self.dev_sampler.load_state_dict(own["dev_sampler"])

    def describe_start(self) -> dict:
        """The scaler state training starts (or resumes) from, for the run record."""
        return {"variant": self.scaler.config.variant, "alpha": self.scaler.alpha.tolist(), **self.scaler.describe()}


def check_dev_sets(valid_tasks: list[TaskData], meta_tokens_per_task: int) -> None:
    """Refuses a meta batch larger than a task's whole dev set: the dev sampler would repeat
    examples within one batch, so the meta statistics would weight them twice."""
    for task in valid_tasks:
        held = int(task.lengths().sum())
        if held < meta_tokens_per_task:
            raise ValueError(f"cats.meta_tokens_per_task={meta_tokens_per_task} is more than task {task.name}'s "
                             f"dev set holds ({held} source+target tokens): lower it to at most {held}, or give "
                             "that task more dev sentences")
