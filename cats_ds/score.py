"""Score a run, a checkpoint or an export: decode a split and write the per-language BLEU/chrF++ table.

    cats-ds evaluate RUN_DIR|CHECKPOINT_DIR|EXPORT_DIR [--split test|valid] [--beam K] [--sentences N] [--out DIR]

The model comes from cats_ds.trained (a run directory: the checkpoint its results name, else
``best``, else ``latest``); the data from the run's config.yaml through the same preparation
as training (a cache hit when the run's cache is still there). The table, results.json,
hypotheses and references are those of training's final evaluation (cats_ds/results.py),
written by default to RUN_DIR/evaluations/TAG.SPLIT.beamK/. One process: run it directly,
not under the deepspeed launcher.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from cats_ds import distributed, placement, trained
from cats_ds.config import load_config
from cats_ds.evaluate import evaluate_bleu
from cats_ds.results import bleu_summary, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cats-ds evaluate", description=__doc__.split("\n\n")[0],
                                     epilog="Runs in one process (not under the deepspeed launcher).")
    parser.add_argument("target", type=Path, help="a run directory, one of its checkpoints, or an export")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--beam", type=int, help="beam size (default: the run's eval.beam; 1 is greedy)")
    parser.add_argument("--sentences", type=int,
                        help="sentences decoded per direction (default: the run's eval.test_sentences; 0: all)")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN_DIR/evaluations/TAG.SPLIT.beamK)")
    parser.add_argument("--run-config", type=Path,
                        help="the run's config.yaml, where it is not beside the target (an export copied elsewhere)")
    args = parser.parse_args(argv)
    if args.beam is not None and args.beam < 1:
        parser.error(f"--beam: must be >= 1, got {args.beam}")
    if args.sentences is not None and args.sentences < 0:
        parser.error(f"--sentences: must be >= 0, got {args.sentences}")
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        parser.error("runs in one process; start it without the deepspeed launcher")
    try:
        args.source = trained.locate(args.target, args.run_config)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout, force=True)
    distributed.init()   # a world of one: evaluation's gathers run on it
    try:
        return evaluate(args)
    finally:
        distributed.shutdown()


def evaluate(args: argparse.Namespace) -> dict:
    """Decodes and scores the split; prints the table and writes the results files."""
    source: trained.Source = args.source
    config = load_config(source.run_config)
    data = trained.load_data(config)
    tokenizer = trained.export_tokenizer(source, config) if source.export else data.tokenizer
    model = trained.load_model(source, config, tokenizer).to(placement.device())
    eval_config = dataclasses.replace(config.eval, beam=args.beam or config.eval.beam)
    limit = config.eval.test_sentences if args.sentences is None else args.sentences
    bitexts = data.test if args.split == "test" else data.valid_text
    scores, decoded = evaluate_bleu(model, tokenizer, bitexts, eval_config, synced=False, limit=limit)
    low_dirs = data.low_resource_directions
    results = {"checkpoint": source.describe(), "split": args.split, "beam": eval_config.beam, args.split: scores,
               **bleu_summary(scores, low_dirs), "low_resource_directions": sorted(low_dirs)}
    out = args.out or source.run_dir / "evaluations" / f"{source.name}.{args.split}.beam{eval_config.beam}"
    print("\n" + write_results(out, results, decoded, low_dirs, args.split), flush=True)
    print(f"written to {out}")
    return results


if __name__ == "__main__":
    main()
