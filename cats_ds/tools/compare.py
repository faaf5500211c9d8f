"""Finished runs side by side: steps, dev loss, BLEU per group and the lowest share of distinct outputs.

    python -m cats_ds.tools.compare RUN_DIR [RUN_DIR ...] [--label NAME ...] [--out TABLE_FILE]

One markdown row per run, from its metrics.jsonl (the steps trained) and results.json (the
evaluated checkpoint's step, dev loss and test scores): the table for "from scratch against
from a base in the same time" and the like. A run without results.json is an error that names
it (train it to the end, or `cats-ds evaluate` it, first).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from cats_ds.metrics import read_metrics

RESULTS, METRICS = "results.json", "metrics.jsonl"


@dataclass(frozen=True)
class RunSummary:
    label: str
    steps_trained: int
    evaluated_step: int
    dev_loss: float
    bleu_high: float
    bleu_low: float
    chrf: float
    lowest_distinct: float
    lowest_distinct_direction: str


def load_results(run_dir: Path) -> dict:
    results_path = run_dir / RESULTS
    if not results_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {RESULTS} (the run has not finished or been evaluated)")
    return json.loads(results_path.read_text(encoding="utf-8"))


def summarize(run_dir: Path, label: str, results: dict) -> RunSummary:
    train_steps = [record["step"] for record in read_metrics(run_dir / METRICS, "train")]
    distinct = {direction: scores["distinct"] for direction, scores in results["test"].items()}
    lowest = min(distinct, key=distinct.get)
    return RunSummary(label, max(train_steps, default=0), results["step"], results["dev"]["dev_loss"],
                      results["bleu_high"], results["bleu_low"], results["chrf"], distinct[lowest], lowest)


def markdown(rows: list[RunSummary]) -> str:
    lines = ["| run | steps trained | evaluated step | dev loss | BLEU high | BLEU low | chrF++ | lowest distinct |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {row.label} | {row.steps_trained:,} | {row.evaluated_step:,} | {row.dev_loss:.3f} | "
              f"{row.bleu_high:.2f} | {row.bleu_low:.2f} | {row.chrf:.2f} | "
              f"{row.lowest_distinct:.0%} ({row.lowest_distinct_direction}) |" for row in rows]
    return "\n".join(lines)


def per_direction(runs: list[tuple[str, dict]]) -> str:
    """BLEU per test direction, one column per run."""
    directions = sorted({direction for _, results in runs for direction in results["test"]})
    lines = ["| direction | " + " | ".join(label for label, _ in runs) + " |",
             "|---|" + "---:|" * len(runs)]
    for direction in directions:
        cells = [f"{results['test'][direction]['bleu']:.2f}" if direction in results["test"] else "-"
                 for _, results in runs]
        lines.append(f"| {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--label", action="append", default=[], help="a name per run, in order (default: the directory's)")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.run_dirs):
        parser.error(f"{len(args.label)} --label for {len(args.run_dirs)} runs: give one per run or none")
    labels = args.label or [run_dir.name for run_dir in args.run_dirs]
    try:
        runs = [(label, load_results(run_dir)) for run_dir, label in zip(args.run_dirs, labels)]
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = [summarize(run_dir, label, results) for run_dir, (label, results) in zip(args.run_dirs, runs)]
    text = markdown(rows) + "\n\nTest BLEU per direction:\n\n" + per_direction(runs) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
