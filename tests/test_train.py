"""End to end: the trainer under the deepspeed launcher, 2 CPU processes, ZeRO-2, tiny preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cats_ds.distributed import free_port
from cats_ds.metrics import read_metrics
from conftest import REPO, run_deepspeed
from corpus_fixture import write_config, write_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, write_corpus(root / "corpus"), root / "cache"


def train(workspace, name: str, processes: int = 2, **sections):
    root, corpus, cache = workspace
    run_dir = root / name
    config = write_config(root / f"{name}.yaml", corpus, run_dir, cache, **sections)
    run_deepspeed(["--module", "cats_ds.train", "--config", str(config)], processes=processes)
    return run_dir


@pytest.fixture(scope="module")
def trained(workspace):
    """40 steps through the README's single-node script, launch/train.sh, on 2 CPU processes."""
    root, corpus, cache = workspace
    config = write_config(root / "full.yaml", corpus, root / "full", cache)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    result = subprocess.run(["bash", "launch/train.sh", "-n", "2", str(config), "train.max_steps=40"], cwd=REPO,
                            env=env, text=True, capture_output=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root / "full"


def test_training_lowers_the_loss_and_writes_results(trained):
    losses = [r["loss"] for r in read_metrics(trained / "metrics.jsonl", "train")]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    results = json.loads((trained / "results.json").read_text())
    assert set(results["test"]) == {"de-en", "es-en", "fr-en"}
    assert results["low_resource_directions"] == ["es-en"]
    assert {"bleu_low", "bleu_high", "chrf"} <= set(results)
    assert "| es-en | low |" in (trained / "results.md").read_text()
    # one line per test sentence (after 40 steps the tiny model may still emit eos first: empty lines)
    assert len((trained / "hypotheses" / "test.fr-en.txt").read_text().splitlines()) == 10


def test_every_step_logs_per_task_losses_and_cats_state(trained):
    record = read_metrics(trained / "metrics.jsonl", "train")[-1]
    assert len(record["task_loss"]) == 3 and all(np.isfinite(record["task_loss"]))
    cats = record["cats"]
    assert len(cats["scales"]) == 3 and abs(sum(cats["alpha"]) - 1) < 1e-9
    assert {"lambda", "eps", "grad_norm"} <= set(cats)
    run = read_metrics(trained / "metrics.jsonl", "run")[0]
    assert run["tasks"] == ["de-en", "es-en", "fr-en"] and run["world_size"] == 2
    # every pair of the corpus accounted for (corpus_fixture: 300/300/50 train, 20 valid and test)
    train_sizes, test_sizes = {"de-en": 300, "es-en": 50, "fr-en": 300}, dict.fromkeys(run["tasks"], 20)
    for split, sizes in (("train", train_sizes), ("test", test_sizes)):
        for task, size in sizes.items():
            counts = run["data"][split][task]
            assert counts["read"] == size and counts["kept"] + sum(counts["dropped"].values()) == size


def test_exported_model_translates_from_stdin(trained):
    export = trained / "export"
    # without DS_ACCELERATOR, DeepSpeed announces the accelerator it picked: on stderr, not among the outputs
    env = {key: value for key, value in os.environ.items() if key != "DS_ACCELERATOR"}
    result = subprocess.run([sys.executable, "-m", "cats_ds.translate", str(export), "--tgt", "en", "--beam", "2"],
                            input="eht thgil edam\nnoted retaw\n", text=True, capture_output=True, cwd=REPO,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2 and "accelerator" not in result.stdout
    assert "warning" not in result.stderr
    # a target the run never trained: translated, with one warning line naming what it trained
    untrained = subprocess.run([sys.executable, "-m", "cats_ds.translate", str(export), "--tgt", "de"],
                               input="eht thgil edam\n", text=True, capture_output=True, cwd=REPO, timeout=300)
    assert untrained.returncode == 0 and len(untrained.stdout.splitlines()) == 1, untrained.stderr
    assert f"warning: {export} was trained on de-en, es-en, fr-en, not on any source into de" in untrained.stderr


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(workspace):
    straight = train(workspace, "straight", train={"max_steps": 12})
    train(workspace, "resumed", train={"max_steps": 6})
    resumed = train(workspace, "resumed", train={"max_steps": 12})
    a, b = load_file(straight / "export" / "model.safetensors"), load_file(resumed / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-6, atol=1e-7), key
    starts = read_metrics(resumed / "metrics.jsonl", "run")
    assert len(starts) == 2 and starts[1]["data"] == starts[0]["data"]     # the resume is a cache hit
    alpha = {r["step"]: r["cats"]["alpha"] for r in read_metrics(straight / "metrics.jsonl", "train")}
    alpha_resumed = {r["step"]: r["cats"]["alpha"] for r in read_metrics(resumed / "metrics.jsonl", "train")}
    assert all(np.allclose(alpha[s], alpha_resumed[s], rtol=1e-6) for s in range(7, 13))


def test_zero3_ranks_generate_together_and_finish(workspace):
    # under ZeRO-3 every rank holds a shard of the weights: generation hangs unless all decode together
    run_dir = train(workspace, "zero3", train={"max_steps": 4, "ds_config": "ds_configs/zero3.json"},
                    eval={"test_sentences": 7, "batch_sentences": 3, "beam": 2})
    results = json.loads((run_dir / "results.json").read_text())
    assert all(s["sentences"] == 7 for s in results["test"].values())


def test_single_plain_process_without_launcher(workspace):
    root, corpus, cache = workspace
    config = write_config(root / "plain.yaml", corpus, root / "plain", cache,
                          train={"max_steps": 3, "ds_config": "ds_configs/zero1.json", "export": False},
                          cats={"enabled": False})
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(read_metrics(root / "plain" / "metrics.jsonl", "train")) == 3
    assert "cats" not in read_metrics(root / "plain" / "metrics.jsonl", "train")[-1]
    # rerun with another learning rate: refused, and the finished run's config.yaml is left as it was
    record = (root / "plain" / "config.yaml").read_bytes()
    refused = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(config), "optim.lr=0.001",
                              "train.max_steps=4"], cwd=REPO, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert refused.returncode == 2 and "optim.lr: saved 0.005, now 0.001" in refused.stderr.splitlines()[-1]
    assert "Traceback" not in refused.stderr     # one line, not a traceback (CATS_DS_TRACEBACK=1 gives one)
    assert (root / "plain" / "config.yaml").read_bytes() == record


def test_print_config_exits_before_data_preparation_and_distributed_start(workspace):
    root, corpus, cache = workspace
    config = write_config(root / "print.yaml", corpus, root / "print-run", root / "print-cache")
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(config), "--print-config",
                             "optim.lr=3e-4"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)      # nothing but the config on stdout: no log of a start
    assert printed["optim"]["lr"] == 3e-4 and printed["data"]["local_dir"] == str(corpus)
    assert not (root / "print-cache").exists() and not (root / "print-run").exists()


def test_a_config_override_with_a_typo_exits_2_naming_the_nearest_key():
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "train.max_stepz=3"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "did you mean train.max_steps?" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_exported_tokenizer_encodes_as_cats_ds_does(trained):
    from cats_ds.data.corpus import read_split
    from cats_ds.data.tokenizer import Tokenizer, lang_tag
    from transformers import AutoTokenizer
    export = trained / "export"
    ours, theirs = Tokenizer.load(export / "spm.model"), AutoTokenizer.from_pretrained(export)
    texts = [text for bitext in read_split(trained.parent / "corpus", "test").values() for text in bitext.src]
    texts += ["  two  spaces ", "bytes: 🙂 ✓", "été"]
    for text in texts:
        ids = theirs(lang_tag("en") + text)["input_ids"]
        assert ids == ours.encode_source(text, "en"), text
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids), text


TRANSFORMERS_ONLY = """
import json, sys
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
export, sources = sys.argv[1], sys.argv[2:]
tokenizer, model = AutoTokenizer.from_pretrained(export), AutoModelForSeq2SeqLM.from_pretrained(export)
outputs = []
for source in sources:   # one at a time, with cats-ds's per-batch length limit
    batch = tokenizer(["<2en>" + source], return_tensors="pt")
    limit = int(1.5 * batch["input_ids"].shape[1]) + 10
    outputs += tokenizer.batch_decode(model.generate(**batch, max_new_tokens=limit), skip_special_tokens=True)
print(json.dumps({"outputs": outputs, "cats_ds_imported": any(m.startswith("cats_ds") for m in sys.modules)}))
"""


def test_the_export_translates_with_transformers_alone_as_cats_ds_translate_does(trained, tmp_path):
    export, sources = trained / "export", ["eht thgil edam", "noted retaw", "gnik eht", "esuoh doog"]
    script = tmp_path / "translate_with_transformers.py"
    script.write_text(TRANSFORMERS_ONLY)
    # -I: the script's own directory and the environment's PYTHON* variables stay off the path
    plain = subprocess.run([sys.executable, "-I", str(script), str(export), *sources], text=True,
                           capture_output=True, cwd=tmp_path, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    result = json.loads(plain.stdout.strip().splitlines()[-1])
    assert not result["cats_ds_imported"]
    ours = subprocess.run([sys.executable, "-m", "cats_ds.translate", str(export), "--tgt", "en", "--batch-size", "1"],
                          input="\n".join(sources) + "\n", text=True, capture_output=True, cwd=REPO, timeout=300)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert result["outputs"] == ours.stdout.splitlines()
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["num_beams"] == 1 and generation["decoder_start_token_id"] == 2


def test_training_continues_from_a_cats_ds_export(trained, workspace):
    """model.pretrained=EXPORT (the family "cats"): the run starts where the exported model ended,
    not from scratch, on the same corpus and tokenizer."""
    root, corpus, cache = workspace
    config = write_config(root / "continued.yaml", corpus, root / "continued", cache,
                          train={"max_steps": 3, "ds_config": "ds_configs/zero1.json", "export": False},
                          cats={"enabled": False})
    written = yaml.safe_load(config.read_text())
    written["model"] = {"pretrained": str(trained / "export")}
    config.write_text(yaml.safe_dump(written))
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first = read_metrics(root / "continued" / "metrics.jsonl", "train")[0]["loss"]
    exported = [r["loss"] for r in read_metrics(trained / "metrics.jsonl", "train")]
    assert first < np.mean(exported[:5]) and abs(first - np.mean(exported[-5:])) < 0.5 * np.mean(exported[:5])


@pytest.mark.parametrize("env, processes", [({}, 1), ({"LOCAL_SIZE": "2"}, 2), ({"LOCAL_WORLD_SIZE": "4"}, 4),
                                            ({"LOCAL_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, 2)])
def test_threads_are_shared_among_the_launchers_local_processes(monkeypatch, env, processes):
    """The deepspeed launcher sets LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE: either divides the cores."""
    from cats_ds.train import local_processes
    for name in ("LOCAL_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert local_processes() == processes


def test_a_lock_left_by_a_killed_extension_build_is_named_instead_of_waited_on(tmp_path, monkeypatch):
    """torch's build lock outlives a process killed mid-build, and every later start waited on it."""
    from cats_ds import distributed
    lock = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    distributed.refuse_stale_build_locks()                      # fresh: a build may be running
    old = lock.stat().st_mtime - distributed.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    with pytest.raises(distributed.StaleBuildLock, match=str(lock)):
        distributed.refuse_stale_build_locks()
    # the trainer says so in one line before anything else
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "train.run_dir=" + str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith(f"error: {lock}: left by a build")


def test_a_cats_setting_the_data_make_impossible_is_refused_before_the_model_is_built(workspace):
    """A meta batch larger than a dev set depends on the tokenized data, so the config loader cannot
    see it; it used to fail only once the model and engine were built (issue 29 part 4)."""
    root, corpus, cache = workspace
    config = write_config(root / "meta.yaml", corpus, root / "meta", cache, cats={"meta_tokens_per_task": 100000})
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 2
    assert "error: cats.meta_tokens_per_task=100000 is more than task" in result.stderr.splitlines()[-1]
    assert "model:" not in result.stdout and not (root / "meta" / "config.yaml").exists()
