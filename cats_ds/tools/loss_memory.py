"""Peak memory of the token loss on a large vocabulary: the chunked loss against log-softmax.

    python -m cats_ds.tools.loss_memory [--vocab 256000] [--tokens 4096] [--d-model 64] [--dtype fp32|bf16]

A tiny model's output layer (d_model -> vocab) on ``tokens`` target tokens, then the
label-smoothed loss, then backward: once with cats_ds.loss (chunked, checkpointed, no
log-probabilities kept) and once with the formulation it replaced (an fp32 copy of the logits
and fp32 log-probabilities of [tokens x vocab]). Each runs in a fresh process, so the peaks do
not mix: CUDA's max allocated bytes, else the peak resident set (VmHWM) over the process's
state before the first forward. Prints both, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F

from cats_ds import placement
from cats_ds.loss import smoothed_cross_entropy
from cats_ds.tools.bench import MemoryMeter

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def log_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The loss before the chunked one: log-probabilities of the whole batch in fp32."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return ((1 - smoothing) * nll - smoothing * log_probs.mean(dim=-1)).sum()


def measure(formulation: str, args: argparse.Namespace) -> dict:
    meter = MemoryMeter()
    device, dtype = placement.device(), DTYPES[args.dtype]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.d_model, generator=generator).to(device, dtype).requires_grad_()
    output_layer = (torch.randn(args.vocab, args.d_model, generator=generator) / args.d_model ** 0.5).to(device, dtype)
    output_layer.requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator).to(device)
    base = meter.start()
    logits = hidden @ output_layer.T
    if formulation == "chunked":
        loss = smoothed_cross_entropy(logits, targets, 0.1)[0].sum()
    else:
        loss = log_softmax_loss(logits, targets, 0.1)
    del logits
    loss.backward()
    return {"formulation": formulation, "loss": float(loss), **meter.since(base)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=256_000)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--one", choices=("chunked", "log_softmax"), help=argparse.SUPPRESS)   # the child process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    given = [arg for arg in (argv if argv is not None else sys.argv[1:])]
    results = {}
    for formulation in ("log_softmax", "chunked"):
        child = subprocess.run([sys.executable, "-m", "cats_ds.tools.loss_memory", *given, "--one", formulation],
                               capture_output=True, text=True, check=True)
        results[formulation] = json.loads(child.stdout.strip().splitlines()[-1])
    logits_mib = args.tokens * args.vocab * torch.finfo(DTYPES[args.dtype]).bits / 8 / 2 ** 20
    print(f"loss of {args.tokens} tokens x {args.vocab} vocabulary ({args.dtype} logits: {logits_mib:,.0f} MiB) on "
          f"{placement.device()}")
    for formulation, result in results.items():
        print(f"  {formulation:<12} peak {result['peak_mib']:>9,.0f} MiB over the inputs   loss {result['loss']:.6g}")
    ratio = results["chunked"]["peak_mib"] / results["log_softmax"]["peak_mib"]
    print(f"  chunked / log_softmax peak: {ratio:.2f}")


if __name__ == "__main__":
    main()
