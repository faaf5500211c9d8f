"""Translate stdin to stdout with an exported model: one source sentence per line.

    echo "Au commencement, Dieu créa les cieux et la terre." | python -m cats_ds.translate runs/x/export --tgt en
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import M2M100ForConditionalGeneration

from cats_ds.data.tokenizer import Tokenizer
from cats_ds.evaluate import decode_batch
from cats_ds.export import TOKENIZER_FILE


def translate_lines(model, tokenizer: Tokenizer, lines: list[str], tgt_lang: str, beam: int,
                    batch_size: int = 32) -> list[str]:
    outputs = []
    for start in range(0, len(lines), batch_size):
        outputs.extend(decode_batch(model, tokenizer, lines[start:start + batch_size], tgt_lang, beam, 1.5))
    return outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cats_ds.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a run's export/ directory")
    parser.add_argument("--tgt", required=True, help="target language code, e.g. en")
    parser.add_argument("--beam", type=int, default=4)
    args = parser.parse_args(argv)
    if not (args.model_dir / TOKENIZER_FILE).exists():
        parser.error(f"{args.model_dir / TOKENIZER_FILE} not found: pass a run's export/ directory")
    tokenizer = Tokenizer.load(args.model_dir / TOKENIZER_FILE)
    model = M2M100ForConditionalGeneration.from_pretrained(args.model_dir).eval()
    lines = [line.rstrip("\n") for line in sys.stdin]
    for output in translate_lines(model, tokenizer, lines, args.tgt, args.beam):
        print(output)


if __name__ == "__main__":
    main()
