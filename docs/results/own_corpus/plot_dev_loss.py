"""The dev loss of the own-corpus runs (docs/own_corpus.md) against the training tokens they had seen.

    python docs/results/own_corpus/plot_dev_loss.py          # writes docs/results/own_corpus/dev_loss.png

Reads each run directory's eval.jsonl (the "eval" records of its metrics.jsonl) and config.yaml
(tokens per step). Plotting against tokens rather than steps puts runs with different batch
sizes on one axis: at equal tokens, the runs with half the tokens per step took twice the updates.
A record of these runs, not part of the package.
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

HERE = Path(__file__).parent

fig, ax = plt.subplots(figsize=(7, 4.2))
for run in sorted(p.parent for p in HERE.glob("*/eval.jsonl")):
    tokens_per_step = yaml.safe_load((run / "config.yaml").read_text())["sampling"]["tokens_per_step"]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    distinct = min(d["distinct"] for d in json.loads((run / "results.json").read_text())["test"].values())
    ax.plot([e["step"] * tokens_per_step / 1e6 for e in evals], [e["dev_loss"] for e in evals], marker=".",
            label=f"{run.name} (lowest distinct {100 * distinct:.0f}%)")
ax.set_xlabel("training tokens seen (millions, source + target)")
ax.set_ylabel("dev loss (mean over the 8 tasks)")
ax.set_title("own-corpus stand-in: 4 x 5,800 + 4 x 600 pairs")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(HERE / "dev_loss.png", dpi=120)
print(HERE / "dev_loss.png")
