"""A tiny synthetic parallel corpus in the local format, for trainer tests.

Three source languages are word-substitution ciphers of a small English vocabulary, so a
tiny model can learn them in seconds; es is the low-resource one.
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the light god earth water said unto made day night heaven sea king people land house "
         "son man woman city went came saw great good bread fire stone river tree mountain").split()
SIZES = {"fr": 300, "de": 300, "es": 50}
HELD_OUT = 20  # valid and test sentences per direction


def _cipher(word: str, lang: str) -> str:
    return {"fr": word[::-1] + "e", "de": word.upper()[:1] + word[1:] + "en", "es": "el" + word[::-1]}[lang]


def write_corpus(root: Path, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for lang, size in SIZES.items():
        pairs = []
        for _ in range(size + 2 * HELD_OUT):
            english = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
            pairs.append((" ".join(_cipher(w, lang) for w in english), " ".join(english)))
        splits = {"valid": pairs[:HELD_OUT], "test": pairs[HELD_OUT:2 * HELD_OUT], "train": pairs[2 * HELD_OUT:]}
        for split, rows in splits.items():
            (root / f"{split}.{lang}-en.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    return root


def write_config(path: Path, corpus: Path, run_dir: Path, cache: Path, **sections) -> Path:
    """A run config for the tiny preset on the fixture corpus; ``sections`` add or replace keys."""
    import yaml
    config = {
        "data": {"source": "local", "local_dir": str(corpus), "vocab_size": 400, "max_len": 24,
                 "low_resource": ["es-en"], "cache_dir": str(cache)},
        "model": {"preset": "tiny", "dropout": 0.1},
        "sampling": {"temperature": 2.0, "tokens_per_step": 600, "max_tokens_per_micro": 150},
        "optim": {"lr": 5e-3, "warmup_steps": 5},
        "train": {"run_dir": str(run_dir), "ds_config": "ds_configs/zero2.json", "max_steps": 20,
                  "log_every": 1, "save_every": 0},
        "eval": {"test_sentences": 10, "dev_sentences": 20, "batch_sentences": 10},
        "cats": {"enabled": True, "meta_tokens_per_task": 60, "interval": 2},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path
