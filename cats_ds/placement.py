"""Where tensors live: the one owner of device placement.

The device is DeepSpeed's accelerator's current device: ``cuda:LOCAL_RANK`` on GPUs (bound at
process-group set-up, :func:`bind`), ``cpu`` under ``DS_ACCELERATOR=cpu``. Every batch the model
sees, every bookkeeping tensor (token counts, loss sums) and every tensor handed to a collective
is made or moved here, so NCCL gets device tensors and a batch never stays in host memory while
the model is on the GPU. Nothing else in cats-ds calls ``.cuda()`` or names a device; tools that
run a model outside DeepSpeed (translate, curvature) choose theirs with :func:`device_option`.

Small values that must be identical on every rank (the TaskScaler's inputs and outputs, the
sampler's plans) are computed on the CPU in float64 from the reduced statistics: the callers
take them off the device with ``.cpu()``.
"""

from __future__ import annotations

import argparse
import os

import torch
from deepspeed.accelerator import get_accelerator


def device() -> torch.device:
    """This process's training device (DeepSpeed's accelerator)."""
    return torch.device(get_accelerator().current_device_name())


def on_gpu() -> bool:
    return device().type != "cpu"


def bind(local_rank: int) -> None:
    """Makes GPU ``local_rank`` this process's device; refuses more processes than GPUs on a node."""
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return
    count = accelerator.device_count()
    if count == 0:
        raise RuntimeError(f"DeepSpeed's accelerator is {accelerator.device_name()!r} but no such device is "
                           "visible: on a machine without GPUs set DS_ACCELERATOR=cpu (launch/train.sh does "
                           "this where nvidia-smi finds no GPU)")
    if local_rank >= count:
        raise RuntimeError(f"local rank {local_rank} has no GPU: this node has {count}, and NCCL cannot run two "
                           f"ranks on one GPU; start at most {count} processes per node (launch/train.sh -n "
                           f"{count}, deepspeed --num_gpus {count})")
    accelerator.set_device(local_rank)


def check_requested(requested: str) -> None:
    """``train.device``: auto follows the accelerator; cuda or cpu refuse to run on the other one."""
    actual = device().type
    if requested in ("auto", actual):
        return
    fix = ("on a GPU machine leave DS_ACCELERATOR unset (launch/train.sh sets it to cpu only where nvidia-smi "
           "finds no GPU)" if requested == "cuda" else "set DS_ACCELERATOR=cpu")
    raise ValueError(f"train.device={requested}, but DeepSpeed's accelerator is {actual} "
                     f"(DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', 'unset')}): {fix}, or set train.device=auto")


def communication_backend() -> str:
    """The process-group backend for the accelerator: NCCL on NVIDIA GPUs, gloo on the CPU."""
    return get_accelerator().communication_backend_name()


def to_device(tensors: dict[str, torch.Tensor], target: torch.device | None = None) -> dict[str, torch.Tensor]:
    """A batch (name -> tensor) on ``target`` (default: the training device)."""
    target = target or device()
    return {name: tensor.to(target, non_blocking=True) for name, tensor in tensors.items()}


def zeros(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A bookkeeping or collective tensor on the training device."""
    return torch.zeros(*shape, dtype=dtype, device=device())


def as_tensor(values, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Host values (a list, a numpy array, a CPU tensor) as a tensor on the training device."""
    return torch.as_tensor(values, dtype=dtype).to(device())


def synchronize() -> None:
    """Waits for the device's queued work, so that a host timer measures it."""
    get_accelerator().synchronize()


def rng_state() -> dict[str, torch.Tensor]:
    """The random state of the CPU and, on GPUs, of this process's device (dropout runs there)."""
    state = {"cpu": torch.get_rng_state()}
    if on_gpu():
        state[device().type] = get_accelerator().get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor] | torch.Tensor) -> None:
    """Restores :func:`rng_state`'s output (or a bare CPU state, as checkpoints before the GPU path held)."""
    if isinstance(state, torch.Tensor):
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if on_gpu():
        if device().type not in state:
            raise ValueError("the checkpoint holds no GPU random state (it was saved on the CPU): resuming it on a "
                             "GPU cannot reproduce the uninterrupted run's dropout; start the run again on the GPU")
        get_accelerator().set_rng_state(state[device().type])


def device_option(name: str) -> torch.device:
    """A tool's ``--device`` (an argparse type): auto (the GPU where torch sees one, else cpu), cpu,
    cuda or cuda:N; a device this machine lacks is refused by name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"{name}: {error}") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{name}: torch here has no CUDA device (torch {torch.__version__}); "
                                             "use --device cpu")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif chosen.type != "cpu":
        raise argparse.ArgumentTypeError(f"{name}: cats-ds runs on cpu or cuda")
    return chosen
