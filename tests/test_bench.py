"""The benchmark: a real one-process measurement on the tiny preset against cats_ds.tools.sizes, and its table."""

from __future__ import annotations

import json

import pytest

from cats_ds.tools.bench import VARIANT_RUNS, markdown_table, variant_names, variants_table
from cats_ds.model import ModelConfig, estimate_parameters
from cats_ds.tools.sizes import cats_buffer_bytes
from conftest import run_deepspeed


@pytest.mark.slow
def test_zero2_one_rank_buffers_match_the_size_formula(tmp_path):
    out = tmp_path / "bench.json"
    # lookahead, the variant with a dev meta gradient, and cats.interval=1: the first step already
    # runs the dev meta pass, so the meta buffer exists and the formula's N + 1 buffers are all there
    result = run_deepspeed(["--module", "cats_ds.tools.bench", "--stage", "2", "--steps", "2", "--warmup", "1",
                            "--json", str(out), "model.preset=tiny", "cats.variant=lookahead", "cats.interval=1"],
                           processes=1, timeout=300)
    [report] = json.loads(out.read_text())
    assert report["meta_buffer"]
    params = estimate_parameters(ModelConfig(preset="tiny"), 4000)      # bible8_cpu.yaml's vocabulary
    assert report["parameters"] == params
    # DeepSpeed pads the flat partition to an alignment boundary
    assert params <= report["partition_elements"] < params + 64
    assert report["cats_buffer_mib"] * 2 ** 20 == pytest.approx(cats_buffer_bytes(params, 1, 8, "fp32"), rel=1e-3)
    assert report["plain_tokens_per_s"] > 0 and report["cats_tokens_per_s"] > 0
    memory = report["memory"]
    # each engine's memory is its own: what CATS holds beyond plain includes its buffers
    assert memory["cats"]["held_mib"] - memory["plain"]["held_mib"] > 0.8 * report["cats_buffer_mib"]
    assert memory["plain"]["held_mib"] < memory["plain"]["peak_mib"]
    assert "rank 0: ZeRO-2 W=1 N=8" in result.stdout


def _rank(stage, world, plain_s, cats_s, plain_peak, cats_peak):
    return {"stage": stage, "world_size": world, "plain_step_s": plain_s, "cats_step_s": cats_s,
            "ratio_without_meta_pass": 1.05, "plain_tokens_per_s": 1000 / plain_s, "cats_tokens_per_s": 1000 / cats_s,
            "memory": {"plain": {"peak_mib": plain_peak}, "cats": {"peak_mib": cats_peak}},
            "cats_buffer_mib": 50.0, "process_peak_mib": 700.0}


def test_table_means_times_over_ranks_and_takes_the_largest_memory():
    reports = [[_rank(2, 2, 0.5, 0.6, 100, 160), _rank(2, 2, 0.3, 0.4, 120, 150)], [_rank(1, 1, 1.0, 1.5, 90, 180)]]
    rows = markdown_table(reports).splitlines()
    assert len(rows) == 4 and rows[0].count("|") == rows[2].count("|") == 14
    assert rows[2] == "| 2 | 2 | 0.400 | 0.500 | 1.250 | 1.050 | 2667 | 2083 | 120 | 160 | 1.33 | 50.0 | 700 |"
    assert rows[3] == "| 1 | 1 | 1.000 | 1.500 | 1.500 | 1.050 | 1000 | 667 | 90 | 180 | 2.00 | 50.0 | 700 |"


@pytest.mark.slow
def test_variants_on_the_tiny_preset_time_each_and_the_curvature_term(tmp_path):
    out = tmp_path / "variants.json"
    run_deepspeed(["--module", "cats_ds.tools.bench", "--stage", "2", "--steps", "4", "--warmup", "1",
                   "--variants", "second_order,reimpl_softmax,mgda", "--json", str(out), "model.preset=tiny",
                   "cats.curvature_every=2"], processes=1, timeout=600)
    [report] = json.loads(out.read_text())
    variants = report["variants"]
    assert list(variants) == ["plain", "second_order", "reimpl_softmax", "mgda"]
    assert all(cost["step_s"] > 0 for cost in variants.values())
    # every variant updates on every step; M on the first update (the warmup step) and every 2 steps after
    assert len(variants["second_order"]["curvature_s"]) == 2 and variants["second_order"]["curvature_every"] == 2
    assert all(seconds > 0 for seconds in variants["second_order"]["curvature_s"])
    assert variants["reimpl_softmax"]["curvature_s"] == []
    # (which variant is slower is the benchmark's to print, not this test's: wall-clock order flips
    # on a loaded machine)


def test_variant_names_put_plain_first_and_name_the_unknown():
    assert variant_names("all") == list(VARIANT_RUNS)
    assert variant_names("mgda, plain,mgda") == ["plain", "mgda"]
    with pytest.raises(Exception, match="unknown: reimpl_sofmax"):
        variant_names("reimpl_sofmax")


def _variants_rank(plain_s, second_s, peaks, curvature):
    memory = {name: {"peak_mib": peak, "held_mib": peak / 2} for name, peak in peaks.items()}
    return {"stage": 2, "world_size": 2, "steps": 4, "variants": {
        "plain": {"step_s": plain_s, "memory": memory["plain"], "curvature_s": [], "curvature_every": 1},
        "second_order": {"step_s": second_s, "memory": memory["second_order"], "curvature_s": curvature,
                         "curvature_every": 2}}}


def test_variants_table_ratios_extra_memory_and_amortized_curvature():
    ranks = [_variants_rank(1.0, 3.0, {"plain": 100, "second_order": 150}, [2.0, 4.0]),
             _variants_rank(2.0, 4.0, {"plain": 110, "second_order": 140}, [2.0, 2.0])]
    rows = variants_table([ranks]).splitlines()
    assert rows[2] == "| 2 | 2 | plain | 1.500 | 1.000 | 110 | 0 | 0 | - | - | - |"
    # time: means over ranks (3.5 / 1.5); extra memory: the largest over ranks; M: 2 of 4 steps,
    # 2.5 s each on average, (6/4 + 4/4) / 2 = 1.25 s per timed step
    assert rows[3] == "| 2 | 2 | second_order | 3.500 | 2.333 | 150 | 50 | 25 | 2x (every 2) | 2.500 | 1.250 |"


@pytest.mark.slow
def test_a_pretrained_architecture_is_benchmarked_with_its_own_size(tmp_path):
    """model.pretrained: the checkpoint's architecture and vocabulary (random weights), its FLOPs from its config."""
    from transformers import AutoModelForSeq2SeqLM

    from cats_ds.model import count_parameters
    from pretrained_fixtures import build_tiny_model
    directory = build_tiny_model("nllb", tmp_path / "nllb")
    out = tmp_path / "bench.json"
    run_deepspeed(["--module", "cats_ds.tools.bench", "--stage", "2", "--steps", "2", "--warmup", "1",
                   "--json", str(out), f"model.pretrained={directory}"], processes=1, timeout=300)
    [report] = json.loads(out.read_text())
    params = count_parameters(AutoModelForSeq2SeqLM.from_pretrained(directory))
    assert report["parameters"] == params and params <= report["partition_elements"] < params + 64
    assert report["plain_model_tflops"] > 0
