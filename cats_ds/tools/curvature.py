"""Per-task curvature of a trained model: the top Hessian eigenvalue of each task's dev loss.

    python -m cats_ds.tools.curvature RUN_DIR [--tag stepNNNNNNNN] [--iterations 20] [--batches 2]
                                [--batch-sentences 16] [--trace-samples 0] [--seed 0] [--device auto]

For every task, the loss is the mean target-token cross-entropy (no label smoothing, no
dropout) over a fixed set of dev batches: the first ``batches`` x ``batch-sentences`` dev
examples. Its Hessian H is never formed: power iteration multiplies by H through
Hessian-vector products (double backward), a fixed number of times from a seeded random
start, and reports the Rayleigh quotient v.Hv, which converges to the eigenvalue of largest
magnitude (the sharpness of Keskar et al. when H is positive semi-definite near a minimum).
``--trace-samples K`` adds Hutchinson's estimate tr(H) ~ mean over K Rademacher vectors z of
z.Hz. The numbers are comparable across methods only at the same batches, iterations and seed.

The checkpoint (unless ``--tag``: the one results.json describes, else ``best``, else ``latest``;
verified against its manifest) is consolidated to fp32 in this one process with
DeepSpeed's zero_to_fp32, whatever the ZeRO stage and world size it was saved with; the model
is rebuilt from the run's config.yaml. ``--device auto`` runs on the GPU where there is one; the
random start and probes are drawn on the CPU either way, so devices differ only by float rounding.
Writes RUN_DIR/curvature.json.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from cats_ds import placement
from cats_ds.loss import token_loss

log = logging.getLogger("cats_ds.tools.curvature")

Loss = Callable[[], torch.Tensor]     # recomputes a scalar loss of ``params`` with a graph


def hessian_vector_product(losses: Sequence[Loss], params: list[torch.Tensor],
                           vector: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the mean of ``losses`` (one batch at a time, so memory is that of one batch)."""
    product = [torch.zeros_like(p) for p in params]
    for loss in losses:
        gradients = torch.autograd.grad(loss(), params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(gradients, vector))
        for total, part in zip(product, torch.autograd.grad(dot, params)):
            total += part / len(losses)
    return product


def top_eigenvalue(losses: Sequence[Loss], params: list[torch.Tensor], iterations: int,
                   generator: torch.Generator) -> float:
    """Power iteration: the Rayleigh quotient after ``iterations`` Hessian-vector products."""
    vector = _normalized([torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params])
    eigenvalue = float("nan")
    for _ in range(iterations):
        product = hessian_vector_product(losses, params, vector)
        eigenvalue = float(sum((v * h).sum() for v, h in zip(vector, product)))
        vector = _normalized(product)
    return eigenvalue


def hutchinson_trace(losses: Sequence[Loss], params: list[torch.Tensor], samples: int,
                     generator: torch.Generator) -> float:
    """tr(H) estimated as the mean of z.Hz over Rademacher vectors z."""
    total = 0.0
    for _ in range(samples):
        probe = [torch.randint(0, 2, p.shape, generator=generator).to(p.device, p.dtype) * 2 - 1 for p in params]
        total += float(sum((z * h).sum() for z, h in zip(probe, hessian_vector_product(losses, params, probe))))
    return total / samples


def _normalized(vector: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(sum((v * v).sum() for v in vector))
    if not norm > 0:
        raise FloatingPointError("Hessian-vector product is zero or not finite: the loss has no curvature here")
    return [v / norm for v in vector]


# ----------------------------------------------------------------------------------------------
# a trained run


def load_trained_model(run_dir: Path, tag: str | None):
    """The run's model with the checkpoint's fp32 weights (cats_ds.trained: by default the one
    results.json describes), in eval mode, plus its prepared data and the checkpoint's tag."""
    from cats_ds import trained
    from cats_ds.config import load_config

    source = trained.locate(run_dir / "checkpoints" / tag if tag else run_dir)
    config = load_config(source.run_config)
    data = trained.load_data(config)
    # the fused SDPA kernels have no double backward
    model = trained.load_model(source, config, data.tokenizer, attention="eager")
    return model.float(), data, source.name


def task_losses(model, task, batches: int, batch_sentences: int, pad_id: int, decoder_start_id: int,
                device: torch.device) -> list[Loss]:
    """One closure per dev batch, on ``device``: the batch's mean target-token cross-entropy."""
    from cats_ds.data.tasks import collate

    count = min(len(task), batches * batch_sentences)
    chunks = [list(range(start, min(start + batch_sentences, count))) for start in range(0, count, batch_sentences)]

    def batch_loss(indices: list[int]) -> Loss:
        batch = placement.to_device(collate(task, indices, pad_id), device)
        return lambda: _mean_token_loss(model, batch, pad_id, decoder_start_id)
    return [batch_loss(indices) for indices in chunks]


def _mean_token_loss(model, batch, pad_id: int, decoder_start_id: int) -> torch.Tensor:
    loss = token_loss(model, batch, 0.0, pad_id, decoder_start_id)
    return loss.smoothed_sum / loss.tokens.clamp(min=1)


def measure(run_dir: Path, tag: str | None, iterations: int, batches: int, batch_sentences: int,
            trace_samples: int, seed: int, device: torch.device) -> dict:
    model, data, tag = load_trained_model(run_dir, tag)
    model = model.to(device)
    log.info("curvature of %s at %s on %s", run_dir, tag, device)
    params = [p for p in model.parameters() if p.requires_grad]
    pad_id, decoder_start_id = data.tokenizer.pad_id, model.config.decoder_start_token_id
    per_task = {}
    for task_id, task in enumerate(tqdm(data.valid, desc="curvature", unit="task")):
        losses = task_losses(model, task, batches, batch_sentences, pad_id, decoder_start_id, device)
        generator = torch.Generator().manual_seed(seed * 1000 + task_id)
        entry = {"top_eigenvalue": top_eigenvalue(losses, params, iterations, generator),
                 "dev_loss": float(sum(float(loss().detach()) for loss in losses) / len(losses))}
        if trace_samples:
            entry["hessian_trace"] = hutchinson_trace(losses, params, trace_samples, generator)
        per_task[task.name] = entry
    return {"tag": tag, "iterations": iterations, "batches": batches, "batch_sentences": batch_sentences,
            "trace_samples": trace_samples, "seed": seed, "low_resource": sorted(data.low_resource),
            "tasks": per_task}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.curvature", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tag", help="checkpoint directory (default: the one results.json describes, else `best`, else `latest`)")
    parser.add_argument("--iterations", type=int, default=20, help="Hessian-vector products per task")
    parser.add_argument("--batches", type=int, default=2, help="dev batches per task")
    parser.add_argument("--batch-sentences", type=int, default=16)
    parser.add_argument("--trace-samples", type=int, default=0, help="Hutchinson probes per task (0: no trace)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=placement.device_option, default="auto",
                        help="auto (cuda where available, else cpu), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    if min(args.iterations, args.batches, args.batch_sentences) < 1 or args.trace_samples < 0:
        parser.error("--iterations, --batches and --batch-sentences must be >= 1, --trace-samples >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = measure(args.run_dir, args.tag, args.iterations, args.batches, args.batch_sentences,
                     args.trace_samples, args.seed, args.device)
    (args.run_dir / "curvature.json").write_text(json.dumps(result, indent=2))
    for name, entry in result["tasks"].items():
        print(f"{name}\ttop eigenvalue {entry['top_eigenvalue']:.4g}\tdev loss {entry['dev_loss']:.4f}"
              + (f"\ttrace {entry['hessian_trace']:.4g}" if "hessian_trace" in entry else ""))
    return result


if __name__ == "__main__":
    main()
