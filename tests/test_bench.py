"""The benchmark: a real one-process measurement on the tiny preset against cats_ds.tools.sizes, and its table."""

from __future__ import annotations

import json

import pytest

from cats_ds.tools.bench import markdown_table
from cats_ds.model import ModelConfig, estimate_parameters
from cats_ds.tools.sizes import cats_buffer_bytes
from conftest import run_deepspeed


@pytest.mark.slow
def test_zero2_one_rank_buffers_match_the_size_formula(tmp_path):
    out = tmp_path / "bench.json"
    # cats.interval=1: the first step already runs the dev meta pass, so the meta buffer exists
    result = run_deepspeed(["--module", "cats_ds.tools.bench", "--stage", "2", "--steps", "2", "--warmup", "1",
                            "--json", str(out), "model.preset=tiny", "cats.interval=1"], processes=1, timeout=300)
    [report] = json.loads(out.read_text())
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
