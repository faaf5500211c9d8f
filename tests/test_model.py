"""Model presets: built from a config, parameter estimate without allocating."""

from __future__ import annotations

import pytest
import torch

from cats_ds.model import PRESETS, ModelConfig, build_hf_config, build_model, count_parameters, estimate_parameters


@pytest.mark.parametrize("preset", ["tiny", "cpu", "cpu-small"])
def test_parameter_estimate_matches_the_built_model(preset):
    config = ModelConfig(preset=preset)
    model = build_model(build_hf_config(config, 500, 40, 1, 0, 2), seed=0)
    assert estimate_parameters(config, 500) == count_parameters(model)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_estimate_matches_every_preset_built_without_memory(preset):
    config = ModelConfig(preset=preset)
    with torch.device("meta"):   # shapes only: the 6B preset costs nothing
        model = build_model(build_hf_config(config, 64000, 130, 1, 0, 2), seed=0)
    assert estimate_parameters(config, 64000) == count_parameters(model)


def test_presets_grow_to_several_billions():
    sizes = {name: estimate_parameters(ModelConfig(preset=name), 64000) for name in PRESETS}
    assert sizes["tiny"] < sizes["cpu-small"] < sizes["base"] < sizes["big"] < sizes["1b"] < sizes["xl"] < sizes["6b"]
    assert 1e9 < sizes["1b"] < 1.5e9 and sizes["6b"] > 5e9


def test_same_seed_same_weights():
    config = build_hf_config(ModelConfig(preset="tiny"), 100, 20, 1, 0, 2)
    a, b = build_model(config, seed=3), build_model(config, seed=3)
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters()))


def test_overrides_and_validation():
    assert ModelConfig(preset="base", d_model=256, attention_heads=4).dimensions() == (256, 6, 6, 4, 2048)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(preset="base", d_model=250)


def test_activation_checkpointing_recomputes_layers_and_changes_no_number():
    config = build_hf_config(ModelConfig(preset="tiny", dropout=0.1), 60, 20, 1, 0, 2)
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, 60, (4, 12), generator=generator),
             "labels": torch.randint(3, 60, (4, 9), generator=generator)}
    runs = {}
    for checkpointing in (False, True):
        model = build_model(config, seed=3, activation_checkpointing=checkpointing)
        calls = []
        # a sublayer: the layer's own hooks stay outside the checkpoint and run once
        model.model.encoder.layers[0].fc1.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(5)  # the same dropout masks in both runs
        loss = model(**batch).loss
        loss.backward()
        runs[checkpointing] = loss.detach(), [p.grad for p in model.parameters()], len(calls)
    (plain_loss, plain_grads, plain_calls), (loss, grads, calls) = runs[False], runs[True]
    assert (plain_calls, calls) == (1, 2)  # the checkpointed layer ran again in backward
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(g, h) for g, h in zip(grads, plain_grads))
