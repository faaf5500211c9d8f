"""The results of an evaluated checkpoint: the BLEU/chrF++ summary and the files a run leaves.

    RUN_DIR/results.json        every number, per direction and per group
    RUN_DIR/results.md          the per-language table and the source-use check
    RUN_DIR/hypotheses/test.DIRECTION.txt

Training's final evaluation (cats_ds/train.py) writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from cats_ds.evaluate import group_means, results_table, source_use_check
from cats_ds.metrics import run_file


def bleu_summary(scores: dict, low_directions: set[str]) -> dict:
    """bleu, bleu_low, bleu_high, chrf, chrf_low, chrf_high (where the group exists)."""
    summary = {}
    for key in ("bleu", "chrf"):
        for group, value in group_means(scores, low_directions, key).items():
            summary[key if group == "all" else f"{key}_{group}"] = value
    return summary


def write_results(run_dir: Path, results: dict, hypotheses: dict, low_dirs: set[str]) -> str:
    """Writes results.json, results.md and the hypotheses into ``run_dir``; returns the markdown."""
    table = results_table(results["test"], low_dirs)
    evaluated = results["checkpoint"]
    title = (f"Results of checkpoint {evaluated['tag']} (step {evaluated['step']}; "
             f"training ran to step {results['step']})")
    text = f"# {title}\n\n{table}\n\n{source_use_check(results['test'], low_dirs)}\n"
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.md").write_text(text)
    (run_dir / "hypotheses").mkdir(exist_ok=True)
    for name, lines in hypotheses.items():
        run_file(run_dir, f"hypotheses/test.{name}.txt").write_text("\n".join(lines) + "\n")
    return text
