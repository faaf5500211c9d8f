"""mBART-50 (facebook/mbart-large-50-many-to-many-mmt): codes such as fr_XX, hi_IN."""

from __future__ import annotations

from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES

from cats_ds.families.hf import LanguageCodeFamily


class MBart50(LanguageCodeFamily):
    name, title = "mbart50", "mBART-50"
    builtin_codes = {code.split("_")[0]: code for code in FAIRSEQ_LANGUAGE_CODES}   # fr -> fr_XX

    def codes(self) -> list[str]:
        return list(FAIRSEQ_LANGUAGE_CODES)
