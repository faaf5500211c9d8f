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

import json
import shutil
from pathlib import Path

import deepspeed

from cats_ds import distributed
from cats_ds.data.corpus import Direction
from cats_ds.families import TranslationTokenizer

DIRECTIONS_FILE = "cats_ds_directions.json"   # the run's trained directions


def export_model(engine, tokenizer: TranslationTokenizer, out_dir: Path, beam: int, max_new_tokens: int,
                 directions: list[Direction]) -> None:
    """Writes ``out_dir`` (see the module docstring); all ranks must call it.

    Under ZeRO-3 the parameters are gathered to every rank first; rank 0 writes.
    ``beam`` and ``max_new_tokens`` become the exported decoding defaults.
    """
    params = list(engine.module.parameters())
    gather = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
        if distributed.rank() == 0:
            save_export(engine.module, tokenizer, out_dir, beam, max_new_tokens, directions)
    distributed.barrier()


def save_export(module, tokenizer: TranslationTokenizer, out_dir: Path, beam: int, max_new_tokens: int,
                directions: list[Direction]) -> None:
    """Writes ``out_dir`` from a whole (not partitioned) model, in this process alone; ``directions``
    are the ones the run trained (DIRECTIONS_FILE, read by cats_ds.translate to warn about others).
    Written into ``out_dir.partial`` and renamed into place when complete: an export cut short
    leaves the previous one (or none), never a directory that fails to load."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)      # left by an export that was cut short
    partial.mkdir(parents=True)
    _write_export(module, tokenizer, partial, beam, max_new_tokens, directions)
    previous = out_dir.with_name(out_dir.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(previous)
    partial.rename(out_dir)
    shutil.rmtree(previous, ignore_errors=True)


def _write_export(module, tokenizer: TranslationTokenizer, out_dir: Path, beam: int, max_new_tokens: int,
                  directions: list[Direction]) -> None:
    config = module.config
    module.generation_config.update(num_beams=beam, do_sample=False, max_new_tokens=max_new_tokens,
                                    decoder_start_token_id=config.decoder_start_token_id,
                                    eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    forced = {lang: tokenizer.forced_bos_id(lang) for lang in sorted({direction.tgt for direction in directions})}
    forced = {lang: token for lang, token in forced.items() if token is not None}
    if len(forced) == 1:
        module.generation_config.forced_bos_token_id = next(iter(forced.values()))
    elif forced:
        module.generation_config.forced_bos_token_ids = forced
    module.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    pairs = sorted([direction.src, direction.tgt] for direction in directions)
    (out_dir / DIRECTIONS_FILE).write_text(json.dumps({"directions": pairs}) + "\n")


def trained_directions(export_dir: Path) -> list[tuple[str, str]] | None:
    """The (source, target) languages an export's run trained, None for an export without the record."""
    path = Path(export_dir) / DIRECTIONS_FILE
    return [tuple(pair) for pair in json.loads(path.read_text())["directions"]] if path.is_file() else None


def decoding_limit(config) -> int:
    """The exported ``max_new_tokens`` for a run config: evaluation's limit is per batch (ratio x
    longest source + 10), the export's is for the longest source the run trained on."""
    return int(config.eval.max_len_ratio * (config.data.max_len + 2)) + 10
