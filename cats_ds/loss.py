"""Token-level translation loss: label-smoothed cross-entropy summed over target tokens.

Sums, not means: the trainer divides by the global number of target tokens of the optimizer
step, so that the per-task gradients g_n add up to exactly the plain training gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.m2m_100.modeling_m2m_100 import shift_tokens_right

from cats_ds import distributed, placement

IGNORE_INDEX = -100


@dataclass
class TokenLoss:
    smoothed_sum: torch.Tensor   # what is optimized (has a graph)
    nll_sum: torch.Tensor        # summed negative log-likelihood, for logging (float64, no graph)
    tokens: torch.Tensor         # target tokens counted (float64)

    # tensors on the model's device, not Python numbers: reading a number would wait for the
    # GPU after every micro-step


def token_loss(model, batch: dict[str, torch.Tensor], label_smoothing: float,
               pad_id: int, decoder_start_id: int) -> TokenLoss:
    """Runs ``model`` (a DeepSpeed engine or a plain module) on a batch from cats_ds.data.tasks.collate."""
    labels = batch["labels"]
    decoder_input_ids = shift_tokens_right(labels, pad_id, decoder_start_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids).logits
    log_probs = F.log_softmax(logits.float(), dim=-1)
    mask = labels.ne(IGNORE_INDEX)
    targets = labels.masked_fill(~mask, 0)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # torch's label_smoothing convention: (1 - e) * nll + e * mean over the vocabulary of -log p
    uniform = -log_probs.mean(dim=-1)
    smoothed = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    return TokenLoss(smoothed_sum=(smoothed * mask).sum(), nll_sum=(nll.detach() * mask).sum().double(),
                     tokens=mask.sum().double())


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
