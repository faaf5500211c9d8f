"""mT5 / MADLAD (google/mt5-*): no language codes; the task, if any, is a text prefix before the
source (model.source_prefix)."""

from __future__ import annotations

from cats_ds.families.hf import HFFamily


class MT5(HFFamily):
    name, title = "mt5", "mT5"

    def codes(self) -> list[str]:
        return []

    def code(self, lang: str) -> str:
        return lang   # a language needs no code: nothing to refuse

    def encode_source_batch(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[list[int]]:
        return self._ids(self._prefixed(texts, src_lang, tgt_lang))

    def encode_target_batch(self, texts: list[str], tgt_lang: str) -> list[list[int]]:
        return self._ids(texts, target=True)
