"""The translation model: cats-ds's own M2M100 built from a size preset, or a pretrained checkpoint.

Without ``model.pretrained`` the model is a transformers M2M100 encoder-decoder built from a
preset, never downloaded. M2M100 is pre-LN (a layer norm before each sublayer, one after each
stack), which trains stably at the high learning rates small CPU runs need. The target language
is a tag token at the start of the source (see cats_ds.data.tokenizer), so one model serves
many-to-one, one-to-many and many-to-many without forced BOS tokens. A pretrained checkpoint
brings its own architecture and its family's layout (cats_ds/pretrained.py, cats_ds/families).
"""

from __future__ import annotations

import logging

from dataclasses import dataclass, field

import torch
from transformers import M2M100Config, M2M100ForConditionalGeneration

from cats_ds import pretrained

log = logging.getLogger(__name__)

# name -> (d_model, encoder layers, decoder layers, heads, ffn dim)
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (32, 1, 1, 2, 64),              # tests: seconds on CPU
    "cpu": (192, 2, 2, 4, 768),             # the CPU default: learns to use the source in ~20 min on 2 cores
    "cpu-small": (256, 3, 3, 4, 1024),
    "base": (512, 6, 6, 8, 2048),           # transformer-base
    "big": (1024, 6, 6, 16, 4096),          # transformer-big
    "deep": (512, 18, 18, 8, 2048),         # overparameterized in depth
    "wide": (2048, 6, 6, 16, 8192),         # overparameterized in width
    "1b": (1536, 16, 16, 24, 6144),         # about 1.2B with a 64k vocabulary
    "xl": (2048, 24, 24, 32, 8192),         # about 3.0B with a 64k vocabulary
    "6b": (4096, 12, 12, 32, 16384),        # about 5.9B with a 64k vocabulary
}


# set together with model.pretrained these are an error: the checkpoint's config.json decides them
ARCHITECTURE_KEYS = ("preset", "d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim",
                     "dropout", "attention_dropout")


@dataclass
class ModelConfig:
    """A model preset plus optional per-field overrides (0 or -1 keeps the preset's value), or a
    pretrained checkpoint (cats_ds/pretrained.py, cats_ds/families)."""

    # a hub id (facebook/nllb-200-distilled-600M) or a local directory (a cats-ds export too) to
    # fine-tune; "": build the preset below from scratch
    pretrained: str = ""
    revision: str = ""                      # a hub id's revision (branch, tag or commit); "": main
    # corpus language -> the pretrained model's code (fr: fra_Latn); the family's built-in map otherwise
    languages: dict[str, str] = field(default_factory=dict)
    source_prefix: str = ""                 # text before every source ({src}, {tgt}: language names), e.g. for mT5
    preset: str = "cpu"                     # size preset: tiny, cpu, base, big, ... (python -m cats_ds.tools.sizes)
    d_model: int = 0                        # hidden size; 0 or -1: the preset's
    encoder_layers: int = 0                 # 0 or -1: the preset's
    decoder_layers: int = 0                 # 0 or -1: the preset's
    attention_heads: int = 0                # must divide d_model; 0 or -1: the preset's
    ffn_dim: int = 0                        # feed-forward size; 0 or -1: the preset's
    dropout: float = 0.1                    # dropout probability
    attention_dropout: float = 0.0          # dropout probability on attention weights
    activation_checkpointing: bool = False  # recompute each layer's activations in backward: memory for time

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"model.preset: unknown {self.preset!r}; known: {', '.join(PRESETS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        d_model, heads = self.dimensions()[0], self.dimensions()[3]
        if d_model % heads:
            raise ValueError(f"model.d_model ({d_model}) must be divisible by model.attention_heads ({heads})")

    def dimensions(self) -> tuple[int, int, int, int, int]:
        """(d_model, encoder layers, decoder layers, heads, ffn dim) after overrides."""
        preset = PRESETS[self.preset]
        given = (self.d_model, self.encoder_layers, self.decoder_layers, self.attention_heads, self.ffn_dim)
        return tuple(g if g > 0 else p for g, p in zip(given, preset))  # type: ignore[return-value]


def build_hf_config(config: ModelConfig, vocab_size: int, max_positions: int,
                    pad_id: int, bos_id: int, eos_id: int) -> M2M100Config:
    d_model, enc_layers, dec_layers, heads, ffn = config.dimensions()
    return M2M100Config(
        vocab_size=vocab_size, d_model=d_model,
        encoder_layers=enc_layers, decoder_layers=dec_layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        dropout=config.dropout, attention_dropout=config.attention_dropout, activation_dropout=0.0,
        encoder_layerdrop=0.0, decoder_layerdrop=0.0,
        max_position_embeddings=max_positions, scale_embedding=True,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, decoder_start_token_id=eos_id,
        tie_word_embeddings=True,  # one embedding matrix for encoder, decoder and output
    )


def build_model(hf_config: M2M100Config, seed: int,
                activation_checkpointing: bool = False) -> M2M100ForConditionalGeneration:
    """Initializes the model deterministically from the seed (identical on every rank).

    DeepSpeed's own activation_checkpointing section only applies to models that call
    deepspeed.checkpointing themselves; transformers models checkpoint through this switch.
    """
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(hf_config)
    if activation_checkpointing:
        model.activation_checkpointing_enable()
    return model


def load_pretrained_config(config: ModelConfig, max_len: int, max_len_auto: bool = False):
    """model.pretrained's transformers config, or None without one; refuses a data.max_len longer
    than the checkpoint's positions, unless it is data.max_len_auto's cap (fit_max_len lowers it)."""
    if not config.pretrained:
        return None
    hf_config = pretrained.load_config(config.pretrained, config.revision)
    longest = longest_sentence(hf_config)
    if longest is not None and max_len > longest and not max_len_auto:
        raise ValueError(f"data.max_len={max_len}: {config.pretrained} has {hf_config.max_position_embeddings} "
                         f"positions; set data.max_len <= {longest}, or data.max_len_auto: true")
    return hf_config


# model types whose sinusoidal positions are recomputed for any length (transformers'
# M2M100SinusoidalPositionalEmbedding): NLLB-200, M2M100 and cats-ds's own models
EXTENDING_POSITIONS = frozenset({"m2m_100"})


def longest_sentence(hf_config) -> int | None:
    """The most tokens a sentence may have in the checkpoint's learned or fixed positions (two for
    the language tag and eos); None where any length fits: relative positions (T5) or sinusoidal
    ones computed on demand (EXTENDING_POSITIONS)."""
    positions = getattr(hf_config, "max_position_embeddings", None)
    if positions is None or hf_config.model_type in EXTENDING_POSITIONS:
        return None
    return positions - 2


def fit_max_len(max_len: int, hf_config) -> int:
    """data.max_len_auto's cap, lowered to what the checkpoint's positions hold."""
    longest = longest_sentence(hf_config)
    if longest is None or max_len <= longest:
        return max_len
    log.info("data.max_len_auto: the cap data.max_len=%d is lowered to %d, the checkpoint's %d positions",
             max_len, longest, hf_config.max_position_embeddings)
    return longest


def load_pretrained_tokenizer(config: ModelConfig, hf_config):
    """model.pretrained's tokenizer in its family, with model.languages and model.source_prefix."""
    return pretrained.load_tokenizer(config.pretrained, hf_config, config.revision, config.languages,
                                     config.source_prefix)


def make_model(config: ModelConfig, pretrained_config, tokenizer, max_len: int, seed: int,
               ds_config: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The run's model: model.pretrained's weights (``pretrained_config`` its config; partitioned
    from the start under ZeRO-3), else a preset built from the seed."""
    if pretrained_config is not None:
        model = pretrained.load_model(config.pretrained, pretrained_config, config.revision, ds_config, dtype)
        if config.activation_checkpointing:
            model.gradient_checkpointing_enable()
        return model
    hf_config = build_hf_config(config, tokenizer.vocab_size, max_len + 2, tokenizer.pad_id, tokenizer.bos_id,
                                tokenizer.eos_id)
    return build_model(hf_config, seed, config.activation_checkpointing)


def pretrained_dimensions(hf_config) -> ModelConfig:
    """A pretrained config's (d_model, layers, heads, ffn) as a ModelConfig's overrides, for the
    size and FLOP formulas (cats_ds/tools/sizes.py): BART-like configs (NLLB, M2M100, mBART,
    Marian) and T5-like ones (mT5)."""
    if hasattr(hf_config, "encoder_ffn_dim"):
        return ModelConfig(d_model=hf_config.d_model, encoder_layers=hf_config.encoder_layers,
                           decoder_layers=hf_config.decoder_layers, attention_heads=hf_config.encoder_attention_heads,
                           ffn_dim=hf_config.encoder_ffn_dim)
    return ModelConfig(d_model=hf_config.d_model, encoder_layers=hf_config.num_layers,
                       decoder_layers=hf_config.num_decoder_layers, attention_heads=hf_config.num_heads,
                       ffn_dim=hf_config.d_ff)


def count_pretrained_parameters(hf_config) -> int:
    """Exact parameter count of a pretrained architecture, built on the meta device (nothing allocated)."""
    from transformers import AutoModelForSeq2SeqLM
    with torch.device("meta"):
        return count_parameters(AutoModelForSeq2SeqLM.from_config(hf_config))


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def estimate_parameters(config: ModelConfig, vocab_size: int) -> int:
    """Parameter count from the dimensions alone, without allocating the model."""
    d, enc, dec, _, ffn = config.dimensions()
    attention = 4 * d * d + 4 * d
    feed_forward = 2 * d * ffn + ffn + d
    encoder_layer = attention + feed_forward + 4 * d
    decoder_layer = 2 * attention + feed_forward + 6 * d
    embeddings = vocab_size * d
    return embeddings + enc * encoder_layer + dec * decoder_layer + 4 * d


def describe(config: ModelConfig, hf_config=None) -> str:
    if config.pretrained:
        return f"pretrained {config.pretrained} ({hf_config.model_type if hf_config else 'not loaded'})"
    d, enc, dec, heads, ffn = config.dimensions()
    return f"M2M100 pre-LN d_model={d} layers={enc}+{dec} heads={heads} ffn={ffn} dropout={config.dropout}"
