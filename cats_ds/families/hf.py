"""What the families over a transformers tokenizer share: code resolution, decoding, saving."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from cats_ds.families import LanguageCodeError


class HFFamily:
    """A transformers tokenizer and the map from corpus languages to the model's codes.

    Subclasses set ``name``, ``title`` and ``builtin_codes`` (corpus language -> code) and lay out
    sources and labels; ``codes`` are the codes the model knows (its vocabulary's)."""

    name = ""
    title = ""
    builtin_codes: Mapping[str, str] = {}

    def __init__(self, tokenizer, vocab_size: int, language_map: Mapping[str, str], source_prefix: str = "") -> None:
        self.hf = tokenizer
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.vocab_size = vocab_size
        self.language_map = dict(language_map)
        self.source_prefix = source_prefix
        self._skipped: set[int] = set()   # ids decode_generated drops: the codes of languages used

    # --- codes

    def codes(self) -> list[str]:
        """Every language code this model knows."""
        raise NotImplementedError

    def code_token(self, code: str) -> str:
        """The vocabulary token of a code (m2m100's ``fr`` is ``__fr__``)."""
        return code

    def code(self, lang: str) -> str:
        """The model's code for a corpus language: model.languages, else a name that is a code
        already, else the built-in map; refused (naming the nearest codes) when the model lacks it
        or its token is the unknown token."""
        known = self.codes()
        code = self.language_map.get(lang) or (lang if lang in known else self.builtin_codes.get(lang, lang))
        if code not in known:
            near = difflib.get_close_matches(code, known, n=5, cutoff=0.3)
            origin = f"model.languages.{lang}={code}" if lang in self.language_map else f"language {lang!r}"
            raise LanguageCodeError(
                f"{origin}: {self.title} has no language code {code!r}; nearest: {', '.join(near) or 'none'}. "
                f"Map it with model.languages.{lang}=CODE")
        token_id = self.hf.convert_tokens_to_ids(self.code_token(code))
        if token_id is None or token_id == self.hf.unk_token_id:
            raise LanguageCodeError(f"language {lang!r}: the code {self.code_token(code)!r} is the unknown token "
                                    f"of this {self.title} tokenizer")
        self._skipped.add(token_id)
        return code

    def code_id(self, lang: str) -> int:
        return self.hf.convert_tokens_to_ids(self.code_token(self.code(lang)))

    # --- the interface

    def forced_bos_id(self, tgt_lang: str) -> int | None:
        return None

    def decode_generated(self, rows: list[list[int]]) -> list[str]:
        """Texts of generate's rows: special tokens and language codes dropped (M2M100's and
        Marian's codes are not special tokens to their tokenizers)."""
        kept = [[token for token in row if token not in self._skipped] for row in rows]
        return [text.strip() for text in self.hf.batch_decode(kept, skip_special_tokens=True)]

    def save_pretrained(self, directory: Path) -> None:
        self.hf.save_pretrained(directory)

    def _prefixed(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[str]:
        """model.source_prefix before each source, {src} and {tgt} replaced by the corpus's language names."""
        prefix = self.source_prefix.format(src=src_lang, tgt=tgt_lang)
        return [prefix + text for text in texts]

    def _ids(self, texts: list[str], target: bool = False) -> list[list[int]]:
        """The tokenizer's own ids with its special tokens (as sources, or as labels: text_target)."""
        encoded = self.hf(text_target=list(texts)) if target else self.hf(list(texts))
        return [list(ids) for ids in encoded["input_ids"]]


class LanguageCodeFamily(HFFamily):
    """NLLB, M2M100 and mBART-50: the tokenizer writes the source code before the source and the
    target code before the labels (its src_lang/tgt_lang); generation forces the target code."""

    def encode_source_batch(self, texts: list[str], src_lang: str, tgt_lang: str) -> list[list[int]]:
        self.hf.src_lang = self.code(src_lang)
        return self._ids(self._prefixed(texts, src_lang, tgt_lang))

    def encode_target_batch(self, texts: list[str], tgt_lang: str) -> list[list[int]]:
        self.hf.tgt_lang = self.code(tgt_lang)
        return self._ids(texts, target=True)

    def forced_bos_id(self, tgt_lang: str) -> int | None:
        return self.code_id(tgt_lang)
