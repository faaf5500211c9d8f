"""Runs the trainer with every placement made visible; run by tests/test_placement.py.

    python tests/dist/placement_probe.py CONFIG.yaml OUT.json [--bypass] [key.sub=value ...]

On a CPU machine every tensor is on the CPU, so comparing devices cannot tell a tensor that went
through cats_ds.placement from one that bypassed it. Here the placement owner tags what it makes
or moves (``Placed``, a tensor subclass standing in for "on the GPU"), and three checkpoints
record whether what reaches them carries the tag:
  forward     - the model's forward (training, meta pass, dev losses): input_ids, attention_mask,
                decoder_input_ids;
  generate    - the model's generate (evaluation's decoding): input_ids, attention_mask;
  collective  - every torch.distributed.all_reduce called from cats_ds code (not DeepSpeed's own).
A GPU would refuse (NCCL) or fail (a CPU batch into a GPU model) at each untagged one.
``--bypass`` is the control: the owner's ``to_device`` and ``zeros`` stop tagging, as if the
trainer had moved nothing, and the checkpoints must notice.
OUT.json: per checkpoint, how many calls were checked and how many were untagged.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import torch
import torch.distributed

from cats_ds import placement, train


class Placed(torch.Tensor):
    """A tensor that went through the placement owner (ops on it keep the tag)."""


CHECKED, UNTAGGED = Counter(), Counter()


def record(checkpoint: str, tensors) -> None:
    for tensor in tensors:
        if tensor is not None:
            CHECKED[checkpoint] += 1
            UNTAGGED[checkpoint] += not isinstance(tensor, Placed)


def plain(value):
    return value.as_subclass(torch.Tensor) if isinstance(value, Placed) else value


def tag_placement(bypass: bool) -> None:
    real_to_device, real_zeros, real_as_tensor = placement.to_device, placement.zeros, placement.as_tensor

    def tag(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if bypass else tensor.as_subclass(Placed)

    placement.to_device = lambda tensors, target=None: {k: tag(v) for k, v in real_to_device(tensors, target).items()}
    placement.zeros = lambda *shape, dtype=torch.float64: tag(real_zeros(*shape, dtype=dtype))
    placement.as_tensor = lambda values, dtype=torch.float64: tag(real_as_tensor(values, dtype))


def called_from_cats_ds() -> bool:
    """Whether the first caller outside torch, deepspeed.comm and this probe is cats_ds code."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(("torch", "deepspeed.comm", "__main__")):
            return module.startswith("cats_ds")
        frame = frame.f_back
    return False


def check_collectives() -> None:
    real_all_reduce = torch.distributed.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        if called_from_cats_ds():
            record("collective", [tensor])
        return real_all_reduce(plain(tensor), *args, **kwargs)

    torch.distributed.all_reduce = all_reduce


def check_model(model: torch.nn.Module) -> torch.nn.Module:
    generating = []

    def before_forward(module, args, kwargs):
        if not generating:
            record("forward", [kwargs.get(name) for name in ("input_ids", "attention_mask", "decoder_input_ids")])
        return args, {name: plain(value) for name, value in kwargs.items()}

    real_generate = model.generate

    def generate(**kwargs):
        record("generate", [kwargs.get("input_ids"), kwargs.get("attention_mask")])
        generating.append(True)
        try:
            return real_generate(**{name: plain(value) for name, value in kwargs.items()})
        finally:
            generating.pop()

    model.register_forward_pre_hook(before_forward, with_kwargs=True)
    model.generate = generate
    return model


def main() -> None:
    config, out, *rest = sys.argv[1:]
    bypass = "--bypass" in rest
    overrides = [arg for arg in rest if arg != "--bypass"]
    tag_placement(bypass)
    check_collectives()
    real_make_model = train.make_model
    train.make_model = lambda *args, **kwargs: check_model(real_make_model(*args, **kwargs))
    train.main(["--config", config, *overrides])
    with open(out, "w") as handle:
        json.dump({"checked": CHECKED, "untagged": UNTAGGED}, handle)


if __name__ == "__main__":
    main()
