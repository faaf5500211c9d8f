"""Test pairs of one corpus that another corpus trained on: the check before fine-tuning a base.

    python -m cats_ds.tools.overlap --train BASE_DATA_DIR --test CORPUS_DIR [--strict]

A model fine-tuned from a base and scored on CORPUS_DIR's test files is only scored on unseen
sentences if the base never trained on them. Per test direction of CORPUS_DIR this counts the
test pairs that appear in BASE_DATA_DIR's train files as the same (source, target) pair, and the
test targets whose text, reduced to lower-case words, is a training target of any base direction
(the same sentence learnt from another language). Both directories are in the local format
(train.SRC-TGT.tsv, test.SRC-TGT.tsv, ...), a prepared cats-ds data directory included.
--strict exits with 1 when any count is not zero.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from cats_ds.data.bible import english_key   # lower-case words: the same sentence whatever its punctuation
from cats_ds.data.corpus import Bitext, Direction, read_split


@dataclass(frozen=True)
class Overlap:
    direction: Direction
    test_pairs: int
    pairs_in_train: int      # the same (source, target) pair is a base training pair
    targets_in_train: int    # the target sentence is a base training target, from any source language


def overlaps(train: dict[Direction, Bitext], test: dict[Direction, Bitext]) -> list[Overlap]:
    train_pairs = {(src, tgt) for bitext in train.values() for src, tgt in zip(bitext.src, bitext.tgt)}
    train_targets = {english_key(tgt) for bitext in train.values() for tgt in bitext.tgt}
    return [Overlap(direction, len(bitext),
                    sum((src, tgt) in train_pairs for src, tgt in zip(bitext.src, bitext.tgt)),
                    sum(english_key(tgt) in train_targets for tgt in bitext.tgt))
            for direction, bitext in sorted(test.items())]


def markdown(rows: list[Overlap]) -> str:
    lines = ["| test direction | test pairs | pairs in the base's train | targets in the base's train |",
             "|---|---:|---:|---:|"]
    lines += [f"| {row.direction.name} | {row.test_pairs} | {row.pairs_in_train} | {row.targets_in_train} |"
              for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="the base's data directory (its train files)")
    parser.add_argument("--test", type=Path, required=True, help="the fine-tuning corpus (its test files)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any test pair or target is in train")
    args = parser.parse_args(argv)
    rows = overlaps(read_split(args.train, "train"), read_split(args.test, "test"))
    print(markdown(rows))
    seen = sum(row.pairs_in_train + row.targets_in_train for row in rows)
    if seen:
        print(f"{args.test}: {seen} test pairs or targets are in {args.train}'s training data", file=sys.stderr)
    return 1 if seen and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
