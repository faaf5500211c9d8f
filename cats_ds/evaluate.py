"""Evaluation: per-task dev loss, decoding through ``generate``, sacreBLEU BLEU and chrF++ per language.

All ranks take part in every call (under ZeRO-3 the parameters are sharded, so generation
must run on every rank together: ``synced_gpus``); rank r handles sentences r, r+W, ...
and the results are gathered.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from cats_ds import distributed, placement
from cats_ds.data.corpus import Bitext, Direction
from cats_ds.data.tasks import TaskData, collate
from cats_ds.families import TranslationTokenizer
from cats_ds.loss import token_loss

log = logging.getLogger(__name__)

# the metric that picks the best checkpoint -> whether higher is better
METRICS = {"dev_loss": False, "dev_loss_low": False, "bleu": True, "bleu_low": True, "bleu_high": True,
           "chrf": True, "chrf_low": True}


@dataclass
class EvalConfig:
    every_steps: int = 0              # dev evaluation every k steps; 0: only at the end of training
    dev_sentences: int = 500          # per task, for the dev loss
    bleu_during_training: bool = False  # also decode the dev set at each evaluation (slow on CPU)
    test_sentences: int = 200         # per direction decoded for the final BLEU table (0: all)
    beam: int = 1                     # beam width; 1: greedy
    batch_sentences: int = 64         # sentences per decoding and dev-loss batch
    max_len_ratio: float = 1.5        # max new tokens = ratio * source length + 10
    # picks the best checkpoint and stops early: dev_loss, dev_loss_low, bleu, bleu_low, bleu_high, chrf or chrf_low
    best_metric: str = "dev_loss"
    patience: int = 0                 # evaluations without improvement before stopping; 0: never stop early
    # sacreBLEU's tokenizer; auto: chosen by the target language
    bleu_tokenizer: Literal["auto", "13a", "flores200", "char", "intl"] = "auto"
    def __post_init__(self) -> None:
        if self.best_metric not in METRICS:
            raise ValueError(f"eval.best_metric: unknown {self.best_metric!r}; known: {', '.join(METRICS)}")
        for key in ("dev_sentences", "batch_sentences", "beam"):
            if getattr(self, key) < 1:
                raise ValueError(f"eval.{key}: must be >= 1, got {getattr(self, key)}")
        if self.every_steps < 0 or self.test_sentences < 0 or self.patience < 0:
            raise ValueError("eval.every_steps, eval.test_sentences and eval.patience must be >= 0")


@torch.no_grad()
def dev_losses(model, tasks: list[TaskData], config: EvalConfig, pad_id: int, decoder_start_id: int) -> np.ndarray:
    """Mean target-token NLL per task over its first ``dev_sentences`` examples (no smoothing)."""
    rank, world = distributed.rank(), distributed.world_size()
    sums = placement.zeros(2 * len(tasks))
    for n, task in enumerate(tasks):
        count = min(len(task), config.dev_sentences)
        indices = list(range(count))[rank::world]
        # under ZeRO-3 every forward pass gathers the weights from all ranks, so every rank runs
        # as many batches as the rank with the most examples: a rank out of examples runs one of
        # example 0 and discards it (as translate pads)
        batches = math.ceil(math.ceil(count / world) / config.batch_sentences)
        for start in range(0, batches * config.batch_sentences, config.batch_sentences):
            chunk = indices[start:start + config.batch_sentences]
            batch = placement.to_device(collate(task, chunk or [0], pad_id))
            loss = token_loss(model, batch, 0.0, pad_id, decoder_start_id)
            if chunk:
                sums[2 * n] += loss.nll_sum
                sums[2 * n + 1] += loss.tokens
    sums = distributed.all_reduce_sum(sums).cpu()
    return (sums[0::2] / sums[1::2].clamp(min=1)).numpy()


@torch.no_grad()
def translate(module, tokenizer: TranslationTokenizer, sources: list[str], direction: Direction, config: EvalConfig,
              synced: bool, desc: str = "") -> list[str]:
    """Translates ``sources`` along ``direction`` with all ranks together; every rank gets all outputs."""
    rank, world = distributed.rank(), distributed.world_size()
    per_rank = -(-len(sources) // world)
    mine = sources[rank::world]
    # under ZeRO-3 every rank must call generate equally often: pad with a copy of a real sentence
    padded = mine + [sources[0]] * (per_rank - len(mine))
    outputs: list[str] = []
    batches = range(0, len(padded), config.batch_sentences)
    for start in tqdm(batches, desc=desc, disable=rank != 0 or not desc, leave=False):
        outputs.extend(decode_batch(module, tokenizer, padded[start:start + config.batch_sentences], direction.src,
                                    direction.tgt, config.beam, config.max_len_ratio, synced))
    gathered = distributed.all_gather_objects(outputs[:len(mine)])
    return [gathered[i % world][i // world] for i in range(len(sources))]


@torch.no_grad()
def decode_batch(module, tokenizer: TranslationTokenizer, sources: list[str], src_lang: str, tgt_lang: str,
                 beam: int, max_len_ratio: float, synced: bool = False) -> list[str]:
    """One padded batch through ``generate`` (greedy when beam is 1), the target language's code
    forced as the first token where the model family wants it (NLLB, M2M100, mBART-50)."""
    rows = tokenizer.encode_source_batch(sources, src_lang, tgt_lang)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
    batch = placement.to_device({"input_ids": input_ids, "attention_mask": input_ids.ne(tokenizer.pad_id).long()},
                                module.device)
    generated = module.generate(**batch, num_beams=beam, max_new_tokens=int(max_len_ratio * width) + 10,
                                synced_gpus=synced, do_sample=False,
                                forced_bos_token_id=tokenizer.forced_bos_id(tgt_lang))
    return tokenizer.decode_generated(generated.tolist())


def bleu_tokenizer(lang: str, choice: str) -> str:
    """sacreBLEU's tokenizer for a target language: 13a by default, zh for Chinese, mecab for ja/ko if installed."""
    if choice != "auto":
        return choice
    if lang == "zh":
        return "zh"
    if lang in ("ja", "ko"):
        if importlib.util.find_spec("mecab_ko" if lang == "ko" else "MeCab") is not None:
            return f"{lang}-mecab"
        log.warning("sacreBLEU %s-mecab tokenizer not installed; scoring %s with 'char'", lang, lang)
        return "char"
    if lang in ("th", "lo", "my", "km"):
        return "char"
    return "13a"


def score(hypotheses: list[str], references: list[str], tgt_lang: str, tokenizer_choice: str = "auto") -> dict:
    """BLEU, chrF++, the share of distinct outputs and the BLEU of the most frequent output repeated."""
    from sacrebleu.metrics import BLEU, CHRF   # here, so that reading a run config does not load sacreBLEU
    tokenize = bleu_tokenizer(tgt_lang, tokenizer_choice)
    bleu, chrf = BLEU(tokenize=tokenize), CHRF(word_order=2)
    most_common = Counter(hypotheses).most_common(1)[0][0] if hypotheses else ""
    return {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
        "distinct": len(set(hypotheses)) / max(1, len(hypotheses)),
        "constant_bleu": BLEU(tokenize=tokenize).corpus_score([most_common] * len(references), [references]).score,
        "sentences": len(hypotheses),
        # with the references and hypotheses written beside the results, these let the sacrebleu
        # command reproduce every score (cats_ds/results.py writes that command)
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_tokenize": tokenize,
    }


@dataclass
class Decoded:
    """One direction's decoded sentences and the references they were scored against."""

    hypotheses: list[str]
    references: list[str]


def evaluate_bleu(module, tokenizer: TranslationTokenizer, bitexts: dict[Direction, Bitext], config: EvalConfig,
                  synced: bool, limit: int) -> tuple[dict[str, dict], dict[str, Decoded]]:
    """Scores the first ``limit`` sentences (0: all) of every direction; returns per-direction
    scores and what was decoded."""
    scores, decoded = {}, {}
    for direction, bitext in sorted(bitexts.items()):
        count = len(bitext.src) if limit == 0 else min(limit, len(bitext.src))
        outputs = translate(module, tokenizer, bitext.src[:count], direction, config, synced,
                            desc=f"decode {direction.name}")
        scores[direction.name] = score(outputs, bitext.tgt[:count], direction.tgt, config.bleu_tokenizer)
        decoded[direction.name] = Decoded(outputs, bitext.tgt[:count])
    return scores, decoded


def group_means(per_direction: dict[str, dict], low_resource_directions: set[str], key: str) -> dict[str, float]:
    """Means of ``key`` over all, low-resource and high-resource directions."""
    values = {name: s[key] for name, s in per_direction.items()}
    low = [v for n, v in values.items() if n in low_resource_directions]
    high = [v for n, v in values.items() if n not in low_resource_directions]
    means = {"all": float(np.mean(list(values.values())))} if values else {}
    if low:
        means["low"] = float(np.mean(low))
    if high:
        means["high"] = float(np.mean(high))
    return means


def results_table(per_direction: dict[str, dict], low_resource_directions: set[str]) -> str:
    """A Markdown table: one row per direction, then the group means."""
    lines = ["| direction | group | BLEU | chrF++ | distinct outputs | constant-output BLEU |",
             "|---|---|---:|---:|---:|---:|"]
    for name, s in per_direction.items():
        group = "low" if name in low_resource_directions else "high"
        lines.append(f"| {name} | {group} | {s['bleu']:.2f} | {s['chrf']:.2f} | {100 * s['distinct']:.0f}% "
                     f"| {s['constant_bleu']:.2f} |")
    bleu = group_means(per_direction, low_resource_directions, "bleu")
    chrf = group_means(per_direction, low_resource_directions, "chrf")
    for group in ("high", "low", "all"):
        if group in bleu:
            lines.append(f"| mean ({group}) | | {bleu[group]:.2f} | {chrf[group]:.2f} | | |")
    return "\n".join(lines)


def source_use_check(scores: dict, low_dirs: set[str]) -> str:
    """Does the model translate, or emit target-language boilerplate whatever the source?

    Two signs: at least 90% distinct outputs in every direction, and high-resource BLEU above
    the BLEU of the single most frequent output repeated for every sentence.
    """
    distinct = min(s["distinct"] for s in scores.values())
    high = [s for name, s in scores.items() if name not in low_dirs] or list(scores.values())
    bleu = sum(s["bleu"] for s in high) / len(high)
    constant = sum(s["constant_bleu"] for s in high) / len(high)
    verdict = "the outputs depend on the source" if distinct >= 0.9 and bleu > constant else \
        "WARNING: the model barely uses the source"
    return (f"Source use: lowest share of distinct test outputs over directions {100 * distinct:.0f}% (>= 90% "
            f"wanted); high-resource mean BLEU {bleu:.2f} against {constant:.2f} for the most frequent output "
            f"repeated: {verdict}.")
