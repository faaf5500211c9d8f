"""Model families: how a pretrained checkpoint's tokenizer lays out a translation pair.

Every family answers the same small interface (``TranslationTokenizer``), which is all the data
pipeline, the loss, evaluation and export see:

    encode_source_batch(texts, src_lang, tgt_lang)   source token ids
    encode_target_batch(texts, tgt_lang)             label ids (the decoder input is the labels
                                                     shifted right behind the model config's
                                                     decoder_start_token_id)
    forced_bos_id(tgt_lang)                          the first generated token, or None
    decode_generated(rows)                           text of ``generate``'s output rows
    save_pretrained(directory)                       the tokenizer files of an export

One file per family, each as transformers' own tokenizer lays it out:

    family    checkpoints                 source                        labels            forced at generation
    cats      cats-ds's own models/exports <2tgt> pieces </s>           pieces </s>       nothing
    nllb      NLLB-200                    src_code pieces </s>          tgt_code pieces </s>  tgt_code
    m2m100    M2M100 418M / 1.2B          __src__ pieces </s>           __tgt__ pieces </s>   __tgt__
    mbart50   mBART-50 many-to-many       src_XX pieces </s>            tgt_XX pieces </s>    tgt_XX
    marian    OPUS-MT                     >>tgt<< pieces </s> (multi-   pieces </s>       nothing
                                          target models only)
    mt5       mT5 / MADLAD                model.source_prefix + text </s> pieces </s>     nothing

Corpus languages are names like ``fr``; each family maps them to its codes with a built-in map
(``fr`` -> ``fra_Latn`` for NLLB), ``model.languages`` overriding it, and a name that already is
one of the model's codes (a corpus file ``train.fra_Latn-eng_Latn.tsv``) used as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class TranslationTokenizer(Protocol):
    pad_id: int
    eos_id: int
    vocab_size: int

    def encode_source_batch(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[list[int]]: ...

    def encode_target_batch(self, texts: list[str], tgt_lang: str) -> list[list[int]]: ...

    def forced_bos_id(self, tgt_lang: str) -> int | None: ...

    def decode_generated(self, rows: list[list[int]]) -> list[str]: ...

    def save_pretrained(self, directory: Path) -> None: ...


class LanguageCodeError(ValueError):
    """A corpus language the model has no code for."""
