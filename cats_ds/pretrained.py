"""Pretrained checkpoints (``model.pretrained``): a hub id or a local directory, loaded with
transformers' Auto classes, its own tokenizer wrapped in its model family (cats_ds/families).

    hf_config = load_config(spec)                     refused: no config.json, a decoder-only model
    tokenizer = load_tokenizer(spec, hf_config)       the family, from the tokenizer's class
    model = load_model(spec, hf_config, ds_config)    under ZeRO-3 straight into DeepSpeed's partitions

A directory holding a cats-ds export (``spm.model`` beside ``config.json``) is the family "cats":
cats-ds's own tokenizer, so training continues from an export as from any checkpoint. The hub is
reached only for an id that is not a local directory; where it cannot be reached, the error says
to pass a directory.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from cats_ds.data.tokenizer import MODEL_FILE, Tokenizer
from cats_ds.families import TranslationTokenizer
from cats_ds.families.m2m100 import M2M100
from cats_ds.families.marian import Marian
from cats_ds.families.mbart50 import MBart50
from cats_ds.families.mt5 import MT5
from cats_ds.families.nllb import NLLB

log = logging.getLogger(__name__)

# the tokenizer class a checkpoint names -> its family
FAMILIES = {"NllbTokenizer": NLLB, "NllbTokenizerFast": NLLB, "M2M100Tokenizer": M2M100,
            "MBart50Tokenizer": MBart50, "MBart50TokenizerFast": MBart50, "MarianTokenizer": Marian,
            "T5Tokenizer": MT5, "T5TokenizerFast": MT5}
# one of these is in every tokenizer directory of the families above (and in a cats-ds export)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model", "source.spm",
                   "vocab.json", MODEL_FILE)
SUPPORTED = "NLLB-200, M2M100, mBART-50, Marian (OPUS-MT), mT5, or a cats-ds export"


class PretrainedError(ValueError):
    """A model.pretrained that cannot be used, with the reason in the user's terms."""


def load_config(spec: str, revision: str = ""):
    """The checkpoint's transformers config; refuses what cannot translate."""
    from transformers import AutoConfig
    config = _from_pretrained(AutoConfig, spec, revision, "config.json")
    if not getattr(config, "is_encoder_decoder", False):
        raise PretrainedError(f"model.pretrained={spec}: a decoder-only model (model_type {config.model_type}); "
                              f"translation needs an encoder-decoder: {SUPPORTED}")
    return config


def load_tokenizer(spec: str, hf_config, revision: str = "", languages: dict[str, str] | None = None,
                   source_prefix: str = "") -> TranslationTokenizer:
    """The checkpoint's own tokenizer in its family (cats_ds/families), with the language map."""
    local = Path(spec)
    if local.is_dir() and (local / MODEL_FILE).is_file():
        return Tokenizer.load(local / MODEL_FILE)     # a cats-ds export: the family "cats"
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        # transformers would build an empty tokenizer of the config's tokenizer_class
        raise PretrainedError(f"model.pretrained={spec}: the directory has no usable tokenizer files "
                              f"(none of {', '.join(TOKENIZER_FILES)})")
    from transformers import AutoTokenizer
    tokenizer = _from_pretrained(AutoTokenizer, spec, revision, "tokenizer files")
    family = FAMILIES.get(type(tokenizer).__name__)
    if family is None:
        raise PretrainedError(f"model.pretrained={spec}: its tokenizer is a {type(tokenizer).__name__}, of no "
                              f"family cats-ds knows how to lay out for translation ({SUPPORTED})")
    return family(tokenizer, hf_config.vocab_size, languages or {}, source_prefix)


def load_model(spec: str, hf_config, revision: str, ds_config: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The pretrained weights in ``dtype``; under ZeRO-3 (``ds_config``'s stage) loaded straight into
    DeepSpeed's partitioned parameters (transformers' DeepSpeed integration, deepspeed.zero.Init),
    so no rank ever holds the whole model."""
    from transformers import AutoModelForSeq2SeqLM
    with zero3_init(ds_config):
        return _from_pretrained(AutoModelForSeq2SeqLM, spec, revision, "weights", config=hf_config, dtype=dtype)


@contextlib.contextmanager
def zero3_init(ds_config: dict):
    """While open, transformers builds models partitioned by ZeRO-3 when ds_config's stage is 3
    (HfDeepSpeedConfig: transformers reads it through a weak reference, so it is held here)."""
    if ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    held = HfDeepSpeedConfig(ds_config)
    try:
        yield
    finally:
        del held


def _from_pretrained(auto_class, spec: str, revision: str, what: str, **kwargs):
    """``auto_class.from_pretrained`` with errors that name model.pretrained: a directory that
    lacks ``what``, or a hub id where the hub is unreachable."""
    local = Path(spec).expanduser()
    if local.is_dir():
        try:
            return auto_class.from_pretrained(str(local), **kwargs)
        except (OSError, ValueError) as error:
            raise PretrainedError(f"model.pretrained={spec}: the directory has no usable {what} ({_first_line(error)})"
                                  ) from None
    if spec.startswith((".", "/", "~")) or local.exists():
        raise PretrainedError(f"model.pretrained={spec}: no such directory")
    try:
        return auto_class.from_pretrained(spec, revision=revision or None, **kwargs)
    except OSError as error:
        raise PretrainedError(
            f"model.pretrained={spec}: not a local directory, and the Hugging Face hub could not give its {what} "
            f"({_first_line(error)}). Where the hub is unreachable, download the model where it is reachable "
            f"(huggingface-cli download {spec}) and pass that directory") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
