"""Sweeps: the jobs file a spec gives, spec errors, collect on synthetic runs, one real mini sweep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from cats_ds.configio import ConfigError
from cats_ds.tools.sweep import REPO, Job, collect, emit, job_command, load_spec, main, run
from corpus_fixture import write_config, write_corpus


def _spec(tmp_path, base, **keys) -> Path:
    spec = {"base_config": str(base), "presets": ["tiny"], "tokens_per_step": [300, 1200],
            "overrides": ["train.max_steps=3"], **keys}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def base(tmp_path):
    # the fixture config: tokens_per_step 600, optim.lr 5e-3
    return write_config(tmp_path / "base.yaml", tmp_path / "corpus", tmp_path / "unused", tmp_path / "cache")


def test_emit_writes_one_line_per_job_with_sqrt_scaled_lr(tmp_path, base):
    out = tmp_path / "sweep"
    main(["emit", str(_spec(tmp_path, base)), "--out", str(out)])
    expected = [f"{base} train.max_steps=3 cats.enabled={on} model.preset=tiny sampling.tokens_per_step={tokens} "
                f"optim.lr={lr} train.run_dir={out / f'tiny_t{tokens}_{method}'}"
                for tokens, lr in ((300, "0.003536"), (1200, "0.007071"))      # 5e-3 x sqrt(tokens / 600)
                for method, on in (("plain", "false"), ("cats", "true"))]
    assert (out / "jobs.txt").read_text().splitlines() == expected
    assert json.loads((out / "tiny_t1200_cats" / "sweep.json").read_text())["method"] == "cats"


def test_linear_rule_from_an_explicit_base(tmp_path, base):
    spec_path = _spec(tmp_path, base, lr_rule="linear", base_lr=1e-5, base_tokens_per_step=300,
                      methods={"robust": ["cats.objective=robust"]})
    jobs = emit(load_spec(spec_path), spec_path, tmp_path / "sweep")
    assert [(j.name, j.lr) for j in jobs] == [("tiny_t300_robust", 1e-5), ("tiny_t1200_robust", 4e-5)]
    assert "optim.lr=4.0e-05" in jobs[1].line()    # read back by YAML as a float, not the string 4e-05


@pytest.mark.parametrize("keys, message", [
    ({"preset": ["tiny"]}, "unknown key(s) preset"),
    ({"presets": ["tiny", "huge"]}, "presets[1]: unknown preset 'huge'"),
    ({"tokens_per_step": [300, 300]}, "tokens_per_step: repeated values"),
    ({"overrides": ["train.max_steps = 3"]}, "overrides[0]"),
    ({"overrides": ["optim.lr=1"]}, "optim.lr is set by the sweep"),
    ({"methods": {"cats": ["cats.nonsense=1"]}}, "job tiny_t300_cats"),
    ({"lr_rule": "cubic"}, "lr_rule: 'cubic' is not one of"),
    ({"base_config": "missing.yaml"}, "base_config"),
])
def test_spec_errors_name_the_key(tmp_path, base, keys, message):
    spec_path = _spec(tmp_path, base, **keys)
    with pytest.raises(ConfigError, match="spec.yaml") as err:
        emit(load_spec(spec_path), spec_path, tmp_path / "sweep")
    assert message in str(err.value)


def test_job_commands():
    job = Job("a", "cats", "tiny", 300, 1e-3, "/c.yaml", ["x.y=1"], REPO / "runs" / "a")
    assert job_command(job, 1) == [sys.executable, "-m", "cats_ds.train", "--config", "/c.yaml", "x.y=1"]
    assert job_command(job, 2) == ["bash", str(REPO / "launch" / "train.sh"), "-n", "2", "/c.yaml", "x.y=1"]
    assert job_command(job, 0) == ["bash", str(REPO / "launch" / "train.sh"), "/c.yaml", "x.y=1"]


def _synthetic_run(root, name, method, preset, params, tokens, dev_loss, bleu, finished=True):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"model": {"preset": preset}, "sampling": {"tokens_per_step": tokens}, "optim": {"lr": 1e-3},
              "cats": {"enabled": method == "cats"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"kind": "run", "step": 0, "parameters": params}] + [
        {"kind": "train", "step": s, "loss": 5.0 - s, "tokens_per_second": 100.0 * s} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        results = {"dev": {"dev_loss": dev_loss, "dev_loss_low": dev_loss + 1}, "bleu": bleu, "bleu_low": bleu - 1,
                   "bleu_high": bleu + 1}
        (run_dir / "results.json").write_text(json.dumps(results))


def test_collect_writes_table_and_plots(tmp_path):
    for method in ("plain", "cats"):
        for preset, params in (("tiny", 1000), ("cpu", 5000)):
            for tokens in (800, 1600):
                _synthetic_run(tmp_path, f"{preset}_t{tokens}_{method}", method, preset, params, tokens,
                               dev_loss=params / tokens, bleu=tokens / 100 + (method == "cats"))
    _synthetic_run(tmp_path, "cpu_t3200_cats", "cats", "cpu", 5000, 3200, 0, 0, finished=False)
    table, plots = collect(tmp_path)
    lines = table.read_text().splitlines()
    assert "| tiny_t800_cats | cats | tiny | 1,000 | 800 | 0.001 | 3 | 2.000 | 200 | 1.250 | 2.250 | 9.00 | 8.00 " \
           "| 10.00 |" in lines
    assert any(line.startswith("| cpu_t3200_cats | cats | cpu | 5,000 | 3200 | 0.001 | 3 | 2.000 | 200 | unfinished |")
               for line in lines)
    assert sum(line.startswith("| ") for line in lines) == 1 + 9      # header and the runs
    assert sorted(p.name for p in plots) == ["bleu_vs_parameters.png", "bleu_vs_tokens_per_step.png",
                                             "dev_loss_vs_parameters.png", "dev_loss_vs_tokens_per_step.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in plots)


def test_collect_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run directories"):
        collect(tmp_path)


@pytest.mark.slow
def test_mini_sweep_runs_skips_finished_jobs_and_collects(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    base = write_config(tmp_path / "base.yaml", corpus, tmp_path / "unused", tmp_path / "cache",
                        train={"max_steps": 3, "export": False, "ds_config": "ds_configs/zero1.json"},
                        eval={"test_sentences": 4, "dev_sentences": 8})
    spec_path = _spec(tmp_path, base, tokens_per_step=[600], processes=1)
    spec, out = load_spec(spec_path), tmp_path / "sweep"
    run(spec, spec_path, out)
    finished = sorted(p.parent.name for p in out.glob("*/results.json"))
    assert finished == ["tiny_t600_cats", "tiny_t600_plain"]
    stamps = [p.stat().st_mtime for p in sorted(out.glob("*/results.json"))]
    run(spec, spec_path, out)       # everything finished: nothing runs again
    assert [p.stat().st_mtime for p in sorted(out.glob("*/results.json"))] == stamps
    table, plots = collect(out)
    rows = [line for line in table.read_text().splitlines() if line.startswith("| tiny_")]
    assert len(rows) == 2 and not any("unfinished" in row for row in rows)
    assert len(plots) == 4


def test_pretrained_checkpoints_join_the_presets_on_the_model_axis(tmp_path, base):
    spec_path = _spec(tmp_path, base, pretrained={"base": str(tmp_path / "export")}, tokens_per_step=[600],
                      methods={"cats": ["cats.enabled=true"]})
    jobs = emit(load_spec(spec_path), spec_path, tmp_path / "sweep")
    assert [(job.name, job.model) for job in jobs] == [("tiny_t600_cats", "tiny"), ("base_t600_cats", "base")]
    # the checkpoint decides the architecture: the base config's preset (tiny) is reset to the default beside it
    assert f"model.preset=cpu model.pretrained={tmp_path / 'export'} " in jobs[1].line()
    assert json.loads((tmp_path / "sweep" / "base_t600_cats" / "sweep.json").read_text())["model"] == "base"


@pytest.mark.parametrize("keys, message", [
    ({"presets": [], "pretrained": {}}, "presets, pretrained: at least one model"),
    ({"pretrained": {"tiny": "/x"}}, "pretrained.tiny: a name holds only"),
    ({"pretrained": {"base": "a b"}}, "pretrained.base: 'a b' is not a hub id or a path without spaces"),
    ({"overrides": ["model.pretrained=/x"]}, "model.pretrained is set by the sweep"),
])
def test_pretrained_spec_errors_name_the_key(tmp_path, base, keys, message):
    spec_path = _spec(tmp_path, base, **keys)
    with pytest.raises(ConfigError, match="spec.yaml") as err:
        emit(load_spec(spec_path), spec_path, tmp_path / "sweep")
    assert message in str(err.value)
