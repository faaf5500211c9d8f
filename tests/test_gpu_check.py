"""launch/gpu_check.sh: its CPU dry run passes every step; without DeepSpeed or wheels it says what to do."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO

STEPS = ["environment", "exactness", "throughput", "bible", "translate", "curvature", "resume"]


@pytest.mark.slow
@pytest.mark.bible
def test_the_dry_run_passes_every_step_and_writes_one_report(tmp_path):
    result = subprocess.run(["bash", "launch/gpu_check.sh", "--cpu", "--out", str(tmp_path)], cwd=REPO, text=True,
                            capture_output=True, timeout=1500)
    report = json.loads((tmp_path / "report.json").read_text())
    failed = {step["name"]: step["notes"] for step in report["steps"] if not step["passed"]}
    assert result.returncode == 0 and not failed, (failed, result.stdout[-3000:], result.stderr[-3000:])
    assert [step["name"] for step in report["steps"]] == STEPS
    markdown = (tmp_path / "report.md").read_text()
    assert "| exactness | passed |" in markdown and "## Throughput" in markdown and "| mean (low) |" in markdown
    throughput = next(step for step in report["steps"] if step["name"] == "throughput")["figures"]["runs"]
    assert [run["stage"] for run in throughput] == [1, 2, 3]
    assert all(run["plain_mfu"] > 0 and run["cats_model_tflops"] > 0 for run in throughput)


def test_without_deepspeed_or_its_wheels_it_says_how_to_get_them(tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 1\n")   # a Python that cannot import DeepSpeed
    python.chmod(0o755)
    result = subprocess.run(["bash", "launch/gpu_check.sh"], cwd=REPO, text=True, capture_output=True, timeout=60,
                            env={**os.environ, "PYTHON": str(python), "GPU_BUNDLE": str(tmp_path / "none")})
    assert result.returncode == 2
    assert "launch/gpu_bundle.sh" in result.stderr and "DeepSpeed is not importable" in result.stderr
