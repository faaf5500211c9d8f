"""A trained model without a DeepSpeed engine, from a run directory, one of its checkpoints or an export.

    RUN_DIR                          the checkpoint its results.json names, else ``best``, else ``latest``
    RUN_DIR/checkpoints/stepNNNNNNNN one checkpoint, verified against its manifest first; DeepSpeed's
                                     zero_to_fp32 merges the ZeRO 1, 2 or 3 partitions into one fp32 model
    EXPORT_DIR                       an export (config.json + tokenizer files), loaded with transformers alone

The run's ``config.yaml`` (the run directory's; for an export, the directory above it, as in
RUN_DIR/export) gives the model (its preset, or the pretrained checkpoint it fine-tuned) and the
data, unless another is named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cats_ds import checkpoint, pretrained
from cats_ds.config import RunConfig
from cats_ds.data import pipeline
from cats_ds.families import TranslationTokenizer
from cats_ds.model import (build_hf_config, build_model, load_pretrained_config, load_pretrained_tokenizer)

RUN_CONFIG = "config.yaml"


@dataclass(frozen=True)
class Source:
    """Where a trained model comes from: a step checkpoint or an export, and the run config beside it."""

    run_config: Path
    checkpoint: Path | None = None     # RUN_DIR/checkpoints/TAG
    step: int | None = None            # the checkpoint's, from its manifest
    export: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.run_config.parent

    @property
    def name(self) -> str:
        """The checkpoint's tag, or ``export``."""
        return self.checkpoint.name if self.checkpoint else "export"

    def describe(self) -> dict:
        """What results.json records as the evaluated ``checkpoint``."""
        if self.export:
            return {"tag": "export", "path": str(self.export)}
        return {"tag": self.checkpoint.name, "step": self.step}


def locate(target: Path, run_config: Path | None = None) -> Source:
    """What ``target`` is, with its run config; raises ValueError or FileNotFoundError naming the
    directory and what it lacks."""
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: no such directory (a run directory, a checkpoint or an export)")
    if (target / "config.json").is_file() and any((target / name).is_file() for name in pretrained.TOKENIZER_FILES):
        return Source(_run_config(run_config or target.parent / RUN_CONFIG), export=target)
    if (target / checkpoint.MANIFEST).is_file():
        return _verified(target, run_config or target.parent.parent / RUN_CONFIG)
    if (target / RUN_CONFIG).is_file():
        return _verified(_chosen_checkpoint(target), run_config or target / RUN_CONFIG)
    raise ValueError(f"{target}: neither a run directory ({RUN_CONFIG}), a checkpoint ({checkpoint.MANIFEST}) "
                     f"nor an export (config.json and tokenizer files)")


def _verified(step_checkpoint: Path, run_config: Path) -> Source:
    """Raises ValueError naming the first missing, truncated or altered file of the checkpoint."""
    manifest = checkpoint.verify(step_checkpoint)
    return Source(_run_config(run_config), checkpoint=step_checkpoint, step=int(manifest["step"]))


def _run_config(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run config is not there; name it with --run-config")
    return path


def _chosen_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run's results describe, else the one ``best`` names, else ``latest``."""
    checkpoints, results = run_dir / "checkpoints", run_dir / "results.json"
    candidates = []
    if results.is_file():
        try:
            candidates.append(json.loads(results.read_text())["checkpoint"]["tag"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{results}: no readable checkpoint.tag ({error!r})") from None
    for pointer in (checkpoint.BEST, checkpoint.LATEST):
        if (checkpoints / pointer).is_file():
            candidates.append((checkpoints / pointer).read_text().strip())
    for tag in candidates:
        if (checkpoints / tag).is_dir():
            return checkpoints / tag
    raise FileNotFoundError(f"{checkpoints}: no checkpoint to evaluate (none named by results.json, "
                            f"{checkpoint.BEST} or {checkpoint.LATEST})")


def load_data(config: RunConfig) -> pipeline.PreparedData:
    """The run's prepared data (from the cache), tokenized as it trained: with the pretrained
    checkpoint's tokenizer where it fine-tuned one."""
    pretrained_config = load_pretrained_config(config.model, config.data.max_len)
    tokenizer = pretrained_config and load_pretrained_tokenizer(config.model, pretrained_config)
    return pipeline.prepare(config.data, pretrained=tokenizer)


def export_tokenizer(source: Source, config: RunConfig) -> TranslationTokenizer:
    """An export's own tokenizer files, in their family, with the run's language map."""
    hf_config = pretrained.load_config(str(source.export))
    return pretrained.load_tokenizer(str(source.export), hf_config, languages=config.model.languages,
                                     source_prefix=config.model.source_prefix)


def load_model(source: Source, config: RunConfig, tokenizer: TranslationTokenizer, attention: str | None = None
               ) -> torch.nn.Module:
    """The model in evaluation mode, in fp32 (a checkpoint) or as exported; ``attention`` overrides
    transformers' attention implementation of a checkpoint's model (e.g. ``eager``)."""
    if source.export:
        from transformers import AutoModelForSeq2SeqLM
        return AutoModelForSeq2SeqLM.from_pretrained(source.export).eval()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForSeq2SeqLM
    if config.model.pretrained:   # the pretrained architecture, its weights from the checkpoint below
        hf_config = load_pretrained_config(config.model, config.data.max_len)
    else:
        hf_config = build_hf_config(config.model, tokenizer.vocab_size, config.data.max_len + 2,
                                    tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    if attention:
        hf_config._attn_implementation = attention
    model = AutoModelForSeq2SeqLM.from_config(hf_config) if config.model.pretrained else \
        build_model(hf_config, config.train.seed)
    state = get_fp32_state_dict_from_zero_checkpoint(str(source.checkpoint.parent), tag=source.checkpoint.name)
    model.load_state_dict(state)
    return model.eval()
