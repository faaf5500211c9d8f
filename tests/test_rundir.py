"""Run directories are owned: a second live run in one train.run_dir is refused, naming the
directory and the holder; a crashed holder leaves nothing stuck."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from cats_ds.rundir import RunDirectoryBusy, hold
from conftest import REPO
from corpus_fixture import write_config, write_corpus

HOLDER = ("import sys, time; from cats_ds.rundir import hold; lock = hold(sys.argv[1]); print('held', flush=True); "
          "time.sleep(600)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run, killed (SIGKILL: no clean-up of its own) at the end."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE,
                               text=True, cwd=REPO)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_held_run_directory_is_refused_naming_it_and_the_holder(tmp_path, holder):
    with pytest.raises(RunDirectoryBusy, match=re.escape(str(tmp_path / "run")) + f".*pid {holder.pid}"):
        hold(tmp_path / "run")


def test_a_killed_holder_leaves_the_directory_free(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    handle = hold(tmp_path / "run")
    assert f"pid {os.getpid()}" in (tmp_path / "run" / ".run.lock").read_text()
    handle.close()


@pytest.mark.slow
def test_the_trainer_refuses_a_run_directory_another_run_holds(tmp_path, holder):
    config = write_config(tmp_path / "run.yaml", write_corpus(tmp_path / "corpus"), tmp_path / "run",
                          tmp_path / "cache", train={"max_steps": 2, "threads": 1})
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode != 0
    assert f"{tmp_path / 'run'} is in use by another run (pid {holder.pid}" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
