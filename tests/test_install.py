"""Issue 15's "done when": cats-ds installed by pip into a fresh virtualenv outside the checkout
trains, evaluates, translates, and its export loads and generates with transformers alone.

Offline and quick: the new environment sees this environment's packages (torch, DeepSpeed, ...)
through a .pth file, and pip installs cats-ds itself from a copy of the checkout without its
dependencies. Everything then runs from a temporary directory, so nothing comes from the checkout.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys

import pytest

from conftest import package_source
from corpus_fixture import write_corpus
from test_train import TRANSFORMERS_ONLY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A virtualenv with cats-ds pip-installed (not editable) and this environment's packages visible."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # a plain directory line: the project environment's own .pth files (its editable cats-ds) stay unread
    (root / "venv" / purelib.split("/venv/", 1)[1] / "dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--no-index", str(package_source(root / "checkout"))],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return root / "venv" / "bin"


def run(command: list, cwd, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHON", "VIRTUAL_ENV")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_installed_cats_ds_trains_evaluates_translates_and_exports_for_transformers(venv, tmp_path):
    installed = run([venv / "python", "-c", "import cats_ds.cli; print(cats_ds.cli.__file__)"], tmp_path)
    assert installed.startswith(str(venv.parent)), installed
    # the shipped default by name, its DeepSpeed JSON found in the package; the data and size of a test
    corpus = write_corpus(tmp_path / "corpus")
    overrides = [f"data.local_dir={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "data.source=local",
                 "data.vocab_size=400", "data.max_len=24", "data.low_resource=[es-en]", "model.preset=tiny",
                 "sampling.temperature=2", "sampling.tokens_per_step=600", "sampling.max_tokens_per_micro=150",
                 "optim.lr=5e-3", "optim.warmup_steps=5", "train.run_dir=run", "train.max_steps=8",
                 "train.save_every=0", "train.threads=1", "train.max_minutes=0", "eval.test_sentences=10",
                 "eval.dev_sentences=20", "eval.batch_sentences=10", "cats.meta_tokens_per_task=60", "cats.interval=2"]
    run([venv / "cats-ds", "train", "--config", "bible8_cpu", *overrides], tmp_path)
    run_dir = tmp_path / "run"

    run([venv / "cats-ds", "evaluate", "run"], tmp_path)
    trained = json.loads((run_dir / "results.json").read_text())
    evaluated = json.loads((run_dir / "evaluations" / "step00000008.test.beam1" / "results.json").read_text())
    assert {n: s["bleu"] for n, s in evaluated["test"].items()} == {n: s["bleu"] for n, s in trained["test"].items()}

    sources = ["eht thgil edam", "noted retaw", "gnik eht"]
    ours = run([venv / "cats-ds", "translate", "run/export", "--tgt", "en", "--batch-size", "1"], tmp_path,
               stdin="\n".join(sources) + "\n").splitlines()
    script = tmp_path / "translate_with_transformers.py"
    script.write_text(TRANSFORMERS_ONLY)
    plain = json.loads(run([venv / "python", "-I", script, run_dir / "export", *sources], tmp_path).splitlines()[-1])
    assert not plain["cats_ds_imported"]
    assert plain["outputs"] == ours and len(ours) == 3
