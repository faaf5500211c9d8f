"""Export a trained model that transformers alone loads: model, tokenizer and decoding defaults.

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained("runs/x/export")
    model = AutoModelForSeq2SeqLM.from_pretrained("runs/x/export")
    batch = tokenizer(["<2en>Au commencement, Dieu créa les cieux et la terre."], return_tensors="pt")
    print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))

The directory holds the M2M100 weights and config (``save_pretrained``), ``generation_config.json``
with evaluation's decoding defaults (greedy or its beam; decoding starts from eos), a
transformers fast tokenizer converted from the run's sentencepiece model (``tokenizer.json``:
the same ids as cats-ds's own encoding, target-language tags ``<2xx>`` as special tokens, eos
appended), and the sentencepiece model itself (``spm.model``, for ``cats_ds.translate``). The
target language is chosen by putting its tag before the source text.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import deepspeed
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as FastTokenizer
from transformers import PreTrainedTokenizerFast

from cats_ds import distributed
from cats_ds.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, lang_tag

TOKENIZER_FILE = "spm.model"


def export_model(engine, tokenizer_path: Path, out_dir: Path, beam: int, max_new_tokens: int) -> None:
    """Writes ``out_dir`` (see the module docstring); all ranks must call it.

    Under ZeRO-3 the parameters are gathered to every rank first; rank 0 writes.
    ``beam`` and ``max_new_tokens`` become the exported decoding defaults.
    """
    params = list(engine.module.parameters())
    gather = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
        if distributed.rank() == 0:
            save_export(engine.module, tokenizer_path, out_dir, beam, max_new_tokens)
    distributed.barrier()


def save_export(module, tokenizer_path: Path, out_dir: Path, beam: int, max_new_tokens: int) -> None:
    """Writes ``out_dir`` from a whole (not partitioned) model, in this process alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    module.generation_config.update(num_beams=beam, do_sample=False, max_new_tokens=max_new_tokens,
                                    decoder_start_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                                    bos_token_id=BOS_ID)
    module.save_pretrained(out_dir)
    shutil.copyfile(tokenizer_path, out_dir / TOKENIZER_FILE)
    transformers_tokenizer(tokenizer_path).save_pretrained(out_dir)


def transformers_tokenizer(spm_path: Path) -> PreTrainedTokenizerFast:
    """The run's sentencepiece unigram model as a transformers fast tokenizer with the same ids.

    sentencepiece's own normalization (its precompiled NFKC map, stripped and collapsed spaces),
    a "▁" before the text, unigram with byte fallback, eos appended; the language tags are
    special tokens, so ``<2en>`` before a sentence encodes as cats-ds encodes a source
    (tests/test_export.py checks the ids on real text).
    """
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(spm_path).read_bytes())
    fast = FastTokenizer(models.Unigram([(piece.piece, piece.score) for piece in proto.pieces], UNK_ID,
                                        byte_fallback=True))
    fast.normalizer = normalizers.Sequence([normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
                                            normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    fast.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    fast.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    languages = Tokenizer.load(spm_path).languages
    return PreTrainedTokenizerFast(tokenizer_object=fast, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=[lang_tag(lang) for lang in languages])


def decoding_limit(config) -> int:
    """The exported ``max_new_tokens`` for a run config: evaluation's limit is per batch (ratio x
    longest source + 10), the export's is for the longest source the run trained on."""
    return int(config.eval.max_len_ratio * (config.data.max_len + 2)) + 10
