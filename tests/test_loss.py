"""The token loss against the log-softmax formulation it replaced, computed in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cats_ds import loss


def reference(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The former loss.py: log-softmax over the vocabulary, then NLL and the uniform term, in float64."""
    log_probs = F.log_softmax(logits.double(), dim=-1)
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (1 - smoothing) * nll - smoothing * log_probs.mean(dim=-1), nll


@pytest.mark.parametrize("chunk_elements", [loss.CHUNK_ELEMENTS, 7 * 50, 50])   # one chunk; 7 rows; one row
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_loss_and_gradient_equal_the_log_softmax_reference(monkeypatch, chunk_elements: int,
                                                                   smoothing: float) -> None:
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 11, 50, generator=generator)).requires_grad_()
    targets = torch.randint(0, 50, (3, 11), generator=generator)
    smoothed, nll = loss.smoothed_cross_entropy(logits, targets, smoothing)
    expected_smoothed, expected_nll = reference(logits.detach(), targets, smoothing)
    torch.testing.assert_close(smoothed.double(), expected_smoothed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll.double(), expected_nll, rtol=1e-5, atol=1e-5)
    weights = torch.rand(3, 11, generator=generator)
    (gradient,) = torch.autograd.grad((smoothed * weights).sum(), logits)
    reference_logits = logits.detach().double().requires_grad_()
    (expected_gradient,) = torch.autograd.grad((reference(reference_logits, targets, smoothing)[0] * weights).sum(),
                                               reference_logits)
    torch.testing.assert_close(gradient.double(), expected_gradient, rtol=1e-5, atol=1e-6)


def test_the_torch_label_smoothing_convention_holds() -> None:
    """The same numbers as torch's own cross_entropy with label_smoothing, per token."""
    generator = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(40, 30, generator=generator), torch.randint(0, 30, (40,), generator=generator)
    smoothed, _ = loss.smoothed_cross_entropy(logits, targets, 0.2)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.2))


def test_bf16_logits_give_fp32_losses_close_to_the_fp32_ones() -> None:
    generator = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(2, 9, 64, generator=generator), torch.randint(0, 64, (2, 9), generator=generator)
    low = loss.smoothed_cross_entropy(logits.bfloat16().requires_grad_(), targets, 0.1)
    full = loss.smoothed_cross_entropy(logits.bfloat16().float(), targets, 0.1)
    assert low[0].dtype == torch.float32
    torch.testing.assert_close(low[0], full[0])
    torch.testing.assert_close(low[1], full[1])


def test_token_loss_sums_over_the_labels_and_ignores_padding() -> None:
    """token_loss through a model: sums over real target tokens only, NLL in float64."""
    vocabulary = 20

    class Echo(torch.nn.Module):   # logits depend on the decoder inputs alone
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(vocabulary, vocabulary)

        def forward(self, input_ids, attention_mask, decoder_input_ids):
            return type("Output", (), {"logits": self.embedding(decoder_input_ids)})()

    model = Echo()
    labels = torch.tensor([[5, 6, 2], [7, 2, loss.IGNORE_INDEX]])
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3), "labels": labels}
    result = loss.token_loss(model, batch, 0.1, pad_id=1, decoder_start_id=2)
    decoder_inputs = torch.tensor([[2, 5, 6], [2, 7, 2]])
    smoothed, nll = reference(model.embedding(decoder_inputs).detach(), labels.clamp(min=0), 0.1)
    mask = labels.ne(loss.IGNORE_INDEX)
    assert result.tokens.item() == 5
    torch.testing.assert_close(result.nll_sum, (nll * mask).sum())
    torch.testing.assert_close(result.smoothed_sum.double(), (smoothed * mask).sum(), rtol=1e-6, atol=1e-6)


def test_first_and_second_derivatives_check_in_float64(monkeypatch) -> None:
    """Both outputs' gradients, chunked, against finite differences (float64 throughout), and the
    gradient's own derivatives: Hessian-vector products (curvature, second_order) go through it."""
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 2 * 7)
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 7, dtype=torch.float64, generator=generator).requires_grad_()
    targets = torch.randint(0, 7, (5,), generator=generator)
    assert torch.autograd.gradcheck(lambda x: loss._ChunkedCrossEntropy.apply(x, targets, 0.3), (logits,))
    assert torch.autograd.gradgradcheck(lambda x: loss._ChunkedCrossEntropy.apply(x, targets, 0.3), (logits,))


def test_hessian_vector_products_equal_the_log_softmax_ones() -> None:
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 9, dtype=torch.float64, generator=generator).requires_grad_()
    targets, vector = torch.randint(0, 9, (6,), generator=generator), torch.randn(6, 9, dtype=torch.float64,
                                                                                  generator=generator)
    products = []
    for value in (loss.smoothed_cross_entropy(logits, targets, 0.1)[0].sum(), reference(logits, targets, 0.1)[0].sum()):
        (gradient,) = torch.autograd.grad(value, logits, create_graph=True)
        products.append(torch.autograd.grad((gradient * vector).sum(), logits)[0])
    torch.testing.assert_close(products[0], products[1])
