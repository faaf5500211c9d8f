"""Fine-tuning a pretrained checkpoint loaded from disk: 2 ranks, ZeRO-3, CATS's shipped default
variant, then the export reloaded and translating with transformers alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_deepspeed
from corpus_fixture import write_config, write_corpus
from pretrained_fixtures import build_tiny_model

pytestmark = pytest.mark.slow

TRANSFORMERS_ONLY = """
import json, sys
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
export, sources = sys.argv[1], sys.argv[2:]
tokenizer = AutoTokenizer.from_pretrained(export, src_lang="fra_Latn")
model = AutoModelForSeq2SeqLM.from_pretrained(export)
outputs = []
for source in sources:   # one at a time, with cats-ds's per-batch length limit
    batch = tokenizer([source], return_tensors="pt")
    limit = int(1.5 * batch["input_ids"].shape[1]) + 10
    outputs += tokenizer.batch_decode(model.generate(**batch, max_new_tokens=limit), skip_special_tokens=True)
print(json.dumps({"outputs": outputs, "cats_ds_imported": any(m.startswith("cats_ds") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    base = build_tiny_model("nllb", root / "nllb")
    config = write_config(root / "run.yaml", write_corpus(root / "corpus"), root / "run", root / "cache",
                          train={"ds_config": "ds_configs/zero3.json", "max_steps": 20},
                          # a small step: the random tiny model keeps producing words (a trained one
                          # says nothing yet), so the outputs compared below are not all empty
                          optim={"lr": 1e-4, "warmup_steps": 1},
                          cats={"variant": "weighted_loss"}, eval={"test_sentences": 6, "batch_sentences": 4})
    written = yaml.safe_load(config.read_text())
    written["model"] = {"pretrained": str(base)}
    config.write_text(yaml.safe_dump(written))
    run_deepspeed(["--module", "cats_ds.train", "--config", str(config)], processes=2)
    return root / "run", base


def test_a_zero3_cats_fine_tune_trains_and_evaluates(fine_tuned):
    run_dir, _ = fine_tuned
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert len(steps) == 20 and all(r["step_applied"] for r in steps)
    assert all("cats" in r for r in steps)   # the CATS hook ran on every step
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["test"]) == {"de-en", "es-en", "fr-en"} and results["cats"]
    assert all(s["sentences"] == 6 for s in results["test"].values())


def test_the_export_translates_with_transformers_alone_as_the_run_evaluated(fine_tuned, tmp_path):
    run_dir, _ = fine_tuned
    export = run_dir / "export"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= \
        {path.name for path in export.iterdir()}
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["forced_bos_token_id"] == 347 and generation["decoder_start_token_id"] == 2   # eng_Latn
    sources = [line.split("\t")[0] for line in (run_dir.parent / "corpus" / "test.fr-en.tsv").read_text().splitlines()]
    script = tmp_path / "translate_with_transformers.py"
    script.write_text(TRANSFORMERS_ONLY)
    plain = subprocess.run([sys.executable, "-I", str(script), str(export), *sources[:6]], text=True,
                           capture_output=True, cwd=tmp_path, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    result = json.loads(plain.stdout.strip().splitlines()[-1])
    assert not result["cats_ds_imported"]
    evaluated = (run_dir / "hypotheses" / "test.fr-en.txt").read_text().splitlines()
    assert all(evaluated)
    assert [output.strip() for output in result["outputs"]] == evaluated


def test_cats_ds_translate_reads_the_export_in_its_family(fine_tuned):
    run_dir, _ = fine_tuned
    sources = [line.split("\t")[0] for line in (run_dir.parent / "corpus" / "test.fr-en.tsv").read_text().splitlines()]
    ours = subprocess.run([sys.executable, "-m", "cats_ds.translate", str(run_dir / "export"), "--src", "fr",
                           "--tgt", "en", "--batch-size", "1"], input="\n".join(sources[:6]) + "\n", text=True,
                          capture_output=True, cwd=REPO, timeout=300)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert ours.stdout.splitlines() == (run_dir / "hypotheses" / "test.fr-en.txt").read_text().splitlines()
    refused = subprocess.run([sys.executable, "-m", "cats_ds.translate", str(run_dir / "export"), "--src", "fr",
                              "--tgt", "xx"], input="x\n", text=True, capture_output=True, cwd=REPO, timeout=300)
    assert refused.returncode == 2 and "language 'xx'" in refused.stderr and "Traceback" not in refused.stderr


def test_cats_ds_evaluate_scores_the_fine_tuned_checkpoint_as_training_did(fine_tuned, tmp_path):
    run_dir, _ = fine_tuned
    result = subprocess.run([sys.executable, "-m", "cats_ds.score", str(run_dir), "--out", str(tmp_path / "e")],
                            text=True, capture_output=True, cwd=REPO, timeout=600,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scores = json.loads((tmp_path / "e" / "results.json").read_text())["test"]
    trained = json.loads((run_dir / "results.json").read_text())["test"]
    assert {name: round(s["bleu"], 6) for name, s in scores.items()} == \
        {name: round(s["bleu"], 6) for name, s in trained.items()}


def test_resuming_with_another_pretrained_model_is_refused_naming_the_key(fine_tuned, tmp_path):
    run_dir, _ = fine_tuned
    other = build_tiny_model("mbart50", tmp_path / "mbart50")
    saved = (run_dir / "config.yaml").read_text()
    result = subprocess.run([sys.executable, "-m", "cats_ds.train", "--config", str(run_dir / "config.yaml"),
                             f"model.pretrained={other}"], cwd=REPO, text=True, capture_output=True, timeout=300,
                            env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode != 0
    assert f"model.pretrained: {run_dir} holds checkpoints of a run with model.pretrained=" in result.stdout + result.stderr
    assert (run_dir / "config.yaml").read_text() == saved    # the run's record is left as it was


def test_cats_ds_curvature_rebuilds_the_fine_tuned_checkpoint(fine_tuned):
    run_dir, _ = fine_tuned
    out = run_dir / "curvature.json"
    result = subprocess.run([sys.executable, "-m", "cats_ds.tools.curvature", str(run_dir), "--iterations", "2",
                             "--batches", "1", "--batch-sentences", "4"], text=True,
                            capture_output=True, cwd=REPO, timeout=600, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tasks = json.loads(out.read_text())["tasks"]
    trained_dev = json.loads((run_dir / "results.json").read_text())["dev"]
    assert set(tasks) == {"de-en", "es-en", "fr-en"}
    assert all(abs(entry["dev_loss"] - trained_dev["dev_loss"]) < 1.0 for entry in tasks.values())
