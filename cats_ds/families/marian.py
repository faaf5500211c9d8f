"""Marian / OPUS-MT (Helsinki-NLP/opus-mt-*): a multi-target model reads the target as a token
``>>fra<<`` before the source text; a single-pair model has no such tokens and takes the text alone."""

from __future__ import annotations

import re

from cats_ds.families.hf import HFFamily
from cats_ds.families.nllb import ISO_TO_FLORES

_TARGET_TAG = re.compile(r"^>>(\S+)<<$")


class Marian(HFFamily):
    name, title = "marian", "Marian (OPUS-MT)"
    # OPUS-MT tags are ISO 639-3 (fra), some ISO 639-1 (fr) or with a script (zho_Hans)
    builtin_codes = {iso: flores.split("_")[0] for iso, flores in ISO_TO_FLORES.items()}

    def codes(self) -> list[str]:
        return sorted(match[1] for token in self.hf.get_vocab() if (match := _TARGET_TAG.match(token)))

    def code_token(self, code: str) -> str:
        return f">>{code}<<"

    def encode_source_batch(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[list[int]]:
        if not self.codes():   # a single-pair model: the text alone
            return self._ids(self._prefixed(texts, src_lang, tgt_lang))
        tag = self.code_token(self.code(tgt_lang))
        return self._ids([f"{tag} {text}" for text in self._prefixed(texts, src_lang, tgt_lang)])

    def encode_target_batch(self, texts: list[str], tgt_lang: str) -> list[list[int]]:
        return self._ids(texts, target=True)
