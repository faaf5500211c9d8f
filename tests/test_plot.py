"""The plot command turns a run's metrics.jsonl into PNGs."""

from __future__ import annotations

import json

import pytest

from cats_ds.tools.plot import main, plot_run


def _write_metrics(run_dir, with_cats: bool) -> None:
    records = [{"kind": "run", "step": 0, "tasks": ["fr-en", "it-en"]}]
    for step in range(1, 6):
        record = {"kind": "train", "step": step, "loss": 5.0 - step, "task_loss": [5.0 - step, 6.0 - step]}
        if with_cats:
            record["cats"] = {"scales": [1 + 0.1 * step, 1 - 0.1 * step], "lambda": 0.2 * step,
                              "cosine": [[1.0, 0.3], [0.3, 1.0]]} if step % 2 else \
                             {"scales": [1 + 0.1 * step, 1 - 0.1 * step], "lambda": 0.2 * step}
        records.append(record)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_cats_run_gets_all_plots(tmp_path, capsys):
    _write_metrics(tmp_path, with_cats=True)
    main([str(tmp_path)])
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert names == {"task_loss.png", "scales.png", "lambda.png", "cosine.png"}
    assert all((tmp_path / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    assert "scales.png" in capsys.readouterr().out


def test_plain_run_gets_loss_plot_only(tmp_path):
    _write_metrics(tmp_path, with_cats=False)
    assert [p.name for p in plot_run(tmp_path)] == ["task_loss.png"]


def test_empty_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no train records"):
        plot_run(tmp_path)
