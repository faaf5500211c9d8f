"""One joint sentencepiece model for all languages, with target-language tags.

Sources are encoded as ``[<2tgt>] + pieces + [eos]`` and targets as
``pieces + [eos]``. The special ids are fixed (bos 0, pad 1, eos 2, unk 3) so
that a transformers M2M100 config can use them unchanged; the language tags
``<2xx>`` follow as user-defined symbols (ids 4, 5, ... in sorted language
order), then the 256 byte-fallback pieces, so no text ever becomes unk.

Training samples sentences per language with temperature (a language's share
of the training sentences is proportional to n_lang ** (1/T)) so that
low-resource languages get pieces of their own. Training is deterministic
from the seed. ``train_or_load`` caches the model: an existing model is
reused only when its sidecar json records the same parameters, languages and
training data; otherwise it raises instead of silently using a wrong model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

logger = logging.getLogger(__name__)

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
MODEL_FILE = "spm.model"   # the sentencepiece model's name in an export
_TAG_PATTERN = re.compile(r"^<2(\S+)>$")
_LANGUAGE_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
_SIDECAR_FORMAT = 1
DEFAULT_THREADS = 2  # sentencepiece threads where the caller gives none: the target machines are small
_VOCABULARY_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


class TokenizerError(ValueError):
    """sentencepiece could not train; ``max_vocab_size`` is set when the vocabulary asked for is too large."""

    def __init__(self, message: str, max_vocab_size: int | None = None) -> None:
        super().__init__(message)
        self.max_vocab_size = max_vocab_size


def lang_tag(lang: str) -> str:
    """The piece that tells the model which language to produce: ``<2fr>``."""
    return f"<2{lang}>"


def sidecar_path(model_path: Path) -> Path:
    """Where the training parameters of ``model_path`` are recorded."""
    return Path(model_path).with_suffix(".json")


class Tokenizer:
    """A loaded joint sentencepiece model plus its language-tag ids."""

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, processor: spm.SentencePieceProcessor, source: str, threads: int = DEFAULT_THREADS) -> None:
        self._sp = processor
        self._source = source
        self.threads = threads   # sentencepiece threads for batch encoding
        self._tag_ids = _read_tag_ids(processor)
        self._skipped_ids = frozenset(self._tag_ids.values()) | {PAD_ID, BOS_ID}
        _check_special_ids(processor, source)

    @classmethod
    def train(
        cls,
        texts_by_lang: Mapping[str, Sequence[str]],
        languages: Sequence[str],
        model_path: Path,
        vocab_size: int = 8000,
        temperature: float = 5.0,
        max_sentences: int = 300_000,
        seed: int = 1,
        model_type: str = "unigram",
        threads: int = DEFAULT_THREADS,
    ) -> Tokenizer:
        """Train on a temperature-weighted sample of ``texts_by_lang``, with ``threads`` threads.

        Writes ``model_path`` and, next to it, the sidecar json that
        :func:`train_or_load` checks before reusing the model.
        """
        record = _training_record(texts_by_lang, languages, vocab_size, temperature,
                                  max_sentences, seed, model_type)
        sorted_languages = record["languages"]
        sentences = sample_training_sentences(texts_by_lang, temperature, max_sentences, seed)
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        _train_sentencepiece(
            sentences, vocab_size,
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=model_type,
            character_coverage=0.9995,
            byte_fallback=True,
            user_defined_symbols=[lang_tag(lang) for lang in sorted_languages],
            bos_id=BOS_ID,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            num_threads=threads,
            minloglevel=2,
        )
        # the sidecar first: a run interrupted in between leaves no model, so the next one retrains
        _write_atomically(sidecar_path(model_path), json.dumps(record, indent=2).encode())
        _write_atomically(Path(model_path), model.getvalue())
        logger.info("trained a %d-piece %s tokenizer on %d sentences -> %s",
                    vocab_size, model_type, len(sentences), model_path)
        return cls.load(model_path, threads)

    @classmethod
    def load(cls, model_path: Path, threads: int = DEFAULT_THREADS) -> Tokenizer:
        """Load a model written by :meth:`train`."""
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"tokenizer model {model_path} does not exist")
        processor = spm.SentencePieceProcessor(model_file=str(model_path))
        return cls(processor, str(model_path), threads)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def languages(self) -> list[str]:
        """Languages that have a tag, sorted."""
        return sorted(self._tag_ids)

    def lang_tag(self, lang: str) -> str:
        self.tag_id(lang)  # same KeyError as tag_id for an unknown language
        return lang_tag(lang)

    def tag_id(self, lang: str) -> int:
        try:
            return self._tag_ids[lang]
        except KeyError:
            raise KeyError(
                f"language {lang!r} has no tag in tokenizer {self._source} "
                f"(it knows {', '.join(self.languages)})") from None

    def encode_source(self, text: str, tgt_lang: str) -> list[int]:
        """``[<2tgt>] + pieces + [eos]``."""
        tag = self.tag_id(tgt_lang)
        return [tag, *self._pieces([text])[0]]

    def encode_target(self, text: str) -> list[int]:
        """``pieces + [eos]``."""
        return self._pieces([text])[0]

    # the model-family interface (cats_ds/families): this is the family "cats"

    def encode_source_batch(self, texts: Sequence[str], src_lang: str, tgt_lang: str) -> list[list[int]]:
        """:meth:`encode_source` for many texts at once (sentencepiece batches them in C++); the
        source language is not marked."""
        tag = self.tag_id(tgt_lang)
        return [[tag, *ids] for ids in self._pieces(texts)]

    def encode_target_batch(self, texts: Sequence[str], tgt_lang: str) -> list[list[int]]:
        """:meth:`encode_target` for many texts at once; the target language is in the source's tag."""
        return self._pieces(texts)

    def forced_bos_id(self, tgt_lang: str) -> None:
        """Nothing is forced: the source's tag names the target language."""
        return None

    def decode_generated(self, rows: Iterable[Sequence[int]]) -> list[str]:
        """Texts of generate's rows, which start with the decoder start token (eos)."""
        return [self.decode(list(row)[1:]) for row in rows]

    def save_pretrained(self, directory: Path) -> None:
        """The sentencepiece model (``spm.model``) and the same tokenizer for transformers alone."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MODEL_FILE).write_bytes(Path(self._source).read_bytes())
        transformers_tokenizer(Path(self._source), self.languages).save_pretrained(directory)

    def _pieces(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, add_eos=True, num_threads=self.threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first eos, without pad, bos and language tags."""
        kept = []
        for token in ids:
            token = int(token)
            if token == EOS_ID:
                break
            if token not in self._skipped_ids:
                kept.append(token)
        return self._sp.decode(kept)

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]


def sample_training_sentences(
    texts_by_lang: Mapping[str, Sequence[str]], temperature: float, max_sentences: int, seed: int
) -> list[str]:
    """Temperature-weighted, seeded sample of sentences, languages in sorted order.

    The sample has min(max_sentences, total) sentences; language l gets a share
    proportional to n_l ** (1/T). A language whose share exceeds its size
    repeats its sentences (whole shuffled passes first), which is what makes
    sentencepiece count its pieces as often as the share says.
    """
    languages = sorted(lang for lang, texts in texts_by_lang.items() if len(texts) > 0)
    sizes = np.array([len(texts_by_lang[lang]) for lang in languages], dtype=np.float64)
    total = min(max_sentences, int(sizes.sum()))
    log_weights = np.log(sizes) / temperature
    shares = np.exp(log_weights - log_weights.max())
    counts = np.floor(shares / shares.sum() * total + 0.5).astype(np.int64)
    sample: list[str] = []
    for index, (lang, count) in enumerate(zip(languages, counts)):
        rng = np.random.default_rng([seed, index])
        texts = texts_by_lang[lang]
        sample.extend(texts[int(i)] for i in _cyclic_permutation(rng, len(texts), int(count)))
    return sample


def _train_sentencepiece(sentences: Sequence[str], vocab_size: int, **options) -> None:
    """SentencePieceTrainer.train, its errors (raw C++ assertions) rephrased as TokenizerError."""
    try:
        spm.SentencePieceTrainer.train(vocab_size=vocab_size, **options)
    except RuntimeError as error:
        too_high = _VOCABULARY_TOO_HIGH.search(str(error))
        if too_high:
            limit = int(too_high[2])
            raise TokenizerError(f"a tokenizer of {vocab_size} pieces was asked for, but the {len(sentences)} "
                                 f"training sentences support at most {limit}", limit) from None
        raise TokenizerError(f"sentencepiece could not train a {vocab_size}-piece tokenizer on "
                             f"{len(sentences)} sentences: {error}") from None


def train_or_load(
    texts_by_lang: Mapping[str, Sequence[str]],
    languages: Sequence[str],
    model_path: Path,
    vocab_size: int = 8000,
    temperature: float = 5.0,
    max_sentences: int = 300_000,
    seed: int = 1,
    model_type: str = "unigram",
    threads: int = DEFAULT_THREADS,
) -> Tokenizer:
    """Load ``model_path`` if it was trained with exactly these settings and data, else train it.

    Raises ValueError when a model exists whose sidecar json records other
    settings, languages or data (delete both files to retrain), and
    FileNotFoundError when the model exists without its sidecar.
    """
    model_path = Path(model_path)
    if model_path.exists():
        _check_cached_record(model_path, _training_record(texts_by_lang, languages, vocab_size, temperature,
                                                          max_sentences, seed, model_type))
        logger.info("reusing tokenizer %s", model_path)
        return Tokenizer.load(model_path, threads)
    return Tokenizer.train(texts_by_lang, languages, model_path, vocab_size=vocab_size,
                           temperature=temperature, max_sentences=max_sentences,
                           seed=seed, model_type=model_type, threads=threads)


def _cyclic_permutation(rng: np.random.Generator, size: int, count: int) -> Iterator[int]:
    """``count`` indices below ``size``: shuffled passes over all of them, repeated as needed."""
    full_passes, remainder = divmod(count, size)
    for _ in range(full_passes):
        yield from rng.permutation(size)
    yield from rng.permutation(size)[:remainder]


def _training_record(texts_by_lang: Mapping[str, Sequence[str]], languages: Sequence[str], vocab_size: int,
                     temperature: float, max_sentences: int, seed: int, model_type: str) -> dict:
    """What a cached model must have been trained with to be reused (validates them too)."""
    sorted_languages = _validate_languages(languages, texts_by_lang)
    _validate_training_params(vocab_size, temperature, max_sentences, seed, model_type)
    return {
        "format": _SIDECAR_FORMAT,
        "languages": sorted_languages,
        "vocab_size": vocab_size,
        "temperature": temperature,
        "max_sentences": max_sentences,
        "seed": seed,
        "model_type": model_type,
        "sentences_per_language": {lang: len(texts_by_lang[lang]) for lang in sorted(texts_by_lang)},
        "data_sha256": _data_digest(texts_by_lang),
    }


def _data_digest(texts_by_lang: Mapping[str, Sequence[str]]) -> str:
    digest = hashlib.sha256()
    for lang in sorted(texts_by_lang):
        digest.update(f"\0lang\0{lang}\0".encode())
        for text in texts_by_lang[lang]:
            digest.update(text.encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _check_cached_record(model_path: Path, wanted: dict) -> None:
    sidecar = sidecar_path(model_path)
    if not sidecar.is_file():
        raise FileNotFoundError(
            f"tokenizer {model_path} exists but its parameter record {sidecar} does not; "
            f"delete {model_path} to retrain")
    try:
        recorded = json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{sidecar}: not valid json ({error})") from error
    differing = sorted(key for key in wanted.keys() | recorded.keys()
                       if recorded.get(key) != wanted.get(key))
    if differing:
        details = "; ".join(f"{key}: cached {_short(recorded.get(key))}, wanted {_short(wanted.get(key))}"
                            for key in differing)
        raise ValueError(
            f"tokenizer {model_path} was trained with other settings ({details}); "
            f"delete {model_path} and {sidecar} to retrain, or point to another model path")


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validate_languages(languages: Sequence[str], texts_by_lang: Mapping[str, Sequence[str]]) -> list[str]:
    if isinstance(languages, str):
        raise ValueError(f"languages must be a sequence of language codes, not the string {languages!r}")
    for lang in languages:
        if not isinstance(lang, str) or not _LANGUAGE_PATTERN.match(lang):
            raise ValueError(f"languages: {lang!r} is not a language code (letters, digits, '_' or '-')")
    duplicates = sorted(lang for lang, count in Counter(languages).items() if count > 1)
    if duplicates:
        raise ValueError(f"languages: {', '.join(duplicates)} listed more than once")
    untagged = sorted(set(texts_by_lang) - set(languages))
    if untagged:
        raise ValueError(f"texts_by_lang has text in {', '.join(untagged)}, which is not in languages")
    if not any(len(texts) for texts in texts_by_lang.values()):
        raise ValueError("texts_by_lang holds no sentences to train the tokenizer on")
    return sorted(languages)


def _validate_training_params(vocab_size: int, temperature: float, max_sentences: int,
                              seed: int, model_type: str) -> None:
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be > 0, got {vocab_size}")
    if max_sentences <= 0:
        raise ValueError(f"max_sentences must be > 0, got {max_sentences}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")


def _read_tag_ids(processor: spm.SentencePieceProcessor) -> dict[str, int]:
    """Language tags are the user-defined pieces right after the four special ids."""
    tag_ids = {}
    for piece_id in range(UNK_ID + 1, processor.get_piece_size()):
        match = _TAG_PATTERN.match(processor.id_to_piece(piece_id))
        if not match:
            break
        tag_ids[match.group(1)] = piece_id
    return tag_ids


def _check_special_ids(processor: spm.SentencePieceProcessor, source: str) -> None:
    found = (processor.bos_id(), processor.pad_id(), processor.eos_id(), processor.unk_id())
    if found != (BOS_ID, PAD_ID, EOS_ID, UNK_ID):
        raise ValueError(f"tokenizer {source}: special ids (bos, pad, eos, unk) are {found}, "
                         f"expected {(BOS_ID, PAD_ID, EOS_ID, UNK_ID)}; it was not trained by cats_ds")


def _write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file so an interrupted run never leaves a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def transformers_tokenizer(spm_path: Path, languages: Sequence[str]):
    """The run's sentencepiece unigram model as a transformers fast tokenizer with the same ids.

    sentencepiece's own normalization (its precompiled NFKC map, stripped and collapsed spaces),
    a "▁" before the text, unigram with byte fallback, eos appended; the language tags are
    special tokens, so ``<2en>`` before a sentence encodes as cats-ds encodes a source
    (tests/test_train.py checks the ids on real text).
    """
    # here, not at the top: reading a tokenizer for data preparation needs no transformers
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as FastTokenizer
    from transformers import PreTrainedTokenizerFast

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
    return PreTrainedTokenizerFast(tokenizer_object=fast, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=[lang_tag(lang) for lang in languages])
