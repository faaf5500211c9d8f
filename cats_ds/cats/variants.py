"""Named CATS variants: each name stands for a set of ``cats:`` keys (docs/cats.md, "Variants").

    python -m cats_ds.train cats.variant=reimpl_softmax cats.lr_alpha=0.05

No official code of the paper exists, so the readings of it are kept side by side and picked by
name: the objectives cats-ds has built, and the two public reimplementations' readings. A
variant fills in only the keys the user left unset (``with_variant``): keys set in the config
file or an override win. ``custom`` (the default) names no variant: the keys as they are.
"""

from __future__ import annotations

import difflib
from typing import Any

CUSTOM = "custom"

# name -> the CATSConfig values it stands for
VARIANTS: dict[str, dict[str, Any]] = {
    "lookahead": {"method": "cats", "objective": "lookahead", "parameterization": "scales", "meta_source": "dev"},
    "weights": {"method": "cats", "objective": "lookahead", "parameterization": "weights", "meta_source": "dev"},
    "weighted_loss": {"method": "cats", "objective": "weighted_loss", "parameterization": "scales",
                      "meta_source": "dev"},
    "robust": {"method": "cats", "objective": "robust", "parameterization": "scales", "meta_source": "dev"},
    "second_order": {"method": "cats", "objective": "second_order", "parameterization": "scales",
                     "meta_source": "dev"},
    # reading (a): weighted held-out loss under a penalty on the weighted mean gradient's squared norm,
    # per-task mean gradients, held-out losses averaged over many dev batches (the "whole dev set",
    # approximated by meta_ema), updates every 100 steps after a late start
    "reimpl_weighted_mean": {"method": "cats", "objective": "weighted_loss", "parameterization": "weights",
                             "meta_source": "dev", "meta_ema": 0.9, "interval": 100, "warmup_steps": 1000},
    # reading (b): softmax weights and a multiplier that never decreases (MGDA-like)
    "reimpl_softmax": {"method": "cats", "objective": "weighted_loss", "parameterization": "softmax",
                       "meta_source": "dev", "monotone_lambda": True, "alpha_min": 0.0},
}


def check_variant(name: Any) -> None:
    """Raises ValueError naming cats.variant, the nearest known name and all of them, unless ``name`` is known."""
    known = [CUSTOM, *VARIANTS]
    if name in known:
        return
    nearest = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {nearest[0]}?)" if nearest else ""
    raise ValueError(f"cats.variant must be one of {', '.join(known)}, got {name!r}{hint}")


def with_variant(below: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """The ``cats:`` section of two layers, the config file (``below``) and the overrides (``above``),
    with cats.variant's keys: they replace the keys of the layers below the one that names the
    variant and yield to the keys set in that layer or above it."""
    section = {**below, **above}
    name = section.get("variant", CUSTOM)
    check_variant(name)
    if "variant" in above:
        return {**below, **VARIANTS.get(name, {}), **above}
    return {**VARIANTS.get(name, {}), **section}
