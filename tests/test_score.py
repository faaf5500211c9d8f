"""cats-ds evaluate: a run, a checkpoint (ZeRO 1, 2, 3) or an export scored as training's final
evaluation scores it, and the sacrebleu command that results.md names reproducing every number."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from cats_ds import cli, score
from conftest import CATS_DS, REPO, run_deepspeed
from corpus_fixture import write_config, write_corpus

ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def cats_ds(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(CATS_DS), *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    return root, write_corpus(root / "corpus"), root / "cache"


def train(workspace, name: str, **train_section) -> tuple:
    root, corpus, cache = workspace
    config = write_config(root / f"{name}.yaml", corpus, root / name, cache,
                          train={"threads": 1, **train_section}, eval={"test_sentences": 10, "dev_sentences": 20,
                                                                       "batch_sentences": 4, "every_steps": 3})
    cats_ds("train", "--config", str(config))
    return root / name


@pytest.fixture(scope="module")
def run_dir(workspace):
    """6 steps of ZeRO-2 in one process, a checkpoint and a dev evaluation every 3 steps, exported."""
    return train(workspace, "zero2", max_steps=6, save_every=3)


def results(directory):
    return json.loads((directory / "results.json").read_text())


def scores_only(per_direction: dict) -> dict:
    return {name: (s["bleu"], s["chrf"], s["distinct"], s["sentences"]) for name, s in per_direction.items()}


# ------------------------------------------------------------------------------------------------
# bad input: each refused before anything loads, naming what is wrong


def refusal(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        score.parse_args(list(argv))
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_missing_target_is_refused(tmp_path, capsys):
    assert f"{tmp_path / 'nope'}: no such directory" in refusal(capsys, str(tmp_path / "nope"))


def test_a_directory_that_is_no_run_checkpoint_or_export_is_refused(tmp_path, capsys):
    assert "neither a run directory (config.yaml), a checkpoint (manifest.json) nor an export" in \
        refusal(capsys, str(tmp_path))


def test_a_run_without_checkpoints_is_refused(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    assert f"{tmp_path / 'checkpoints'}: no checkpoint to evaluate" in refusal(capsys, str(tmp_path))


def test_a_run_whose_results_json_is_unreadable_is_refused_naming_it(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / "results.json").write_text('{"checkpoint": ')
    assert f"{tmp_path / 'results.json'}: no readable checkpoint.tag" in refusal(capsys, str(tmp_path))


def test_an_export_without_its_run_config_asks_for_one(tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "spm.model").write_bytes(b"")
    error = refusal(capsys, str(export))
    assert f"{tmp_path / 'config.yaml'}: the run config is not there; name it with --run-config" in error


@pytest.mark.parametrize("option, value", [("--beam", "0"), ("--sentences", "-1")])
def test_bad_numbers_are_refused_naming_the_option(option, value, tmp_path, capsys):
    assert f"{option}: must be >= " in refusal(capsys, str(tmp_path), option, value)


def test_each_bleu_tokenizer_gets_its_own_sacrebleu_command_which_reproduces_the_scores(tmp_path):
    from cats_ds.evaluate import Decoded
    from cats_ds.evaluate import score as score_one
    from cats_ds.results import write_results
    decoded = {"fr-en": Decoded(["the king said unto them", "good bread", ""], ["the king said", "good bread", "fire"]),
               "en-zh": Decoded(["国王对他们说", "好面包"], ["国王说", "好的面包"])}
    scores = {name: score_one(d.hypotheses, d.references, name.split("-")[1]) for name, d in decoded.items()}
    write_results(tmp_path, {"checkpoint": {"tag": "step00000001", "step": 1}, "test": scores}, decoded, set())
    text = (tmp_path / "results.md").read_text()
    assert "--tokenize zh" in text and "--tokenize 13a" in text
    assert (tmp_path / "references" / "test.fr-en.txt").read_text() == "the king said\ngood bread\nfire\n"
    assert_sacrebleu_reproduces(tmp_path, "test")


# ------------------------------------------------------------------------------------------------
# a tiny run


@pytest.mark.slow
def test_a_run_evaluates_to_its_own_final_table_and_sacrebleu_reproduces_every_number(run_dir):
    trained = results(run_dir)
    assert trained["checkpoint"] == {"tag": "step00000006", "step": 6}
    cats_ds("evaluate", str(run_dir))
    evaluated_dir = run_dir / "evaluations" / "step00000006.test.beam1"
    evaluated = results(evaluated_dir)
    assert evaluated["checkpoint"] == trained["checkpoint"]
    assert scores_only(evaluated["test"]) == scores_only(trained["test"])
    for name in trained["test"]:
        hypotheses = f"hypotheses/test.{name}.txt"
        assert (evaluated_dir / hypotheses).read_text() == (run_dir / hypotheses).read_text()
    for directory in (run_dir, evaluated_dir):
        assert_sacrebleu_reproduces(directory, "test")


def assert_sacrebleu_reproduces(directory, split: str) -> None:
    """Runs the command results.md gives, for every direction, and compares with results.json."""
    text, recorded = (directory / "results.md").read_text(), results(directory)[split]
    commands = dict(re.findall(r"^- ([\w, -]+): .*\n  `(sacrebleu [^`]+)`$", text, re.MULTILINE))
    assert commands
    for names, command in commands.items():
        for name in names.split(", "):
            out = subprocess.run(command.replace("DIRECTION", name).split(), cwd=directory, capture_output=True,
                                 text=True, timeout=120, env={**ENV, "PATH": f"{CATS_DS.parent}:{ENV['PATH']}"})
            assert out.returncode == 0, out.stderr
            bleu, chrf = json.loads(out.stdout)
            s = recorded[name]
            assert (bleu["signature"], chrf["signature"]) == (s["bleu_signature"], s["chrf_signature"])
            assert bleu["score"] == pytest.approx(s["bleu"], abs=0.005 + 1e-9), name
            assert chrf["score"] == pytest.approx(s["chrf"], abs=0.005 + 1e-9), name
    assert set(", ".join(commands).split(", ")) == set(recorded)


@pytest.mark.slow
def test_the_export_scores_as_the_checkpoint_it_was_made_from(run_dir, tmp_path):
    cats_ds("evaluate", str(run_dir / "export"), "--out", str(tmp_path / "export"))
    exported = results(tmp_path / "export")
    assert exported["checkpoint"] == {"tag": "export", "path": str(run_dir / "export")}
    assert scores_only(exported["test"]) == scores_only(results(run_dir)["test"])
    assert (tmp_path / "export" / "results.md").read_text().startswith(f"# Results of the export {run_dir}/export")


@pytest.mark.slow
def test_an_earlier_checkpoint_on_the_valid_split_with_a_beam(run_dir, tmp_path):
    out = tmp_path / "step3"
    cats_ds("evaluate", str(run_dir / "checkpoints" / "step00000003"), "--split", "valid", "--beam", "2",
            "--sentences", "5", "--out", str(out))
    evaluated = results(out)
    assert evaluated["checkpoint"] == {"tag": "step00000003", "step": 3} and evaluated["beam"] == 2
    assert all(s["sentences"] == 5 for s in evaluated["valid"].values())
    assert "# Results of checkpoint step00000003 (step 3), valid split" in (out / "results.md").read_text()
    assert len((out / "references" / "valid.fr-en.txt").read_text().splitlines()) == 5
    assert_sacrebleu_reproduces(out, "valid")


@pytest.mark.slow
def test_an_altered_checkpoint_is_refused_naming_the_file(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "evaluations"))
    victim = max((copy / "checkpoints" / "step00000006").rglob("*.pt"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    assert f"{victim}: checksum differs from the manifest" in refusal(capsys, str(copy))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_zero_1_and_3_checkpoints_load_without_an_engine(workspace, stage):
    run = train(workspace, f"zero{stage}", max_steps=3, save_every=0, export=False,
                ds_config=f"ds_configs/zero{stage}.json")
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["ds_config"] == f"ds_configs/zero{stage}.json"
    cats_ds("evaluate", str(run))
    evaluated = results(run / "evaluations" / "step00000003.test.beam1")
    assert scores_only(evaluated["test"]) == scores_only(results(run)["test"])


@pytest.mark.slow
def test_cats_ds_export_of_a_checkpoint_scores_as_that_checkpoint(run_dir, tmp_path):
    cats_ds("export", str(run_dir / "checkpoints" / "step00000003"), "--out", str(tmp_path / "export3"))
    # an export copied away from its run names the run's config
    cats_ds("evaluate", str(tmp_path / "export3"), "--run-config", str(run_dir / "config.yaml"),
            "--out", str(tmp_path / "from_export"))
    cats_ds("evaluate", str(run_dir / "checkpoints" / "step00000003"), "--out", str(tmp_path / "from_checkpoint"))
    assert scores_only(results(tmp_path / "from_export")["test"]) == \
        scores_only(results(tmp_path / "from_checkpoint")["test"])


def test_cats_ds_export_refuses_an_export(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "spm.model").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        cli.main(["export", str(export), "--out", str(tmp_path / "again")])
    assert stop.value.code == 2 and f"{export}: already an export" in capsys.readouterr().err


@pytest.mark.slow
def test_a_two_rank_zero3_checkpoint_merges_into_the_weights_training_exported(workspace):
    import torch
    from safetensors.torch import load_file

    from cats_ds import trained
    from cats_ds.config import load_config
    from cats_ds.data.tokenizer import Tokenizer
    root, corpus, cache = workspace
    config = write_config(root / "zero3x2.yaml", corpus, root / "zero3x2", cache,
                          train={"max_steps": 3, "save_every": 0, "threads": 1, "ds_config": "ds_configs/zero3.json"})
    run_deepspeed(["--module", "cats_ds.train", "--config", str(config)], processes=2)
    source = trained.locate(root / "zero3x2")
    assert source.name == "step00000003"
    model = trained.load_model(source, load_config(source.run_config),
                               Tokenizer.load(root / "zero3x2" / "export" / "spm.model"))
    merged, exported = model.state_dict(), load_file(root / "zero3x2" / "export" / "model.safetensors")
    assert exported and all(torch.equal(merged[key], value) for key, value in exported.items())
