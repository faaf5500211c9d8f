"""Memory formulas of cats_ds.tools.sizes against hand-computed numbers and the ZeRO paper's own example."""

from __future__ import annotations

import pytest
import torch

from cats_ds.model import PRESETS, ModelConfig
from cats_ds.tools.sizes import (PRECISIONS, activation_bytes, cats_buffer_bytes, cats_temporary_bytes, main,
                                 model_state_bytes)

FP32, MIXED = PRECISIONS


@pytest.mark.parametrize("stage, expected", [(0, 16000), (1, 7000), (2, 5500), (3, 4000)])
def test_mixed_precision_model_states(stage, expected):
    # psi = 1000, W = 4: 2 psi params + 2 psi grads + 12 psi optimizer, partitioned from stage 1, 2, 3
    assert model_state_bytes(1000, 4, stage, MIXED) == expected


@pytest.mark.parametrize("stage, expected", [(0, 16000), (1, 11000), (2, 8000), (3, 4000)])
def test_fp32_model_states_count_deepspeeds_partition_copy_at_stages_1_and_2(stage, expected):
    assert model_state_bytes(1000, 4, stage, FP32) == expected


def test_zero_paper_figure_1():
    # Rajbhandari et al. 2020, figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam
    gigabytes = [model_state_bytes(7_500_000_000, 64, stage, MIXED) / 1e9 for stage in range(4)]
    assert gigabytes == pytest.approx([120, 31.4, 16.6, 1.88], abs=0.05)   # the paper rounds


def test_cats_buffers_and_temporaries():
    # N = 8 tasks + the meta buffer, psi = 1000, W = 2: partitions of 500 elements
    assert cats_buffer_bytes(1000, 2, 8, "fp32") == 9 * 4 * 500
    assert cats_buffer_bytes(1000, 2, 8, "bf16", meta=False) == 8 * 2 * 500
    assert cats_temporary_bytes(1000, 2, 8, "fp32") == 4 * 500                 # the combined gradient
    assert cats_temporary_bytes(1000, 2, 8, "bf16") == 4 * 500 + 9 * 4 * 500   # plus fp32 copies of the buffers


def test_activation_estimate():
    config = ModelConfig(preset="tiny")   # d 32, 1 + 1 layers, 2 heads, ffn 64
    # 20 tokens a side; layer 18*32 + 4*64 + 5*2*10 = 932, cross-attention 13*32 + 100 = 516 bytes per token
    hidden = 20 * (932 + 932 + 516)
    logits = 12 * 20 * 100
    assert activation_bytes(config, 100, 40, 10, 2) == hidden + logits
    assert activation_bytes(config, 100, 40, 10, 4) == 2 * hidden + logits


def test_command_prints_every_preset_twice(capsys):
    main(["--vocab", "64000", "--world", "8"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "GiB" in line]
    assert [row.split(" | ")[0][2:] for row in rows] == [p for p in PRESETS for _ in range(2)]
    six_b = [row for row in rows if row.startswith("| 6b | 5,900,877,824 | bf16")][0]
    assert "| 87.9 GiB | 30.2 GiB | 20.6 GiB | 11.0 GiB |" in six_b   # 16, 4 + 12/8, 2 + 14/8, 16/8 bytes x psi


def test_training_flops_match_torchs_flop_counter_on_a_real_model():
    """The closed form against PyTorch's own count of the matrix products (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cats_ds.loss import token_loss
    from cats_ds.model import ModelConfig, build_hf_config, build_model
    from cats_ds.tools.sizes import training_flops

    config, vocab, batch, length = ModelConfig(preset="tiny", d_model=64, ffn_dim=96), 300, 3, 12
    model = build_model(build_hf_config(config, vocab, 32, 1, 0, 2), seed=0)
    model.set_attn_implementation("eager")   # torch's counter does not count the CPU's fused attention kernel
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, vocab, (batch, length), generator=generator)
    inputs = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens.flip(1)}
    with FlopCounterMode(display=False) as counter:
        token_loss(model, inputs, 0.0, 1, 2).smoothed_sum.backward()
    expected = training_flops(config, vocab, batch * length, batch * length, length)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)


def test_a_pretrained_checkpoint_is_counted_exactly_from_its_config(tmp_path):
    """--pretrained: Psi from the checkpoint's config on the meta device equals the loaded model's count."""
    from transformers import AutoModelForSeq2SeqLM

    from cats_ds.model import count_parameters
    from cats_ds.tools.sizes import size_rows
    from pretrained_fixtures import build_tiny_model
    for family in ("nllb", "mt5"):   # tied embeddings (M2M100) and untied ones with relative positions (T5)
        directory = build_tiny_model(family, tmp_path / family)
        rows = [row for row in size_rows(64000, 8, 4096, 8, "fp32", 128, [str(directory)]) if row.preset == str(directory)]
        assert len(rows) == 2
        assert rows[0].parameters == count_parameters(AutoModelForSeq2SeqLM.from_pretrained(directory))
