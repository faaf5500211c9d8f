"""The results of an evaluated checkpoint: the BLEU/chrF++ summary and the files a run leaves.

    DIR/results.json                 every number, per direction and per group, with the sacreBLEU signatures
    DIR/results.md                   the per-language table, the source-use check and the sacrebleu commands
    DIR/hypotheses/SPLIT.DIRECTION.txt   what was decoded, one sentence a line
    DIR/references/SPLIT.DIRECTION.txt   what it was scored against

Training's final evaluation (cats_ds/train.py) writes them into the run directory, ``cats-ds
evaluate`` (cats_ds/score.py) wherever it is told. With the references beside the hypotheses,
the sacrebleu command in results.md reproduces every BLEU and chrF++ of the table.
"""

from __future__ import annotations

import json
from pathlib import Path

from cats_ds.evaluate import Decoded, group_means, results_table, source_use_check
from cats_ds.metrics import run_file


def bleu_summary(scores: dict, low_directions: set[str]) -> dict:
    """bleu, bleu_low, bleu_high, chrf, chrf_low, chrf_high (where the group exists)."""
    summary = {}
    for key in ("bleu", "chrf"):
        for group, value in group_means(scores, low_directions, key).items():
            summary[key if group == "all" else f"{key}_{group}"] = value
    return summary


def write_results(out_dir: Path, results: dict, decoded: dict[str, Decoded], low_dirs: set[str],
                  split: str = "test") -> str:
    """Writes results.json, results.md, the hypotheses and the references into ``out_dir``;
    ``results[split]`` holds the per-direction scores. Returns the markdown."""
    scores = results[split]
    text = (f"# {_title(results, split)}\n\n{results_table(scores, low_dirs)}\n\n"
            f"{source_use_check(scores, low_dirs)}\n\n{reproduce_section(scores, split)}\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(text)
    for folder in ("hypotheses", "references"):
        (out_dir / folder).mkdir(exist_ok=True)
    for name, sentences in decoded.items():
        run_file(out_dir, f"hypotheses/{split}.{name}.txt").write_text(_lines(sentences.hypotheses))
        run_file(out_dir, f"references/{split}.{name}.txt").write_text(_lines(sentences.references))
    return text


def _title(results: dict, split: str) -> str:
    evaluated = results["checkpoint"]
    if "path" in evaluated:     # an export: no step of its own
        what = f"the export {evaluated['path']}"
    else:
        trained_to = f"; training ran to step {results['step']}" if "step" in results else ""
        what = f"checkpoint {evaluated['tag']} (step {evaluated['step']}{trained_to})"
    return f"Results of {what}" + ("" if split == "test" else f", {split} split")


def reproduce_section(scores: dict, split: str) -> str:
    """The sacreBLEU signatures and, per BLEU tokenizer, the command that recomputes the scores."""
    lines = ["sacreBLEU signatures and the command that reproduces each direction's BLEU and chrF++ "
             "(from the directory of this file; DIRECTION as in the table):", ""]
    by_signatures: dict[tuple[str, str, str], list[str]] = {}
    for name, s in scores.items():
        by_signatures.setdefault((s["bleu_signature"], s["chrf_signature"], s["bleu_tokenize"]), []).append(name)
    for (bleu, chrf, tokenize), names in by_signatures.items():
        lines += [f"- {', '.join(names)}: BLEU `{bleu}`, chrF++ `{chrf}`",
                  f"  `sacrebleu references/{split}.DIRECTION.txt -i hypotheses/{split}.DIRECTION.txt "
                  f"-m bleu chrf --chrf-word-order 2 --tokenize {tokenize} -w 2`"]
    return "\n".join(lines)


def _lines(sentences: list[str]) -> str:
    return "".join(f"{sentence}\n" for sentence in sentences)
