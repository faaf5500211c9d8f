"""CATS inside DeepSpeed ZeRO: per-task gradients kept in each rank's own gradient partition.

Data path (docs/design.md, section 4): every micro-step is language-synchronous, so when a
task's window ends on an accumulation boundary DeepSpeed has reduced exactly that task's
gradient into this rank's partition. ``TaskGradientBuffers`` copies it into buffer n and the
next window starts from a cleared partition. At the step boundary one GEMM gives this rank's
share of the Gram matrix, one all-reduce of N*N + N numbers completes it, and
sum_n s_n * buffer_n is written back into the partition, so DeepSpeed's own step (overflow
check, norm, clipping, optimizer, all-gather) runs on the rescaled gradient.

``PartitionParameters`` gives the finite-difference curvature term (``second_order``,
cats_ds/cats/hessian.py) this rank's partition of the parameters: written, then gathered as
DeepSpeed's own step() (ZeRO-1/2) or forward (ZeRO-3) does.

The partition accessors rely on the DeepSpeed 0.19.8 internals listed in
docs/design.md, section 7; requirements.txt pins that version. The buffers and
the statistics stay on the training device (cats_ds.placement), next to the partition.
"""

from __future__ import annotations

import itertools

import torch
from deepspeed import comm as dist
from deepspeed.runtime.utils import all_gather_dp_groups
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

from cats_ds import distributed, placement
from cats_ds.cats.statistics import gram_and_dots


class UnsupportedSetupError(ValueError):
    """A DeepSpeed configuration whose gradient partition CATS cannot reach; names the setting."""


class PartitionGradients:
    """Reads, clears and overwrites this rank's reduced flat gradient partition (ZeRO 1, 2 or 3)."""

    def __init__(self, engine) -> None:
        self.optimizer = engine.optimizer
        self.stage = engine.zero_optimization_stage()
        _check_supported(engine, self.optimizer, self.stage)
        self.dp_group = self.optimizer.dp_process_group

    @property
    def loss_scale(self) -> float:
        """The fp16 loss scale the partition is multiplied by (1 for fp32 and bf16)."""
        return float(getattr(self.optimizer, "loss_scale", 1.0) or 1.0)

    def segments(self) -> list[torch.Tensor]:
        """The tensors that make up the partition, in a fixed order; valid until the next clear()."""
        if self.stage == 3:
            return [self.optimizer.grad_partitions_flat_buffer]
        groups = range(len(self.optimizer.bit16_groups))
        missing = [i for i in groups if self.optimizer.averaged_gradients.get(i) is None]
        if missing:
            raise RuntimeError("no reduced gradient partition: the window's last backward must run "
                               "with engine.set_gradient_accumulation_boundary(True)")
        return [t for i in groups for t in self.optimizer.averaged_gradients[i]]

    def numel(self) -> int:
        return sum(t.numel() for t in self.segments())

    def device(self) -> torch.device:
        return self.segments()[0].device

    def read_into(self, out: torch.Tensor) -> None:
        """Copies the partition into the flat tensor ``out`` (converting dtype)."""
        offset = 0
        for segment in self.segments():
            out[offset:offset + segment.numel()].copy_(segment.reshape(-1))
            offset += segment.numel()
        assert offset == out.numel(), (offset, out.numel())

    def write(self, flat: torch.Tensor) -> None:
        """Overwrites the partition with ``flat`` so that engine.step() consumes it."""
        offset = 0
        for segment in self.segments():
            segment.copy_(flat[offset:offset + segment.numel()].view_as(segment))
            offset += segment.numel()
        assert offset == flat.numel(), (offset, flat.numel())

    def clear(self) -> None:
        """Forgets what has been reduced so far, so the next window starts from zero."""
        _clear_partition(self.optimizer, self.stage)


def _clear_partition(optimizer, stage: int) -> None:
    """ZeRO-3 adds into its flat buffer on every micro-step but the first of a step, and
    parameters unused in a window keep stale values: zero it explicitly. ZeRO-1/2 keep the
    reduced partition in averaged_gradients (what their own overflow path clears)."""
    if stage == 3:
        optimizer.grad_partitions_flat_buffer.zero_()
    elif stage in (1, 2):
        for i in range(len(optimizer.bit16_groups)):
            optimizer.averaged_gradients[i] = None
            optimizer.all_grad_tensors[i] = None


def discard_gradients(engine) -> None:
    """Drops every gradient of the current step, so that skipping ``engine.step()`` leaves
    nothing behind for the next step (any ZeRO stage, CATS on or off)."""
    engine.optimizer.zero_grad(set_to_none=True)
    _clear_partition(engine.optimizer, engine.zero_optimization_stage())


# the offload path keeps gradients on the CPU, outside the partition CATS rescales
_OFFLOAD_REFUSAL = ("CATS does not support zero_optimization.offload_optimizer: remove it from the DeepSpeed "
                    "config (e.g. ds_configs/zero2_offload.json -> ds_configs/zero2.json), or set cats.enabled=false")


def _check_supported(engine, optimizer, stage: int) -> None:
    if stage == 0:
        raise UnsupportedSetupError("CATS needs ZeRO: set zero_optimization.stage to 1, 2 or 3 in the DeepSpeed "
                                    "config (stage 0 has no gradient partition), or set cats.enabled=false")
    if stage in (1, 2):
        if not isinstance(optimizer, DeepSpeedZeroOptimizer):
            raise UnsupportedSetupError(
                f"CATS cannot reach the gradients of {type(optimizer).__name__}: bf16 with ZeRO-1 and "
                "data_types.grad_accum_dtype=fp32 selects DeepSpeed's BF16_Optimizer; use ZeRO-2, or drop "
                "data_types.grad_accum_dtype")
        if optimizer.cpu_offload:
            raise UnsupportedSetupError(_OFFLOAD_REFUSAL)
        if any(optimizer._use_compact_grad_partition_buffer(i) for i in range(len(optimizer.bit16_groups))):
            raise UnsupportedSetupError("CATS does not support data_types.grad_accum_dtype different from the model "
                                        "dtype (DeepSpeed then accumulates across windows); remove that setting")
    elif stage == 3:
        if not isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
            raise UnsupportedSetupError(f"unexpected ZeRO-3 optimizer {type(optimizer).__name__}")
        if optimizer.offload_optimizer:
            raise UnsupportedSetupError(_OFFLOAD_REFUSAL)
    else:
        raise UnsupportedSetupError(f"zero_optimization.stage={stage} is not a ZeRO stage")


class PartitionParameters:
    """This rank's partition of the model parameters (fp32), for the finite-difference curvature
    term (cats_ds/cats/hessian.py), laid out like the gradient partition. ZeRO-1/2: the rank's
    slice of each parameter group's flat buffer; writing it and all-gathering, as DeepSpeed's own
    step() does after the optimizer update, gives every rank the moved model. ZeRO-3: each
    parameter's ds_tensor; writing them and releasing the gathered parameters makes the next
    forward gather the moved values."""

    def __init__(self, engine) -> None:
        self.optimizer = optimizer = engine.optimizer
        self.stage = engine.zero_optimization_stage()
        if self.stage in (1, 2):
            self.partitions = [optimizer.parallel_partitioned_bit16_groups[i][dist.get_rank(group=group)]
                               for i, group in enumerate(optimizer.real_dp_process_group)]
        else:   # the order of grad_partitions_flat_buffer (stage3.py L789-801)
            self.partitions = [p.ds_tensor for p in itertools.chain.from_iterable(optimizer.fp16_groups)]
        if any(partition.dtype != torch.float32 for partition in self.partitions):
            raise UnsupportedSetupError("cats.objective=second_order needs fp32 training: the finite differences of "
                                        "the curvature term are lost in bf16/fp16 parameters; remove bf16/fp16 from "
                                        "the DeepSpeed config")

    def read(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.partitions]).clone()

    def write(self, flat: torch.Tensor) -> None:
        """Overwrites this rank's partition and makes every rank's model compute with the result."""
        offset = 0
        for partition in self.partitions:
            partition.data.copy_(flat[offset:offset + partition.numel()].view_as(partition))
            offset += partition.numel()
        assert offset == flat.numel(), (offset, flat.numel())
        optimizer = self.optimizer
        if self.stage == 3:
            # gathered parameters (persistent ones included) are dropped without being written back
            # (ds_tensor is the truth), so the next forward gathers the new partitions
            optimizer.parameter_offload.partition_all_parameters()
            return
        # the all-gather of stage_1_and_2.py step() (L3155-3159)
        all_gather_dp_groups(groups_flat=optimizer.bit16_groups_flat,
                             partitioned_param_groups=optimizer.parallel_partitioned_bit16_groups,
                             dp_process_group=optimizer.real_dp_process_group,
                             start_alignment_factor=optimizer.nccl_start_alignment_factor,
                             allgather_bucket_size=optimizer.allgather_bucket_size)


class TaskGradientBuffers:
    """N partition-sized buffers per rank, one per task, plus one for the dev meta gradient h.

    They live beside the partition they mirror, on the training device (cats_ds.placement): the
    gradients never travel through host memory. The statistics leave the device as N*N + N
    float64 numbers, for the TaskScaler on the CPU."""

    def __init__(self, partition: PartitionGradients, num_tasks: int, dtype: torch.dtype = torch.float32) -> None:
        self.partition = partition
        self.num_tasks = num_tasks
        self.dtype = dtype
        self.tasks: torch.Tensor | None = None      # [N, P_local], allocated on the first window
        self.meta: torch.Tensor | None = None       # [P_local], allocated on first use
        self.present = [False] * num_tasks           # tasks whose window ran this step

    def begin_window(self) -> None:
        self.partition.clear()

    def end_window(self, task: int) -> None:
        """Moves task ``task``'s reduced gradient into its buffer (the partition is cleared next window)."""
        if self.tasks is None:
            self.tasks = self._allocate(self.num_tasks, self.partition.numel())
        self.partition.read_into(self.tasks[task])
        self.present[task] = True

    def capture_meta(self) -> None:
        """Moves the reduced dev-batch gradient h into the meta buffer."""
        if self.meta is None:
            self.meta = self._allocate(self.partition.numel())
        self.partition.read_into(self.meta)

    def _allocate(self, *shape: int) -> torch.Tensor:
        where = self.partition.device()
        if where != placement.device():
            raise UnsupportedSetupError(f"the ZeRO gradient partition is on {where}, the training device is "
                                        f"{placement.device()}: CATS keeps its buffers beside the partition and "
                                        "needs both on one device (no optimizer offload)")
        return placement.zeros(*shape, dtype=self.dtype)

    def reduce_statistics(self, with_meta: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gram matrix G [N, N] and meta dots d [N] = <h, g_n>, summed over the data-parallel group.

        One GEMM on the local buffers, one all-reduce of N*N + N numbers; both are divided
        by loss_scale**2 so they describe the true (unscaled) gradients.
        """
        assert self.tasks is not None, "no window ended this step"
        for task, present in enumerate(self.present):
            if not present:
                self.tasks[task].zero_()   # a task absent from this step has g_n = 0, not last step's
        assert not with_meta or self.meta is not None, "capture_meta() was not called this step"
        gram, dots = gram_and_dots(self.tasks.float(), self.meta.float() if with_meta else None)
        parts = [gram.reshape(-1)] + ([dots] if with_meta else [])
        stats = distributed.all_reduce_sum(torch.cat(parts).double(), group=self.partition.dp_group).cpu()
        stats /= self.partition.loss_scale ** 2
        n = self.num_tasks
        gram = stats[:n * n].reshape(n, n)
        dots = stats[n * n:] if with_meta else None
        return gram, dots

    def write_combined(self, scales: torch.Tensor) -> None:
        """Writes sum_n s_n * buffer_n into the partition (one GEMV)."""
        assert self.tasks is not None
        combined = scales.to(self.tasks.device, torch.float32) @ self.tasks.float()
        self.partition.write(combined)
        self.present = [False] * self.num_tasks

    def flag_overflow(self) -> None:
        """Makes the partition non-finite, so that DeepSpeed's fp16 overflow check skips the step
        and lowers the loss scale, as for an overflow in the training backward: an overflow seen
        only in the statistics (the dev meta pass) then backs the scale off too."""
        self.partition.segments()[0].view(-1)[0] = float("inf")
