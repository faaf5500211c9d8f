"""cats_ds.tools.overlap (test pairs a base trained on) and cats_ds.tools.compare (runs side by side)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cats_ds.tools import compare, overlap


def _write(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{src}\t{tgt}\n" for src, tgt in pairs), encoding="utf-8")


def test_overlap_counts_pairs_and_targets_the_base_trained_on(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "base" / "train.fr-en.tsv", [("Bonjour.", "Hello."), ("Merci.", "Thank you!")])
    _write(tmp_path / "base" / "train.de-en.tsv", [("Gut.", "Good.")])
    _write(tmp_path / "corpus" / "test.fr-en.tsv",
           [("Bonjour.", "Hello."),         # the same pair
            ("Merci bien.", "thank you"),   # a base target, other case and punctuation
            ("Oui.", "Yes.")])              # unseen
    _write(tmp_path / "corpus" / "test.pt-en.tsv", [("Bom.", "Good."), ("Sim.", "Yes.")])
    rows = overlap.overlaps(overlap.read_split(tmp_path / "base", "train"),
                            overlap.read_split(tmp_path / "corpus", "test"))
    assert [(row.direction.name, row.test_pairs, row.pairs_in_train, row.targets_in_train) for row in rows] == [
        ("fr-en", 3, 1, 2), ("pt-en", 2, 0, 1)]
    args = ["--train", str(tmp_path / "base"), "--test", str(tmp_path / "corpus")]
    assert overlap.main(args) == 0
    assert overlap.main([*args, "--strict"]) == 1
    assert "4 test pairs or targets are in" in capsys.readouterr().err
    _write(tmp_path / "clean" / "test.fr-en.tsv", [("Oui.", "Yes.")])
    assert overlap.main(["--train", str(tmp_path / "base"), "--test", str(tmp_path / "clean"), "--strict"]) == 0


def _run(run_dir: Path, steps: int, best_step: int, dev_loss: float, bleu: dict[str, float],
         distinct: dict[str, float]) -> Path:
    run_dir.mkdir()
    records = [{"kind": "run", "step": 0}] + [{"kind": "train", "step": step} for step in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    results = {"step": best_step, "dev": {"dev_loss": dev_loss}, "bleu_high": bleu["fr-en"], "bleu_low": bleu["vi-en"],
               "chrf": 20.0, "test": {d: {"bleu": bleu[d], "distinct": distinct[d]} for d in bleu}}
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return run_dir


def test_compare_prints_one_row_per_run_and_bleu_per_direction(tmp_path: Path, capsys) -> None:
    first = _run(tmp_path / "a", 30, 20, 2.5, {"fr-en": 10.0, "vi-en": 4.0}, {"fr-en": 1.0, "vi-en": 0.95})
    second = _run(tmp_path / "b", 25, 25, 3.25, {"fr-en": 3.0, "vi-en": 1.5}, {"fr-en": 0.5, "vi-en": 0.9})
    out = tmp_path / "table.md"
    assert compare.main([str(first), str(second), "--label", "base", "--label", "scratch", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| base | 30 | 20 | 2.500 | 10.00 | 4.00 | 20.00 | 95% (vi-en) |" in printed
    assert "| scratch | 25 | 25 | 3.250 | 3.00 | 1.50 | 20.00 | 50% (fr-en) |" in printed
    assert "| vi-en | 4.00 | 1.50 |" in printed
    assert out.read_text(encoding="utf-8") == printed


def test_compare_names_a_run_without_results_and_refuses_a_wrong_label_count(tmp_path: Path, capsys) -> None:
    (tmp_path / "unfinished").mkdir()
    assert compare.main([str(tmp_path / "unfinished")]) == 2
    assert f"{tmp_path / 'unfinished'}: no results.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main([str(tmp_path / "unfinished"), "--label", "a", "--label", "b"])
    assert "2 --label for 1 runs" in capsys.readouterr().err
