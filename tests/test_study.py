"""Studies: job planning with seeds and data variants, skipping finished runs, the report on
synthetic run directories (numbers checked by hand), spec errors, every shipped spec, one mini study."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

import cats_ds.tools.study as study
import cats_ds.tools.sweep as sweep
from cats_ds.config import load_config
from cats_ds.configio import ConfigError
from cats_ds.tools.study import load_study, main, measure_curvature, run_study, write_report
from cats_ds.tools.sweep import REPO, emit, plan_jobs, run_all
from corpus_fixture import write_config, write_corpus

METHODS = {"T1": ["sampling.temperature=1", "cats.enabled=false"],
           "T5": ["sampling.temperature=5", "cats.enabled=false"],
           "cats": ["sampling.temperature=5", "cats.enabled=true"],
           "tuned_cats": ["sampling.temperature=5", "cats.enabled=true", "cats.lr_alpha=0.1"]}


@pytest.fixture
def base(tmp_path):
    return write_config(tmp_path / "base.yaml", tmp_path / "corpus", tmp_path / "unused", tmp_path / "cache")


def _spec(tmp_path, base, **keys) -> Path:
    spec = {"base_config": str(base), "presets": ["tiny"], "tokens_per_step": [300], "methods": METHODS,
            "baselines": ["T1", "T5"], "tuned": ["tuned_cats"], "seeds": [1, 2],
            "data": {"d": ["data.max_len=20"]}, "overrides": ["train.max_steps=3"], **keys}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------
# planning


def test_jobs_cover_data_variants_and_seeds_with_readable_names(tmp_path, base):
    spec_path = _spec(tmp_path, base, data={"a": ["data.max_len=20"], "b": ["data.max_len=16"]},
                      tokens_per_step=[300, 1200], methods={k: METHODS[k] for k in ("T1", "cats")}, tuned=[],
                      baselines=["T1"])
    jobs = plan_jobs(load_study(spec_path), spec_path, tmp_path / "out")
    assert [j.name for j in jobs] == [f"{d}_tiny_t{t}_{m}_s{s}" for d in "ab" for t in (300, 1200)
                                      for s in (1, 2) for m in ("T1", "cats")]
    job = jobs[-1]          # b, 1200 tokens, seed 2, cats
    assert (job.data, job.seed, job.method, job.tokens_per_step) == ("b", 2, "cats", 1200)
    assert job.overrides == ["train.max_steps=3", "data.max_len=16", "sampling.temperature=5", "cats.enabled=true",
                             "model.preset=tiny", "sampling.tokens_per_step=1200", "optim.lr=0.007071",
                             "train.seed=2", f"train.run_dir={tmp_path / 'out' / job.name}"]


def test_without_seeds_and_data_the_sweep_names_stay(tmp_path, base):
    spec_path = _spec(tmp_path, base, seeds=[], data={})
    jobs = plan_jobs(load_study(spec_path), spec_path, tmp_path / "out")
    assert [j.name for j in jobs] == ["tiny_t300_T1", "tiny_t300_T5", "tiny_t300_cats", "tiny_t300_tuned_cats"]
    assert not any(o.startswith("train.seed=") for o in jobs[0].overrides)


def test_emit_records_data_and_seed_for_the_report(tmp_path, base):
    out = tmp_path / "study"
    main(["emit", str(_spec(tmp_path, base)), "--out", str(out)])
    assert len((out / "jobs.txt").read_text().splitlines()) == 8
    assert json.loads((out / "d_tiny_t300_cats_s2" / "sweep.json").read_text())["seed"] == 2
    assert (out / "study.yaml").read_text() == (tmp_path / "spec.yaml").read_text()
    assert json.loads((out / "study.json").read_text())["command"].startswith("python -m cats_ds.tools.study emit ")


@pytest.mark.parametrize("keys, message", [
    ({"baselines": ["T1", "T7"]}, "baselines[1]: 'T7' is not a method"),
    ({"baselines": []}, "baselines: name at least one"),
    ({"tuned": ["nope"]}, "tuned[0]: 'nope' is not a method"),
    ({"curvature": {"iterations": 0}}, "curvature.iterations: must be >= 1"),
    ({"curvature": {"iters": 5}}, "unknown key(s) curvature.iters"),
    ({"seeds": [1, 1]}, "seeds: repeated values"),
    ({"seeds": [1], "overrides": ["train.seed=3"]}, "overrides[0]: train.seed is set by the sweep"),
    ({"data": {"d": ["data.max_len = 3"]}}, "data.d[0]"),
    ({"data": {"d e": []}}, "data.d e: a name may hold only"),
    ({"data": {"d": ["data.nonsense=1"]}}, "job d_tiny_t300_T1_s1"),
    ({"parallel": 0}, "parallel: must be >= 1"),
])
def test_spec_errors_name_the_key(tmp_path, base, keys, message):
    spec_path = _spec(tmp_path, base, **keys)
    with pytest.raises(ConfigError, match="spec.yaml") as err:
        plan_jobs(load_study(spec_path), spec_path, tmp_path / "out")
    assert message in str(err.value)


def test_cli_errors_are_one_line(tmp_path, base):
    with pytest.raises(SystemExit, match=r"error: .*spec.yaml.*baselines\[0\]"):
        main(["emit", str(_spec(tmp_path, base, baselines=["T9"])), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="study.yaml not found"):
        main(["report", str(tmp_path / "nothing")])


@pytest.mark.parametrize("spec_path", sorted((REPO / "cats_ds" / "configs" / "studies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_spec_plans(tmp_path, spec_path):
    text = spec_path.read_text()
    assert text.startswith("# ") and "python -m cats_ds.tools.study run" in text and "run time" in text.lower()
    spec = load_study(spec_path)
    jobs = plan_jobs(spec, spec_path, tmp_path / "study")       # loads every job's config
    assert len({j.name for j in jobs}) == len(jobs) > 1
    assert set(spec.baselines) <= {j.method for j in jobs}


def test_shipped_specs_cover_the_issue():
    names = {p.stem for p in (REPO / "cats_ds" / "configs" / "studies").glob("*.yaml")}
    for kind in ("bible8", "overparameterization", "large_batch"):
        assert {f"{kind}_cpu", f"{kind}_gpu"} <= names
    assert "bible8_related_x2en_cpu" in names
    variants = load_study(REPO / "cats_ds/configs/studies/bible8_cpu.yaml").data
    assert sorted(variants) == ["diverse_en2x", "diverse_x2en", "related_en2x", "related_x2en"]
    large = load_study(REPO / "cats_ds/configs/studies/large_batch_cpu.yaml")
    assert large.lr_rule == "sqrt" and [t // large.tokens_per_step[0] for t in large.tokens_per_step] == [1, 4, 16]


# ----------------------------------------------------------------------------------------------
# running: skipping, parallel, failures, curvature


def _fake_trainer(ran: list[str], fail: str = ""):
    def run_job(job, processes, desc):
        ran.append(job.name)
        if job.name == fail:
            return f"{desc} job {job.name} failed with exit code 1; see {job.run_dir / 'train.log'}"
        (job.run_dir / "results.json").write_text("{}")
        return None
    return run_job


def test_run_skips_finished_runs_and_runs_the_rest(tmp_path, base, monkeypatch):
    spec_path, out = _spec(tmp_path, base, parallel=2), tmp_path / "study"
    spec = load_study(spec_path)
    jobs = emit(spec, spec_path, out)
    (jobs[0].run_dir / "results.json").write_text("{}")
    ran: list[str] = []
    monkeypatch.setattr(sweep, "run_job", _fake_trainer(ran))
    monkeypatch.setattr(sweep, "prepare_data", lambda pending: ran.append(f"prepare {len(pending)}"))
    sweep.run(spec, spec_path, out, desc="study")
    assert ran[0] == "prepare 7" and sorted(ran[1:]) == sorted(j.name for j in jobs[1:])
    ran.clear()
    sweep.run(spec, spec_path, out, desc="study")
    assert ran == []


def test_a_failed_job_stops_the_study_with_its_log(tmp_path, base, monkeypatch):
    spec_path, out = _spec(tmp_path, base), tmp_path / "study"      # parallel 1: in order
    ran: list[str] = []
    monkeypatch.setattr(sweep, "run_job", _fake_trainer(ran, fail="d_tiny_t300_T5_s1"))
    with pytest.raises(SystemExit, match=r"d_tiny_t300_T5_s1 failed .* see .*d_tiny_t300_T5_s1/train.log"):
        sweep.run(load_study(spec_path), spec_path, out, desc="study")
    assert ran == ["d_tiny_t300_T1_s1", "d_tiny_t300_T5_s1"]


def test_run_all_keeps_parallel_jobs_running():
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def work(item):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
    run_all(range(5), work, parallel=2, desc="test")
    assert state["most"] == 2


def test_curvature_is_measured_once_for_finished_runs(tmp_path, base, monkeypatch):
    curvature = {"iterations": 3, "batches": 1, "batch_sentences": 4, "trace_samples": 2}
    spec_path, out = _spec(tmp_path, base, curvature=curvature), tmp_path / "study"
    spec = load_study(spec_path)
    jobs = emit(spec, spec_path, out)
    for job in jobs[:3]:
        (job.run_dir / "results.json").write_text("{}")
    (jobs[0].run_dir / "curvature.json").write_text("{}")
    commands = []

    def fake(command, log_path, env):
        commands.append(command)
        (Path(command[3]) / "curvature.json").write_text("{}")
        return 0
    monkeypatch.setattr(study, "run_logged", fake)
    measure_curvature(spec, jobs)
    assert sorted(Path(c[3]).name for c in commands) == sorted(j.name for j in jobs[1:3])
    assert commands[0][1:3] == ["-m", "cats_ds.tools.curvature"]
    assert commands[0][4:] == ["--iterations", "3", "--batches", "1", "--batch-sentences", "4", "--seed", "0",
                               "--trace-samples", "2"]


# ----------------------------------------------------------------------------------------------
# the report on synthetic runs

# low-resource BLEU by method and seed; high = low + 10; chrF++ = 10 x BLEU
LOW = {"T1": {1: 2.0, 2: 3.0}, "T5": {1: 3.0, 2: 4.0}, "cats": {1: 4.0, 2: 4.5}, "tuned_cats": {1: 2.5}}
HIGH = {"T1": {1: 12.0, 2: 13.0}, "T5": {1: 13.0, 2: 14.0}, "cats": {1: 12.0, 2: 15.0}, "tuned_cats": {1: 13.0}}
CURVATURE = {"T5": {1: (10.0, 1.0), 2: (20.0, 2.0)}, "cats": {1: (4.0, 1.0), 2: (6.0, 3.0)}}  # (fr-en, es-en)
TASKS = ["fr-en", "de-en", "es-en"]
TOKEN_SHARE = [0.45, 0.45, 0.1]     # every logged step's target-token shares


def _results(low: float, high: float) -> dict:
    test = {"fr-en": high - 1, "de-en": high + 1, "es-en": low}
    task_dev_loss = [4.0 - high / 10, 4.0 - high / 10, 4.0 - low / 10]     # TASKS' order
    dev = {"dev_loss": sum(task_dev_loss) / 3, "dev_loss_low": 4.0 - low / 10, "task_dev_loss": task_dev_loss}
    return {"step": 700, "dev": dev, "low_resource_directions": ["es-en"], "cats": False,
            "test": {d: {"bleu": b, "chrf": 10 * b, "distinct": share, "sentences": 200}
                     for (d, b), share in zip(test.items(), (1.0, 0.9, 0.6))},
            "bleu_low": low, "bleu_high": high, "bleu": (2 * high + low) / 3, "chrf_low": 10 * low,
            "chrf_high": 10 * high, "chrf": 10 * (2 * high + low) / 3}


def _write_run(run_dir: Path, method: str, seed: int) -> None:
    config = {"cats": {"enabled": "cats" in method}, "eval": {"every_steps": 0}, "train": {"keep_best": True}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"kind": "run", "step": 0, "tasks": TASKS, "low_resource": ["es-en"], "parameters": 12345},
               {"kind": "train", "step": 5, "loss": 4.0, "token_share": TOKEN_SHARE}]
    if "cats" in method:       # step 10 twice (a restarted run): the last record counts
        records += [{"kind": "train", "step": s, "loss": 4.0, "token_share": TOKEN_SHARE, "cats": {"scales": sc}}
                    for s, sc in ((10, [9.0, 9.0, 9.0]), (10, [1.0, 1.0, 1.0]), (20, [0.5, 0.5, 2.0 * seed]))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if seed in LOW[method]:
        (run_dir / "results.json").write_text(json.dumps(_results(LOW[method][seed], HIGH[method][seed])))
    if seed in CURVATURE.get(method, {}):
        fr, es = CURVATURE[method][seed]
        tasks = {"fr-en": fr, "de-en": fr, "es-en": es}
        curvature = {"tag": "step00000700", "iterations": 20, "batches": 2, "batch_sentences": 16, "seed": 0,
                     "low_resource": ["es-en"], "tasks": {t: {"top_eigenvalue": v, "hessian_trace": 10 * v,
                                                              "dev_loss": 3.0} for t, v in tasks.items()}}
        (run_dir / "curvature.json").write_text(json.dumps(curvature))


@pytest.fixture
def synthetic_study(tmp_path, base):
    spec_path, out = _spec(tmp_path, base), tmp_path / "study"
    main(["emit", str(spec_path), "--out", str(out)])
    for job in plan_jobs(load_study(spec_path), spec_path, out):
        _write_run(job.run_dir, job.method, job.seed)
    return out


def _row(text: str, method: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {method} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_numbers(synthetic_study):
    out = synthetic_study
    main(["report", str(out), "--no-curvature"])
    text = (out / "report.md").read_text()
    assert f"by `python -m cats_ds.tools.study report {out} --no-curvature`" in text
    assert "- d_tiny_t300_tuned_cats_s2: started, no results.json" in text
    assert "Runs: 7 of 8 finished." in text
    assert "tiny (d_model 32, layers 1+1, heads 2, ffn 64): 12,345 parameters" in text
    assert "| method | seeds | fr-en | de-en | es-en (low) | BLEU high | BLEU low |" in text
    # T1: low 2, 3 -> 2.50 ± 0.71 (sample std); fr-en = high - 1: 11, 12 -> 11.50
    assert _row(text, "T1") == ["T1", "2", "11.50", "13.50", "2.50", "12.50 ± 0.71", "2.50 ± 0.71",
                                "125.00 ± 7.07", "25.00 ± 7.07", "60%", "-1.00 ± 0.00", "-1.00 ± 0.00"]
    # T5 has the lower mean low-resource dev loss of the baselines (3.65 < 3.75)
    assert _row(text, "T5 (best T baseline)")[-2:] == ["(reference)", "(reference)"]
    # cats - T5 by seed: low +1.0, +0.5 -> +0.75 ± 0.35; high -1, +1 -> +0.00 ± 1.41
    assert _row(text, "cats")[5:] == ["13.50 ± 2.12", "4.25 ± 0.35", "135.00 ± 21.21", "42.50 ± 3.54", "60%",
                                      "+0.75 ± 0.35", "+0.00 ± 1.41"]
    # one seed finished: no spread; the tuned row comes last and says so
    assert _row(text, "tuned_cats (tuned)") == ["tuned_cats (tuned)", "1", "12.00", "14.00", "2.50", "13.00",
                                                "2.50", "130.00", "25.00", "60%", "-0.50", "+0.00"]
    assert text.index("| cats |") < text.index("| tuned_cats (tuned) |")
    assert "- Best temperature baseline: T5 (mean low-resource dev loss T1 3.750, T5 3.650; chosen on the dev " \
           "sets)." in text
    assert ("- cats low-resource BLEU delta vs best temperature baseline (T5): +0.75 ± 0.35 over 2 seed(s): "
            "larger than the seed spread") in text
    assert "high-resource: +0.00 ± 1.41: within seed spread." in text
    assert "- tuned_cats (tuned) low-resource BLEU delta vs best temperature baseline (T5): -0.50 over 1 seed(s): " \
           "one seed: no spread to compare with" in text
    assert not re.search(r"\b(wins?|better|outperforms?|significant improvement)\b", text.lower())


def _report_from(out: Path, heading: str) -> str:
    """report.md of the study in ``out`` from ``heading`` on."""
    write_report(out, "test")
    text = (out / "report.md").read_text()
    return text[text.index(heading):]


def test_report_dev_loss_table(synthetic_study):
    text = _report_from(synthetic_study, "### Dev loss")
    assert ("| method | seeds | dev loss low | dev loss high | Δ dev loss low vs best T | Δ dev loss high vs best T "
            "| low share of the update |" in text)
    # dev loss low = 4 - BLEU low / 10: T5 3.7, 3.6; high = 4 - BLEU high / 10: 2.7, 2.6
    # no scales: the low-resource token share, 10%
    assert _row(text, "T5 (best T baseline)") == ["T5 (best T baseline)", "2", "3.650 ± 0.071", "2.650 ± 0.071",
                                                  "(reference)", "(reference)", "10.0 ± 0.0%"]
    # T1 - T5 by seed: low 3.8 - 3.7, 3.7 - 3.6; high 2.8 - 2.7, 2.7 - 2.6
    assert _row(text, "T1")[1:6] == ["2", "3.750 ± 0.071", "2.750 ± 0.071", "+0.100 ± 0.000", "+0.100 ± 0.000"]
    # cats - T5 by seed: low -0.1, -0.05
    assert _row(text, "cats")[2:5:2] == ["3.575 ± 0.035", "-0.075 ± 0.035"]
    # cats's low share at steps 5, 10, 20: 0.1, 0.1 (scales 1; the step-10 record written last), then
    # 0.1 x 2 seed / (0.45 x 0.5 x 2 + 0.1 x 2 seed): 0.2 / 0.65 at seed 1, 0.4 / 0.85 at seed 2
    # means over the steps 16.92% and 22.35%: 19.64 ± 3.84 over the seeds
    assert _row(text, "cats")[-1] == "19.6 ± 3.8%"
    assert _row(text, "tuned_cats (tuned)")[1:5] == ["1", "3.750", "2.700", "+0.050"]


def test_the_default_is_chosen_on_dev_losses(synthetic_study):
    # cats - T5 by seed: dev loss low -0.1, -0.05 (a gain beyond the spread), high +0.1, -0.1 (within it);
    # T1 is a baseline and tuned_cats is tuned: neither is a candidate
    text = _report_from(synthetic_study, "### The default chosen on the dev sets")
    assert "by Δ low-resource dev loss against T5: cats (-0.075 ± 0.035).\n" in text
    assert ("- Chosen on dev (of the CATS variants): cats; it lowers the low-resource dev loss against T5 beyond the "
            "seed spread.") in text


@pytest.mark.parametrize("low_losses, verdict", [
    ({1: 3.8, 2: 3.65}, "no CATS variant helps: even this one raises the low-resource dev loss against T5 beyond the "
                        "seed spread"),
    ({1: 3.8, 2: 3.5}, "no CATS variant helps: this one's low-resource dev loss is within the seed spread of T5's")],
    ids=["worse", "within"])
def test_the_rule_names_the_least_costly_method_when_none_helps(synthetic_study, low_losses, verdict):
    # T5's low-resource dev loss is 3.7, 3.6: cats - T5 is +0.1, +0.05 (a loss beyond the spread), or
    # +0.1, -0.1 (within it)
    for seed, loss in low_losses.items():
        _rewrite_results(synthetic_study / f"d_tiny_t300_cats_s{seed}", dev={"dev_loss_low": loss})
    text = _report_from(synthetic_study, "### The default chosen on the dev sets")
    assert f"- Chosen on dev (of the CATS variants): cats; {verdict}." in text


def test_a_surgery_method_is_listed_but_not_chosen(synthetic_study):
    # the same dev losses as a run of PCGrad: admissible, but the default is a CATS variant
    for seed in (1, 2):
        config_path = synthetic_study / f"d_tiny_t300_cats_s{seed}" / "config.yaml"
        config = yaml.safe_load(config_path.read_text())
        config_path.write_text(yaml.safe_dump({**config, "cats": {"enabled": True, "method": "pcgrad"}}))
    text = _report_from(synthetic_study, "### The default chosen on the dev sets")
    assert "by Δ low-resource dev loss against T5: cats (-0.075 ± 0.035).\n" in text
    assert "- Chosen on dev (of the CATS variants): none.\n" in text


def test_no_default_when_the_high_resource_dev_loss_pays(synthetic_study):
    # cats's high-resource dev loss 4.0 against T5's 2.7, 2.6 (the low-resource one keeps its gain)
    for seed in (1, 2):
        run_dir = synthetic_study / f"d_tiny_t300_cats_s{seed}"
        low_loss = json.loads((run_dir / "results.json").read_text())["dev"]["dev_loss_low"]
        _rewrite_results(run_dir, dev={"task_dev_loss": [4.0, 4.0, low_loss]})
    text = _report_from(synthetic_study, "### The default chosen on the dev sets")
    assert "against T5: none.\n" in text
    assert "- Excluded (the high-resource dev loss rises beyond its seed spread): cats (high +1.350 ± 0.071)." in text
    assert "- Chosen on dev (of the CATS variants): none.\n" in text


def test_a_method_with_one_seed_is_not_counted_yet(synthetic_study):
    (synthetic_study / "d_tiny_t300_cats_s2" / "results.json").unlink()
    text = _report_from(synthetic_study, "### The default chosen on the dev sets")
    assert "- Not counted yet (fewer than 2 seeds paired with T5): cats." in text
    assert "- Chosen on dev (of the CATS variants) so far: none." in text


def test_report_correlates_curvature_with_generalization(synthetic_study):
    text = _report_from(synthetic_study, "### Curvature against generalization")
    # runs with curvature: T5 s1, s2 and cats s1, s2; low-resource (es-en) eigenvalues 1, 2, 1, 3, dev loss low
    # 3.7, 3.6, 3.6, 3.55, BLEU low 3, 4, 4, 4.5: ranks (ties averaged) give rho -3.75 / 4.5 and +3.75 / 4.5
    assert "Spearman ρ over the 4 runs with both" in text
    assert "- top Hessian eigenvalue: ρ -0.83 with low-resource dev loss, +0.83 with low-resource test BLEU." in text
    assert "- Hessian trace (Hutchinson): ρ -0.83 with low-resource dev loss" in text


def test_report_curvature_and_plots(synthetic_study):
    out = synthetic_study
    write_report(out, "test")
    text = (out / "report.md").read_text()
    text = text[text.index("### Curvature"):]
    # mean over seeds: T5 fr-en (10 + 20) / 2, es-en (1 + 2) / 2; high mean = mean of fr-en and de-en
    assert "| method | seeds | fr-en | de-en | es-en (low) | mean high | mean low |" in text
    assert _row(text, "T5")[:7] == ["T5", "2", "15", "15", "1.5", "15", "1.5"]
    assert _row(text, "cats")[:7] == ["cats", "2", "5", "5", "2", "5", "2"]
    assert _row(text, "T1")[:3] == ["T1", "0", "—"]
    trace = text[text.index("### Curvature: Hessian trace"):]
    assert _row(trace, "T5")[:7] == ["T5", "2", "150", "150", "15", "150", "15"]
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["d_tiny_t300_bleu.png", "d_tiny_t300_curvature.png", "d_tiny_t300_scales.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (out / "plots").glob("*.png"))
    assert "![d_tiny_t300_scales](plots/d_tiny_t300_scales.png)" in text


def test_scales_are_averaged_over_seeds_at_common_steps(synthetic_study, monkeypatch):
    drawn = {}
    monkeypatch.setattr(study, "_save", lambda fig, path: drawn.setdefault(path.name, fig) and path)
    spec, jobs = study.load_study_dir(synthetic_study)
    group = study.groups_of([study.load_run(j) for j in jobs])[0]
    assert group.scales("cats")[0] == {10: [1.0, 1.0, 1.0], 20: [0.5, 0.5, 2.0]}
    assert len(group.scales("tuned_cats")) == 1               # seed 2 has not finished: left out
    study.plot_scales(synthetic_study / "s.png", group, ["cats", "tuned_cats"])
    lines = drawn["s.png"].axes[0].get_lines()
    assert list(lines[2].get_ydata()) == [1.0, 3.0]          # es-en at step 20: (2.0 + 4.0) / 2


def _rewrite_results(run_dir: Path, **changes) -> None:
    """results.json of a synthetic run with some keys changed (dev losses and test entries merged in)."""
    results = json.loads((run_dir / "results.json").read_text())
    for key, value in changes.items():
        results[key] = {**results[key], **value} if isinstance(value, dict) else value
    (run_dir / "results.json").write_text(json.dumps(results))


def test_best_baseline_is_chosen_on_dev_loss_not_test_bleu(synthetic_study):
    for seed in (1, 2):      # T1 keeps the lower test BLEU but gets the lower dev loss
        _rewrite_results(synthetic_study / f"d_tiny_t300_T1_s{seed}", dev={"dev_loss_low": 1.0})
    text = _report_from(synthetic_study, "### Test BLEU")
    assert _row(text, "T1 (best T baseline)")[-2:] == ["(reference)", "(reference)"]
    assert "- Best temperature baseline: T1 (mean low-resource dev loss T1 1.000, T5 3.650;" in text


def test_temperature_tradeoff(synthetic_study):
    text = _report_from(synthetic_study, "### Temperature trade-off")
    # T5 - T1 by seed: low (3 - 2, 4 - 3) = +1, +1; T1 - T5 high (12 - 13, 13 - 14) = -1, -1; es-en 60% distinct
    assert _row(text, "T5") == ["T5", "2", "+1.00 ± 0.00", "-1.00 ± 0.00", "60%"]
    assert "beyond the spread: T5; costs the high-resource mean beyond the spread: no baseline;" in text
    assert "every baseline run has at least 90% distinct outputs in every direction: no." in text
    assert "- Trade-off shown: no." in text
    distinct = {d: {"bleu": b, "chrf": 0.0, "distinct": 0.95, "sentences": 200}
                for d, b in (("fr-en", 10.0), ("de-en", 11.0), ("es-en", 3.0))}
    for seed, high in ((1, 11.0), (2, 11.5)):      # T5 now costs the high-resource mean: +1.0, +1.5
        _rewrite_results(synthetic_study / f"d_tiny_t300_T5_s{seed}", bleu_high=high, test=distinct)
    for seed in (1, 2):
        _rewrite_results(synthetic_study / f"d_tiny_t300_T1_s{seed}", test=distinct)
    text = _report_from(synthetic_study, "### Temperature trade-off")
    assert _row(text, "T5")[3:] == ["+1.25 ± 0.35", "95%"]
    assert "- Trade-off shown: yes." in text


def test_no_finished_baseline_gives_no_deltas(synthetic_study):
    for run_dir in synthetic_study.glob("d_tiny_t300_T*_s*"):
        (run_dir / "results.json").unlink()
    write_report(synthetic_study, "test")
    text = (synthetic_study / "report.md").read_text()
    assert _row(text, "cats")[-2:] == ["no baseline finished", "no baseline finished"]
    assert "No temperature baseline has finished in this group" in text


def test_report_before_anything_finished(tmp_path, base):
    out = tmp_path / "study"
    main(["emit", str(_spec(tmp_path, base)), "--out", str(out)])
    main(["report", str(out)])          # nothing finished: no curvature to measure
    text = (out / "report.md").read_text()
    assert "Runs: 0 of 8 finished." in text and "- d_tiny_t300_T1_s1: not started" in text
    assert "No finished run in this group yet." in text and "parameters (estimated: no run started)" in text


# ----------------------------------------------------------------------------------------------
# one real mini study


@pytest.mark.slow
def test_mini_study_trains_measures_curvature_and_reports(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    base = write_config(tmp_path / "base.yaml", corpus, tmp_path / "unused", tmp_path / "cache",
                        train={"max_steps": 3, "export": False, "ds_config": "ds_configs/zero1.json", "threads": 1},
                        eval={"test_sentences": 4, "dev_sentences": 8})
    spec_path = _spec(tmp_path, base, methods={k: METHODS[k] for k in ("T1", "cats")}, baselines=["T1"], tuned=[],
                      seeds=[1], data={}, processes=1, parallel=2,
                      curvature={"iterations": 2, "batches": 1, "batch_sentences": 4})
    out = tmp_path / "study"
    report = run_study(spec_path, out, "mini")
    assert sorted(p.parent.name for p in out.glob("*/curvature.json")) == ["tiny_t300_T1_s1", "tiny_t300_cats_s1"]
    text = report.read_text()
    assert "Runs: 2 of 2 finished." in text and "| cats | 1 |" in text
    assert {p.name for p in (out / "plots").glob("*.png")} == {"tiny_t300_bleu.png", "tiny_t300_curvature.png",
                                                              "tiny_t300_scales.png"}


COMMITTED_STUDIES = sorted(path.parent for path in (REPO / "docs" / "results").rglob("study.json"))


@pytest.mark.slow
@pytest.mark.parametrize("committed", COMMITTED_STUDIES, ids=lambda path: str(path.relative_to(REPO)))
def test_committed_reports_regenerate_from_their_saved_runs(committed, tmp_path):
    """A committed report is what ``study report`` writes from the committed runs, line for line but
    for when and by which command it was written."""
    expected = _without_run_status((committed / "report.md").read_text().splitlines())
    out = tmp_path / committed.name
    shutil.copytree(committed, out, ignore=shutil.ignore_patterns("report.md", "plots"))
    regenerated = _without_run_status(write_report(out, "test").read_text().splitlines())
    assert expected[2].startswith("Written ") and regenerated[2].startswith("Written ")
    assert regenerated[:2] + regenerated[3:] == expected[:2] + expected[3:]


@pytest.mark.parametrize("committed", COMMITTED_STUDIES, ids=lambda path: str(path.relative_to(REPO)))
def test_committed_runs_are_what_their_spec_trains_today(committed):
    """Every finished committed run's saved config is what its study's spec and the shipped base
    config resolve to now, key by key (run_dir aside; cats.variant aside, a name for keys compared
    one by one; the CATS keys of a run without CATS aside): a change of a shipped default must not
    silently change what a committed study's command reproduces."""
    named = REPO / json.loads((committed / "study.json").read_text())["spec"]
    spec_path = named if named.exists() else committed / "study.yaml"     # a spec no longer shipped
    for job in plan_jobs(load_study(spec_path), spec_path, committed):
        if not (job.run_dir / "results.json").exists():
            continue
        today = dataclasses.asdict(load_config(Path(job.config), job.overrides))
        saved = yaml.safe_load((job.run_dir / "config.yaml").read_text())
        if not saved["cats"]["enabled"] and not today["cats"]["enabled"]:
            del saved["cats"]                 # a baseline without CATS: its CATS keys are never read
        changed = {f"{section}.{key}": (value, today[section][key])
                   for section, values in saved.items() if isinstance(values, dict) and section in today
                   for key, value in values.items()
                   if key in today[section] and key not in ("run_dir", "variant") and today[section][key] != value}
        assert not changed, f"{job.name}: saved -> today {changed}"


def _without_run_status(lines: list[str]) -> list[str]:
    """The report with each unfinished run named but its status ("started, no results.json" or
    "not started") left out: unfinished runs keep their directories out of the repository, so a
    run that had started reads as not started when regenerated from a clone."""
    return [re.sub(r"^(- \S+): (started, no results\.json|not started)$", r"\1", line) for line in lines]


def test_the_committed_studies_are_found():
    assert {"study_related_x2en_cpu", "study_related_x2en_cpu_1700"} <= {path.name for path in COMMITTED_STUDIES}
