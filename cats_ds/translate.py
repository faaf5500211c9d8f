"""Translate stdin to stdout with an exported model: one source sentence per line.

    echo "Au commencement, Dieu créa les cieux et la terre." | python -m cats_ds.translate runs/x/export --tgt en
        [--beam 1] [--batch-size 64] [--device auto]

Decoding defaults are evaluation's (cats_ds.evaluate.EvalConfig: greedy, 64 sentences a batch),
so a sentence translates here as it did in the run's results table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import M2M100ForConditionalGeneration

from cats_ds import placement
from cats_ds.data.tokenizer import Tokenizer
from cats_ds.evaluate import EvalConfig, decode_batch
from cats_ds.export import TOKENIZER_FILE


def translate_lines(model, tokenizer: Tokenizer, lines: list[str], tgt_lang: str, config: EvalConfig) -> list[str]:
    outputs = []
    for start in range(0, len(lines), config.batch_sentences):
        outputs.extend(decode_batch(model, tokenizer, lines[start:start + config.batch_sentences], tgt_lang,
                                    config.beam, config.max_len_ratio))
    return outputs


def main(argv: list[str] | None = None) -> None:
    defaults = EvalConfig()
    parser = argparse.ArgumentParser(prog="python -m cats_ds.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a run's export/ directory")
    parser.add_argument("--tgt", required=True, help="target language code, e.g. en")
    parser.add_argument("--beam", type=int, default=defaults.beam, help="beam size (1: greedy, as in evaluation)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_sentences, help="sentences per batch")
    parser.add_argument("--device", type=placement.device_option, default="auto",
                        help="auto (cuda where available, else cpu), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    if not (args.model_dir / TOKENIZER_FILE).exists():
        parser.error(f"{args.model_dir / TOKENIZER_FILE} not found: pass a run's export/ directory")
    try:
        config = EvalConfig(beam=args.beam, batch_sentences=args.batch_size)
    except ValueError as error:
        parser.error(str(error).replace("eval.beam", "--beam").replace("eval.batch_sentences", "--batch-size"))
    tokenizer = Tokenizer.load(args.model_dir / TOKENIZER_FILE)
    model = M2M100ForConditionalGeneration.from_pretrained(args.model_dir).to(args.device).eval()
    lines = [line.rstrip("\n") for line in sys.stdin]
    for output in translate_lines(model, tokenizer, lines, args.tgt, config):
        print(output)


if __name__ == "__main__":
    main()
