"""PNG plots of a run's metrics.jsonl: per-task train loss, CATS scales and lambda, the cosine matrix.

    python -m cats_ds.tools.plot runs/default            # writes runs/default/plots/*.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402

from cats_ds.metrics import read_metrics  # noqa: E402


def task_names(metrics_path: Path, width: int) -> list[str]:
    """Task names in sampler order, from the run record the trainer writes first."""
    runs = read_metrics(metrics_path, "run")
    return runs[-1]["tasks"] if runs else [f"task {i}" for i in range(width)]


def plot_run(run_dir: Path) -> list[Path]:
    """Writes every plot the run's metrics allow; returns the files written."""
    train = read_metrics(run_dir / "metrics.jsonl", "train")
    if not train:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no train records to plot")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    steps = np.array([r["step"] for r in train])
    names = task_names(run_dir / "metrics.jsonl", len(train[0]["task_loss"]))
    written = [_lines(out_dir / "task_loss.png", steps, np.array([r["task_loss"] for r in train]), names,
                      "train loss (NLL per target token)")]
    with_cats = [r for r in train if "cats" in r]
    if with_cats:
        cats_steps = np.array([r["step"] for r in with_cats])
        written.append(_lines(out_dir / "scales.png", cats_steps,
                              np.array([r["cats"]["scales"] for r in with_cats]), names, "CATS scale s_n"))
        written.append(_lines(out_dir / "lambda.png", cats_steps,
                              np.array([[r["cats"]["lambda"]] for r in with_cats]), ["lambda"], "CATS lambda"))
        with_cosine = [r for r in with_cats if "cosine" in r["cats"]]
        if with_cosine:
            written.append(_cosine(out_dir / "cosine.png", np.array(with_cosine[-1]["cats"]["cosine"]), names,
                                   with_cosine[-1]["step"]))
    return written


def _lines(path: Path, steps: np.ndarray, values: np.ndarray, names: list[str], ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for column, name in enumerate(names):
        ax.plot(steps, values[:, column], label=name, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cosine(path: Path, cosine: np.ndarray, names: list[str], step: int) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(cosine, vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for (i, j), value in np.ndenumerate(cosine):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(f"cosine between task gradients, step {step}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.tools.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    for path in plot_run(args.run_dir):
        print(path)


if __name__ == "__main__":
    main()
