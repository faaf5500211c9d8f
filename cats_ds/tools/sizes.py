"""Model sizes and memory per rank for every preset, computed from the dimensions (nothing is allocated).

    python -m cats_ds.tools.sizes [--vocab 64000] [--world 8] [--tokens-per-micro 4096] [--tasks 8]
        [--buffer-dtype fp32] [--seq-len 128] [--pretrained HUB_ID_OR_DIR ...]

--pretrained adds rows for pretrained checkpoints (model.pretrained): Psi counted exactly on the
meta device from the checkpoint's config, the dimensions and vocabulary for the activations
read from it too.

Psi = parameters (cats_ds.model.estimate_parameters), W = data-parallel ranks, N = tasks.
Model states per rank, in bytes, after the ZeRO paper (Rajbhandari et al. 2020): parameters,
gradients and optimizer states take p, g and k bytes per parameter, and ZeRO stage s
partitions the optimizer states from stage 1, the gradients from stage 2 and the parameters
from stage 3 (a partitioned term is divided by W):

    ZeRO-0: (p + g + k) Psi     ZeRO-1: (p + g) Psi + k Psi / W
    ZeRO-2: p Psi + (g + k) Psi / W     ZeRO-3: (p + g + k) Psi / W

    bf16/fp16 mixed precision: p = 2, g = 2, k = 12 (fp32 master copy 4 + Adam moments 4 + 4)
    fp32: p = 4, g = 4, k = 8 (Adam moments) at ZeRO-0 and ZeRO-3, k = 12 at ZeRO-1 and
          ZeRO-2, where DeepSpeed 0.19.8 keeps its own fp32 copy of the partition even when the
          model is fp32 (stage_1_and_2.py clones it; stage3.py shares it)

CATS adds, per rank, N task buffers plus one meta buffer (the dev meta gradient h; only for
``cats.objective: lookahead`` with ``cats.meta_source: dev``), each one partition of P = Psi / W
elements in the buffer dtype (b bytes: 4 for fp32, 2 for bf16/fp16), allocated once
(cats_ds/cats/zero.py, TaskGradientBuffers):

    CATS buffers = (N + 1) b Psi / W

and at the step boundary temporaries of 4 Psi / W (the fp32 combined gradient) plus, when
b < 4, 4 (N + 1) Psi / W (the buffers converted to fp32 for the Gram GEMM).

Activations (a rough estimate for one micro-step of T source+target tokens, half source and
half target, sequences of L tokens, no recomputation; after Korthikanti et al. 2022), in
bytes per token per layer at 2 bytes per value (fp32: twice that):
encoder layer 18 d + 4 ffn + 5 heads L; decoder layer that plus a cross-attention block of
13 d + 5 heads L; plus the output layer's logits, log-softmax and their gradient in fp32,
12 bytes per target token per vocabulary entry. Not counted: DeepSpeed's communication
buckets, the allocator's fragmentation, the data and the framework itself.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cats_ds import pretrained
from cats_ds.model import (PRESETS, ModelConfig, count_pretrained_parameters, estimate_parameters,
                           pretrained_dimensions)

GIB = 2 ** 30
STAGES = (0, 1, 2, 3)
BUFFER_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of parameters, gradients and optimizer states (ZeRO stage -> k)."""

    name: str
    params: int
    grads: int
    optimizer: dict[int, int]
    activation_bytes: int       # per activation value


PRECISIONS = (
    Precision("fp32", 4, 4, {0: 8, 1: 12, 2: 12, 3: 8}, 4),
    Precision("bf16/fp16 mixed", 2, 2, {0: 12, 1: 12, 2: 12, 3: 12}, 2),
)


def model_state_bytes(params: int, world: int, stage: int, precision: Precision) -> float:
    """Parameters + gradients + optimizer states per rank under ZeRO ``stage``."""
    def share(bytes_per_param: int, partitioned_from: int) -> float:
        return bytes_per_param * params / (world if stage >= partitioned_from else 1)

    return (share(precision.params, 3) + share(precision.grads, 2)
            + share(precision.optimizer[stage], 1))


def cats_buffer_bytes(params: int, world: int, tasks: int, buffer_dtype: str, meta: bool = True) -> float:
    """N task buffers (+ the meta buffer) of one partition each, in the buffer dtype."""
    return (tasks + int(meta)) * BUFFER_BYTES[buffer_dtype] * params / world


def cats_temporary_bytes(params: int, world: int, tasks: int, buffer_dtype: str, meta: bool = True) -> float:
    """Step-boundary temporaries: the fp32 combined gradient, and fp32 copies of 16-bit buffers."""
    copies = 0 if BUFFER_BYTES[buffer_dtype] == 4 else tasks + int(meta)
    return 4 * (1 + copies) * params / world


def activation_bytes(config: ModelConfig, vocab: int, tokens_per_micro: int, seq_len: int,
                     bytes_per_value: int) -> float:
    """Rough activations of one micro-step (see the module docstring for the formula)."""
    d, enc, dec, heads, ffn = config.dimensions()
    per_side = tokens_per_micro / 2
    layer = 18 * d + 4 * ffn + 5 * heads * seq_len
    cross = 13 * d + 5 * heads * seq_len
    hidden = per_side * (enc * layer + dec * (layer + cross)) * bytes_per_value / 2
    return hidden + 12 * per_side * vocab


def training_flops(config: ModelConfig, vocab: int, source_tokens: float, target_tokens: float,
                   seq_len: float) -> float:
    """Model FLOPs of one training pass over these tokens: 3 x the forward's matrix products.

    Forward, counting 2 FLOPs per multiply-add, with sequences of ``seq_len`` tokens: per source
    token and encoder layer 2 (4 d^2 + 2 d ffn) for projections and feed-forward plus 4 d L for
    attention scores and values; per target token and decoder layer the same for self-attention
    and feed-forward, 2 (2 d^2) + 4 d L for cross-attention's query, output, scores and values,
    and per source token and decoder layer 2 (2 d^2) for cross-attention's keys and values of
    the encoder output; per target token 2 d V for the output layer. Embedding lookups, norms,
    softmax and the loss are not counted (as in Megatron's MFU).
    """
    d, enc, dec, _, ffn = config.dimensions()
    layer = 2 * (4 * d * d + 2 * d * ffn) + 4 * d * seq_len
    encoder = source_tokens * enc * layer
    decoder = target_tokens * dec * (layer + 4 * d * d + 4 * d * seq_len) + source_tokens * dec * 4 * d * d
    return 3 * (encoder + decoder + 2 * d * vocab * target_tokens)


@dataclass
class SizeRow:
    preset: str
    parameters: int
    precision: str
    model_states: dict[int, float]     # ZeRO stage -> bytes per rank
    cats_buffers: float
    cats_temporaries: float
    activations: float


def size_rows(vocab: int, world: int, tokens_per_micro: int, tasks: int, buffer_dtype: str,
              seq_len: int, pretrained_models: list[str] = ()) -> list[SizeRow]:
    models = [(preset, ModelConfig(preset=preset), vocab, None) for preset in PRESETS]
    for spec in pretrained_models:
        hf_config = pretrained.load_config(spec)
        models.append((spec, pretrained_dimensions(hf_config), hf_config.vocab_size,
                       count_pretrained_parameters(hf_config)))
    rows = []
    for name, config, model_vocab, counted in models:
        params = counted or estimate_parameters(config, model_vocab)
        for precision in PRECISIONS:
            rows.append(SizeRow(
                name, params, precision.name,
                {stage: model_state_bytes(params, world, stage, precision) for stage in STAGES},
                cats_buffer_bytes(params, world, tasks, buffer_dtype),
                cats_temporary_bytes(params, world, tasks, buffer_dtype),
                activation_bytes(config, model_vocab, tokens_per_micro, seq_len, precision.activation_bytes)))
    return rows


def markdown_table(rows: list[SizeRow]) -> str:
    header = ("| preset | parameters | precision | " + " | ".join(f"ZeRO-{s}" for s in STAGES)
              + " | CATS buffers | CATS temporaries | activations (est.) |")
    lines = [header, "|---|---:|---|" + "---:|" * (len(STAGES) + 3)]
    for row in rows:
        cells = [row.preset, f"{row.parameters:,}", row.precision,
                 *(_gib(row.model_states[s]) for s in STAGES),
                 _gib(row.cats_buffers), _gib(row.cats_temporaries), _gib(row.activations)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gib(value: float) -> str:
    return f"{value / GIB:.3f} GiB" if value < GIB else f"{value / GIB:.1f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.sizes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=64000, help="vocabulary size (default 64000)")
    parser.add_argument("--world", type=int, default=8, help="data-parallel ranks W (default 8)")
    parser.add_argument("--tokens-per-micro", type=int, default=4096,
                        help="source+target tokens per rank and micro-step, for the activations (default 4096)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence, for attention (default 128)")
    parser.add_argument("--tasks", type=int, default=8, help="CATS tasks N (default 8)")
    parser.add_argument("--buffer-dtype", choices=sorted(BUFFER_BYTES), default="fp32", help="cats.buffer_dtype")
    parser.add_argument("--pretrained", nargs="*", default=[], metavar="HUB_ID_OR_DIR",
                        help="also pretrained checkpoints (their own vocabulary)")
    args = parser.parse_args(argv)
    for name in ("vocab", "world", "tokens_per_micro", "seq_len", "tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    print(f"Memory per rank: model states under ZeRO 0-3 (W={args.world}), CATS with N={args.tasks} tasks "
          f"({args.buffer_dtype} buffers), activations of {args.tokens_per_micro} tokens per micro-step "
          f"(vocabulary {args.vocab}); formulas: python -m cats_ds.tools.sizes --help\n")
    try:
        rows = size_rows(args.vocab, args.world, args.tokens_per_micro, args.tasks, args.buffer_dtype, args.seq_len,
                         args.pretrained)
    except pretrained.PretrainedError as error:
        parser.error(str(error))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
