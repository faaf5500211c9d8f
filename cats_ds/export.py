"""Export a trained model that transformers alone loads: model, tokenizer and decoding defaults.

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained("runs/x/export")
    model = AutoModelForSeq2SeqLM.from_pretrained("runs/x/export")
    batch = tokenizer(["<2en>Au commencement, Dieu créa les cieux et la terre."], return_tensors="pt")
    print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))

That is a model cats-ds built (family "cats", cats_ds/families): the directory holds the M2M100
weights and config (``save_pretrained``), ``generation_config.json`` with evaluation's decoding
defaults (greedy or its beam; decoding starts from eos), a transformers fast tokenizer converted
from the run's sentencepiece model (``tokenizer.json``: the same ids as cats-ds's own encoding,
target-language tags ``<2xx>`` as special tokens, eos appended), and the sentencepiece model
itself (``spm.model``, for ``cats_ds.translate``). The target language is chosen by putting its
tag before the source text.

A fine-tuned pretrained model (``model.pretrained``) is exported the same way with its own
tokenizer files, and its generation config says how to force the target language: with one
target language in the run, ``forced_bos_token_id`` is that language's code (NLLB, M2M100,
mBART-50); with several, ``forced_bos_token_ids`` maps each target language to the id to pass
as ``generate(forced_bos_token_id=...)``. README's "Pretrained models" has the snippet per family.
"""

from __future__ import annotations

from pathlib import Path

import deepspeed

from cats_ds import distributed
from cats_ds.families import TranslationTokenizer


def export_model(engine, tokenizer: TranslationTokenizer, out_dir: Path, beam: int, max_new_tokens: int,
                 target_languages: list[str]) -> None:
    """Writes ``out_dir`` (see the module docstring); all ranks must call it.

    Under ZeRO-3 the parameters are gathered to every rank first; rank 0 writes.
    ``beam`` and ``max_new_tokens`` become the exported decoding defaults.
    """
    params = list(engine.module.parameters())
    gather = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
        if distributed.rank() == 0:
            save_export(engine.module, tokenizer, out_dir, beam, max_new_tokens, target_languages)
    distributed.barrier()


def save_export(module, tokenizer: TranslationTokenizer, out_dir: Path, beam: int, max_new_tokens: int,
                target_languages: list[str]) -> None:
    """Writes ``out_dir`` from a whole (not partitioned) model, in this process alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = module.config
    module.generation_config.update(num_beams=beam, do_sample=False, max_new_tokens=max_new_tokens,
                                    decoder_start_token_id=config.decoder_start_token_id,
                                    eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    forced = {lang: tokenizer.forced_bos_id(lang) for lang in sorted(set(target_languages))}
    forced = {lang: token for lang, token in forced.items() if token is not None}
    if len(forced) == 1:
        module.generation_config.forced_bos_token_id = next(iter(forced.values()))
    elif forced:
        module.generation_config.forced_bos_token_ids = forced
    module.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def decoding_limit(config) -> int:
    """The exported ``max_new_tokens`` for a run config: evaluation's limit is per batch (ratio x
    longest source + 10), the export's is for the longest source the run trained on."""
    return int(config.eval.max_len_ratio * (config.data.max_len + 2)) + 10
