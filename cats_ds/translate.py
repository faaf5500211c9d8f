"""Translate stdin to stdout with an exported model: one source sentence per line.

    echo "Au commencement, Dieu créa les cieux et la terre." | python -m cats_ds.translate runs/x/export --tgt en
        [--src fr] [--beam 1] [--batch-size 64] [--device auto]

Any export: a model cats-ds built, or a fine-tuned pretrained one (its family's layout,
cats_ds/families; NLLB, M2M100 and mBART-50 need --src, the source language, and force the
target language's code first). Language names are the corpus's (``fr``), mapped to the model's
codes by the family's built-in map or ``--language fr=fra_Latn``. Decoding defaults are
evaluation's (cats_ds.evaluate.EvalConfig: greedy, 64 sentences a batch), so a sentence
translates here as it did in the run's results table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

# stdout holds the translations only: DeepSpeed's logger (bound to the stdout of its import)
# announces the accelerator it picked there; imported here first, it is bound to stderr
with contextlib.redirect_stdout(sys.stderr):
    import deepspeed  # noqa: F401,E402

from cats_ds import placement, pretrained  # noqa: E402
from cats_ds.evaluate import EvalConfig, decode_batch  # noqa: E402
from cats_ds.export import trained_directions  # noqa: E402
from cats_ds.families import LanguageCodeError, TranslationTokenizer  # noqa: E402


def translate_lines(model, tokenizer: TranslationTokenizer, lines: list[str], src_lang: str, tgt_lang: str,
                    config: EvalConfig) -> list[str]:
    outputs = []
    for start in range(0, len(lines), config.batch_sentences):
        outputs.extend(decode_batch(model, tokenizer, lines[start:start + config.batch_sentences], src_lang,
                                    tgt_lang, config.beam, config.max_len_ratio))
    return outputs


def warn_untrained(model_dir: Path, src: str, tgt: str) -> None:
    """One line on stderr when the export's run never trained this target (or, given --src, this
    direction): the output is then whatever the model does with a tag it never learnt."""
    trained = trained_directions(model_dir)
    if trained is None:
        return
    if tgt not in {target for _, target in trained} or (src and (src, tgt) not in trained):
        names = ", ".join(f"{source}-{target}" for source, target in trained)
        print(f"warning: {model_dir} was trained on {names}, not on {src or 'any source'} into {tgt}: "
              "expect poor output", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    defaults = EvalConfig()
    parser = argparse.ArgumentParser(prog="python -m cats_ds.translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path, help="a run's export/ directory")
    parser.add_argument("--tgt", required=True, help="target language, e.g. en")
    parser.add_argument("--src", default="", help="source language, e.g. fr (needed by NLLB, M2M100, mBART-50)")
    parser.add_argument("--language", action="append", default=[], metavar="NAME=CODE",
                        help="a language's code in the model, e.g. fr=fra_Latn (repeatable)")
    parser.add_argument("--beam", type=int, default=defaults.beam, help="beam size (1: greedy, as in evaluation)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_sentences, help="sentences per batch")
    parser.add_argument("--device", type=placement.device_option, default="auto",
                        help="auto (cuda where available, else cpu), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    try:
        config = EvalConfig(beam=args.beam, batch_sentences=args.batch_size)
    except ValueError as error:
        parser.error(str(error).replace("eval.beam", "--beam").replace("eval.batch_sentences", "--batch-size"))
    languages = dict(item.split("=", 1) for item in args.language if "=" in item)
    try:
        hf_config = pretrained.load_config(str(args.model_dir))
        tokenizer = pretrained.load_tokenizer(str(args.model_dir), hf_config, languages=languages)
        from transformers import AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir).to(args.device).eval()
        warn_untrained(args.model_dir, args.src, args.tgt)
        lines = [line.rstrip("\n") for line in sys.stdin]
        for output in translate_lines(model, tokenizer, lines, args.src, args.tgt, config):
            print(output)
    except (pretrained.PretrainedError, LanguageCodeError, KeyError) as error:
        parser.error(str(error).strip("'\""))


if __name__ == "__main__":
    main()
