"""M2M100 (facebook/m2m100_418M, _1.2B): ISO 639-1 codes written as the tokens __fr__."""

from __future__ import annotations

from cats_ds.families.hf import LanguageCodeFamily


class M2M100(LanguageCodeFamily):
    name, title = "m2m100", "M2M100"

    def codes(self) -> list[str]:
        return list(self.hf.lang_code_to_token)   # the codes its tokenizer was made with

    def code_token(self, code: str) -> str:
        return self.hf.get_lang_token(code)
