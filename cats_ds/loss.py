"""Token-level translation loss: label-smoothed cross-entropy summed over target tokens.

Sums, not means: the trainer divides by the global number of target tokens of the optimizer
step, so that the per-task gradients g_n add up to exactly the plain training gradient.

Memory. The loss never materializes log-probabilities: per token it needs only the log-sum-exp
of the logits, the target's logit and the logits' mean over the vocabulary. With a 256k
vocabulary (NLLB) a [tokens x vocabulary] fp32 tensor is 4 GB for 4,096 tokens, so the tokens
go in chunks of at most CHUNK_ELEMENTS logits, each upcast to fp32 in turn, in a function with
its own backward (the gradient from the kept log-sum-exp, chunk by chunk): what autograd keeps is
the logits themselves (in the model's dtype) and three numbers per token, and the fp32 copies
live one chunk at a time. Where a second derivative is asked for (create_graph: the curvature
tool, CATS's second_order term) the backward pass is the same gradient in differentiable,
unchunked form.
``python -m cats_ds.tools.loss_memory`` measures it against the log-softmax formulation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers.models.m2m_100.modeling_m2m_100 import shift_tokens_right

from cats_ds import distributed, placement

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 24   # logits upcast to fp32 at a time: 64 MiB


@dataclass
class TokenLoss:
    smoothed_sum: torch.Tensor   # what is optimized (has a graph)
    nll_sum: torch.Tensor        # summed negative log-likelihood, for logging (float64, no graph)
    tokens: torch.Tensor         # target tokens counted (float64)

    # tensors on the model's device, not Python numbers: reading a number would wait for the
    # GPU after every micro-step


def token_loss(model, batch: dict[str, torch.Tensor], label_smoothing: float,
               pad_id: int, decoder_start_id: int) -> TokenLoss:
    """Runs ``model`` (a DeepSpeed engine or a plain module) on a batch from cats_ds.data.tasks.collate.
    decoder_start_id: the model config's decoder_start_token_id (the labels shifted right behind it)."""
    labels = batch["labels"]
    decoder_input_ids = shift_tokens_right(labels, pad_id, decoder_start_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits
    mask = labels.ne(IGNORE_INDEX)
    smoothed, nll = smoothed_cross_entropy(logits, labels.masked_fill(~mask, 0), label_smoothing)
    return TokenLoss(smoothed_sum=(smoothed * mask).sum(), nll_sum=(nll.detach() * mask).sum().double(),
                     tokens=mask.sum().double())


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                           label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (label-smoothed loss, NLL), fp32 (fp64 for fp64 logits), in torch's convention: (1 - e) * nll + e *
    the mean over the vocabulary of -log p. logits [..., V] in any dtype, targets [...] valid ids."""
    vocabulary = logits.shape[-1]
    smoothed, nll = _ChunkedCrossEntropy.apply(logits.reshape(-1, vocabulary), targets.reshape(-1), label_smoothing)
    return smoothed.view(targets.shape), nll.view(targets.shape)


def _chunks(rows: int, vocabulary: int) -> Iterator[slice]:
    """Row slices of at most CHUNK_ELEMENTS logits (one row at least)."""
    size = max(1, CHUNK_ELEMENTS // vocabulary)
    return (slice(start, min(start + size, rows)) for start in range(0, rows, size))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward: log-sum-exp, target logit and mean logit per token, chunk by chunk in fp32 or more. Backward:
    the gradient per chunk from the kept log-sum-exp, written into one tensor of the logits' dtype:
    d/dx [(1 - e) nll + e uniform] = p - (1 - e) onehot - e / V, and d nll/dx = p - onehot."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float):
        rows, vocabulary = logits.shape
        precision = torch.promote_types(logits.dtype, torch.float32)   # fp32, or fp64 for fp64 logits
        log_normalizer = torch.empty(rows, dtype=precision, device=logits.device)
        target_logit, mean_logit = torch.empty_like(log_normalizer), torch.empty_like(log_normalizer)
        for rows_of in _chunks(rows, vocabulary):
            upcast = logits[rows_of].to(precision)
            log_normalizer[rows_of] = torch.logsumexp(upcast, dim=-1)
            target_logit[rows_of] = upcast.gather(-1, targets[rows_of].unsqueeze(-1)).squeeze(-1)
            mean_logit[rows_of] = upcast.mean(dim=-1)
        nll = log_normalizer - target_logit
        smoothed = (1.0 - label_smoothing) * nll + label_smoothing * (log_normalizer - mean_logit)
        ctx.save_for_backward(logits, targets, log_normalizer)
        ctx.label_smoothing = label_smoothing
        return smoothed, nll

    @staticmethod
    def backward(ctx, grad_smoothed: torch.Tensor | None, grad_nll: torch.Tensor | None):
        logits, targets, log_normalizer = ctx.saved_tensors
        smoothing, (rows, vocabulary) = ctx.label_smoothing, logits.shape
        precision = log_normalizer.dtype
        grad_smoothed = torch.zeros_like(log_normalizer) if grad_smoothed is None else grad_smoothed.to(precision)
        grad_nll = torch.zeros_like(log_normalizer) if grad_nll is None else grad_nll.to(precision)
        if torch.is_grad_enabled():   # create_graph (curvature, cats second_order): a gradient autograd can differentiate
            return _differentiable_gradient(logits, targets, grad_smoothed, grad_nll, smoothing), None, None
        grad_logits = torch.empty_like(logits)
        for rows_of in _chunks(rows, vocabulary):
            g_smoothed, g_nll = grad_smoothed[rows_of, None], grad_nll[rows_of, None]
            # in place, in grad_logits itself when it has the computing precision (fp32 logits)
            grad = grad_logits[rows_of] if logits.dtype == precision else None
            grad = torch.sub(logits[rows_of].to(precision), log_normalizer[rows_of, None], out=grad)
            grad.exp_().mul_(g_smoothed + g_nll).sub_(g_smoothed * (smoothing / vocabulary))
            grad.scatter_add_(-1, targets[rows_of, None], -(g_smoothed * (1.0 - smoothing) + g_nll))
            if logits.dtype != precision:
                grad_logits[rows_of] = grad
        return grad_logits, None, None


def _differentiable_gradient(logits: torch.Tensor, targets: torch.Tensor, grad_smoothed: torch.Tensor,
                             grad_nll: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The same gradient from out-of-place operations on the logits, whole: Hessian-vector
    products differentiate through it (the chunked in-place pass cannot be differentiated)."""
    precision, vocabulary = grad_smoothed.dtype, logits.shape[-1]
    grad = torch.softmax(logits.to(precision), dim=-1) * (grad_smoothed + grad_nll)[:, None]
    grad = grad - (grad_smoothed * (smoothing / vocabulary))[:, None]
    grad = grad.scatter_add(-1, targets[:, None], -(grad_smoothed * (1.0 - smoothing) + grad_nll)[:, None])
    return grad.to(logits.dtype)


def plan_tokens(plan, tasks, num_tasks: int) -> torch.Tensor:
    """Global target and source token counts per task [2, N] of a sampler plan (one all-reduce),
    on the CPU: the loss normalizer, so that the per-task gradients add up to the mean-loss gradient."""
    counts = np.zeros((2, num_tasks))
    for window in plan:
        target_lengths, source_lengths = tasks[window.task].tgt_lengths(), tasks[window.task].src_lengths()
        for micro in window.micro_batches:
            counts[0, window.task] += float(target_lengths[micro].sum())
            counts[1, window.task] += float(source_lengths[micro].sum())
    return distributed.all_reduce_sum(placement.as_tensor(counts)).cpu()
