"""From a data config to tokenized per-task train/valid sets and raw test sets, cached on disk.

Every source (the embedded Bible corpus, a local directory, a Hugging Face dataset) is first
written in the one local format (cats_ds.data.corpus); everything after that reads only that
format. The cache key is a hash of the config fields that change the data, so a second run
with the same data settings reuses the corpus, the sentencepiece model and the token arrays;
such a cache hit checks the corpus files by name, size and modification time and never reads
the training text. Every task and split carries the count of pairs read, kept and dropped by
reason (``PreparedData.accounting``, in the cache too), which the trainer records at every start;
a train task that loses more than DROP_WARNING of its pairs to max_len gets a warning then.
With ``data.max_len_auto`` the max_len comes from the training lengths (``_max_len``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from cats_ds.data import bible
from cats_ds.data.corpus import Bitext, Direction, find_directions, read_split, unread_files
from cats_ds.data.tasks import (
    Encoded,
    TaskData,
    build_tasks,
    encode_bitexts,
    group_directions,
    length_limit,
    load_tasks,
    pair_counts,
    save_tasks,
)
from cats_ds.data.tokenizer import DEFAULT_THREADS, Tokenizer, TokenizerError, train_or_load
from cats_ds.families import TranslationTokenizer

log = logging.getLogger(__name__)

AUTO_MAX_LEN_KEEP = 0.98   # data.max_len_auto: every direction keeps at least this share of its train pairs
DROP_WARNING = 0.05        # a train task that loses more than this share to max_len gets a warning


@dataclass
class DataConfig:
    """Where the parallel data comes from and how it becomes tasks and tokens."""

    source: Literal["bible", "local", "hub"] = "bible"  # the embedded Bible, a local directory or HF hub
    preset: str = "bible8-related"               # bible: language set (see cats_ds.data.bible)
    direction: Literal["x2en", "en2x"] = "x2en"  # bible: many-to-one or one-to-many
    low_resource_size: int = 1500                # bible: train pairs kept per low-resource language
    local_dir: str = ""                          # local: a directory in the local format
    hub_dataset: str = ""                        # hub: e.g. Helsinki-NLP/opus-100
    hub_directions: list[str] = field(default_factory=list)  # hub: e.g. [fr-en, de-en]
    low_resource: list[str] = field(default_factory=list)    # tasks reported as low-resource (bible: automatic)
    tasks: Literal["direction", "target", "source"] = "direction"  # one task per direction, target or source
    task_map: dict[str, str] = field(default_factory=dict)   # explicit direction -> task (overrides `tasks`)
    vocab_size: int = 4000                       # sentencepiece vocabulary, shared by all languages
    tokenizer_temperature: float = 5.0           # languages sampled ~ size^(1/T) for the tokenizer's training text
    tokenizer_sentences: int = 100_000          # temperature-sampled sentences the tokenizer is trained on
    max_len: int = 64                            # tokens per side; longer pairs are dropped and counted
    max_len_auto: bool = False                   # max_len from the training lengths (98% of every direction kept); data.max_len the cap
    seed: int = 1                                # seed of the data split and subsampling
    cache_dir: str = ""                          # default $CATS_DS_CACHE or ~/.cache/cats_ds

    def __post_init__(self) -> None:
        if self.source == "local" and not self.local_dir:
            raise ValueError("data.local_dir: required when data.source is 'local'")
        if self.source == "hub" and not (self.hub_dataset and self.hub_directions):
            raise ValueError("data.hub_dataset and data.hub_directions: required when data.source is 'hub'")
        if self.source == "bible" and self.preset not in bible.PRESETS:
            raise ValueError(f"data.preset: unknown {self.preset!r}; known: {', '.join(bible.PRESETS)}")
        if self.tokenizer_sentences < 1000:
            raise ValueError(f"data.tokenizer_sentences: too few ({self.tokenizer_sentences})")
        if self.vocab_size < 100:
            raise ValueError(f"data.vocab_size: too small ({self.vocab_size})")
        if self.max_len < 4:
            raise ValueError(f"data.max_len: too small ({self.max_len})")
        if not self.tokenizer_temperature > 0:
            raise ValueError(f"data.tokenizer_temperature: must be > 0, got {self.tokenizer_temperature}")

    def cache_root(self) -> Path:
        base = self.cache_dir or os.environ.get("CATS_DS_CACHE") or "~/.cache/cats_ds"
        return Path(base).expanduser()

    def key(self) -> str:
        """A short hash of everything that changes the prepared data."""
        fields = asdict(self)
        fields.pop("cache_dir")
        fields.pop("low_resource")
        if self.source == "local":
            fields["local_dir"] = str(Path(self.local_dir).resolve())
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class PreparedData:
    tokenizer: TranslationTokenizer    # the run's own sentencepiece Tokenizer, or a pretrained model's
    task_names: list[str]
    train: list[TaskData]
    valid: list[TaskData]
    valid_text: dict[Direction, Bitext]
    test: dict[Direction, Bitext]
    low_resource: set[str]             # task names reported as low-resource
    low_resource_directions: set[str]  # direction names belonging to those tasks
    corpus_dir: Path
    accounting: dict                   # split -> task -> pairs read, kept, dropped by reason


def prepare(config: DataConfig, threads: int = DEFAULT_THREADS,
            pretrained: TranslationTokenizer | None = None) -> PreparedData:
    """Prepares (or reuses from the cache) everything training and evaluation read; sentencepiece
    runs with ``threads`` threads. A cache hit reads the small valid and test sets and the token
    arrays, never the training text (the cache's fingerprint is the corpus files' metadata).
    ``pretrained``: a pretrained model's tokenizer (cats_ds/families), used instead of training one;
    the cache is then keyed on its files too."""
    root = config.cache_root() / "prepared" / config.key()
    if pretrained is not None:
        root = root.with_name(f"{root.name}-{tokenizer_digest(pretrained)[:12]}")
    corpus_dir = _materialize_corpus(config, root / "corpus")
    _warn_unread(corpus_dir)
    directions = find_directions(corpus_dir, "train")
    valid_text = read_split(corpus_dir, "valid", directions)
    test_text = read_split(corpus_dir, "test", directions)
    task_of = config.task_map or group_directions([d.name for d in directions], config.tasks)
    tokenizer_path = root / "spm.model"
    tokenizer = pretrained or (Tokenizer.load(tokenizer_path, threads) if tokenizer_path.is_file() else None)
    cached = tokenizer and _cached_tasks(root, tokenizer, corpus_dir, config.max_len, task_of)
    if cached:
        train, valid = cached
        if config.max_len_auto:
            log.info("data.max_len_auto: max_len %d tokens (chosen when the cache was built)",
                     train[0].counts["max_len"])
    else:
        train_text = read_split(corpus_dir, "train", directions)
        tokenizer = pretrained or _train_tokenizer(config, train_text, corpus_dir, tokenizer_path, threads)
        encoded = encode_bitexts(train_text, tokenizer)
        max_len = _max_len(config, encoded)
        train = build_tasks(train_text, tokenizer, task_of, max_len, encoded)
        valid = build_tasks(valid_text, tokenizer, task_of, max_len)
        fingerprint = _fingerprint(tokenizer, corpus_dir, config.max_len, task_of)
        for split, tasks in (("train", train), ("valid", valid)):
            save_tasks(tasks, root / f"{split}_tasks.npz", fingerprint)
    names = [t.name for t in train]
    if [t.name for t in valid] != names:
        raise ValueError(f"{corpus_dir}: valid split has tasks {[t.name for t in valid]}, train has {names}")
    _warn_dropped(config, train)
    accounting = {"train": {t.name: t.counts for t in train}, "valid": {t.name: t.counts for t in valid},
                  "test": {task: pair_counts([b for d, b in test_text.items() if task_of[d.name] == task])
                           for task in names}}
    low_tasks = _low_resource_tasks(config, _manifest_low_languages(corpus_dir), task_of)
    low_directions = {direction for direction, task in task_of.items() if task in low_tasks}
    return PreparedData(tokenizer, names, train, valid, valid_text, test_text,
                        low_tasks, low_directions, corpus_dir, accounting)


def _train_tokenizer(config: DataConfig, train_text: dict[Direction, Bitext], corpus_dir: Path,
                     tokenizer_path: Path, threads: int) -> Tokenizer:
    """The run's sentencepiece model (reused when its record matches), errors in the config's terms."""
    languages = sorted({lang for d in train_text for lang in (d.src, d.tgt)})
    try:
        return train_or_load(_texts_by_language(train_text), languages, tokenizer_path,
                             vocab_size=config.vocab_size, temperature=config.tokenizer_temperature,
                             max_sentences=config.tokenizer_sentences, seed=config.seed, threads=threads)
    except TokenizerError as error:
        advice = f"; set data.vocab_size <= {error.max_vocab_size}" if error.max_vocab_size else ""
        raise TokenizerError(f"training the tokenizer on the corpus {corpus_dir} with data.vocab_size="
                             f"{config.vocab_size}: {error}{advice}", error.max_vocab_size) from None


def _materialize_corpus(config: DataConfig, corpus_dir: Path) -> Path:
    if config.source == "local":
        return Path(config.local_dir)
    if config.source == "hub":
        from cats_ds.data.hub import HubSpec, export_hub_corpus   # HF datasets only where the hub is used
        return export_hub_corpus(HubSpec(config.hub_dataset, tuple(config.hub_directions)), corpus_dir)
    return bible.prepare_bible(config.preset, config.direction, corpus_dir, cache_dir=config.cache_root(),
                               low_resource_size=config.low_resource_size, seed=config.seed)


def _max_len(config: DataConfig, encoded: dict[Direction, Encoded]) -> int:
    """data.max_len, or with data.max_len_auto the length that keeps AUTO_MAX_LEN_KEEP of every
    direction's train pairs (rounded up to a multiple of 8), capped at data.max_len."""
    if not config.max_len_auto:
        return config.max_len
    chosen, limits = length_limit(encoded, AUTO_MAX_LEN_KEEP)
    longest = max(limits, key=limits.get)
    if chosen > config.max_len:
        log.warning("data.max_len_auto: max_len %d tokens, capped at data.max_len=%d (keeping %.0f%% of every "
                    "direction's train pairs needs %d)", config.max_len, config.max_len, 100 * AUTO_MAX_LEN_KEEP, chosen)
    else:
        log.info("data.max_len_auto: max_len %d tokens: every direction keeps %.0f%% of its train pairs (the "
                 "longest at that share: %s, %d tokens)", chosen, 100 * AUTO_MAX_LEN_KEEP, longest, limits[longest])
    return min(chosen, config.max_len)


def _warn_unread(corpus_dir: Path) -> None:
    """Every file of the corpus directory is read or reported."""
    unread = unread_files(corpus_dir)
    if unread:
        log.warning("%s: %d files are not read: %s", corpus_dir, len(unread),
                    "; ".join(f"{path.name} ({why})" for path, why in unread))


def _warn_dropped(config: DataConfig, train: list[TaskData]) -> None:
    """A warning for each train task that loses more than DROP_WARNING of its pairs to max_len,
    at every start (from the counts, cached too): a corpus whose sentences are longer than the
    config expects loses much of its data silently otherwise."""
    for task in train:
        counts = task.counts
        share = counts["dropped"]["too_long"] / max(counts["read"], 1)
        if share > DROP_WARNING:
            advice = "raise it" if config.max_len_auto else "raise it, or set data.max_len_auto: true"
            log.warning("task %s: %.0f%% of its train pairs (%d of %d) are longer than max_len=%d tokens "
                        "(data.max_len=%d) and are not trained on; %s", task.name, 100 * share,
                        counts["dropped"]["too_long"], counts["read"], counts["max_len"], config.max_len, advice)


def _texts_by_language(bitexts: dict[Direction, Bitext]) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for direction, bitext in bitexts.items():
        texts.setdefault(direction.src, []).extend(bitext.src)
        texts.setdefault(direction.tgt, []).extend(bitext.tgt)
    return texts


def _cached_tasks(root: Path, tokenizer: TranslationTokenizer, corpus_dir: Path, max_len: int,
                  task_of: dict[str, str]) -> tuple[list[TaskData], list[TaskData]] | None:
    """The cached train and valid tasks when both were built from this tokenizer, these corpus
    files (by name, size and modification time), max_len and task map; else None."""
    paths = [root / "train_tasks.npz", root / "valid_tasks.npz"]
    if not all(path.is_file() for path in paths):
        return None
    fingerprint = _fingerprint(tokenizer, corpus_dir, max_len, task_of)
    try:
        train, valid = (load_tasks(path, fingerprint) for path in paths)
    except ValueError as err:  # built from another tokenizer or corpus: rebuild, say so
        log.warning("rebuilding the token arrays: %s", err)
        return None
    return train, valid


def tokenizer_digest(tokenizer: TranslationTokenizer) -> str:
    """sha256 of the files the tokenizer saves (its model, vocabulary, codes and settings)."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save_pretrained(Path(saved))
        for path in sorted(Path(saved).iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _fingerprint(tokenizer: TranslationTokenizer, corpus_dir: Path, max_len: int, task_of: dict[str, str]) -> str:
    """What the token arrays depend on: the tokenizer, the corpus files, max_len and the task map."""
    digest = hashlib.sha256(tokenizer_digest(tokenizer).encode())
    for path in sorted(corpus_dir.glob("*")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps([max_len, sorted(task_of.items())]).encode())
    return digest.hexdigest()[:16]


def planned_tasks(config: DataConfig) -> tuple[dict[str, str], set[str]] | None:
    """The direction -> task map and the low-resource tasks, known before any data is prepared:
    from the Bible preset, the hub directions, or the file names (and manifest) of the local
    directory; None when the local directory does not exist (prepare() says so)."""
    if config.source == "bible":
        preset = bible.PRESETS[config.preset]
        directions = [f"{lang}-en" if config.direction == "x2en" else f"en-{lang}" for lang in preset.languages]
        low_languages = set(preset.low)
    elif config.source == "hub":
        directions, low_languages = list(config.hub_directions), set()
    elif Path(config.local_dir).is_dir():
        directions = [d.name for d in find_directions(Path(config.local_dir), "train")]
        low_languages = _manifest_low_languages(Path(config.local_dir))
    else:
        return None
    task_of = group_directions(directions, config.task_map or config.tasks)
    return task_of, _low_resource_tasks(config, low_languages, task_of)


def _manifest_low_languages(corpus_dir: Path) -> set[str]:
    """The low-resource languages the corpus's manifest names (the Bible corpus writes them)."""
    manifest = corpus_dir / "manifest.json"
    return set(json.loads(manifest.read_text()).get("low_resource", [])) if manifest.exists() else set()


def _low_resource_tasks(config: DataConfig, low_languages: set[str], task_of: dict[str, str]) -> set[str]:
    """Task names to report as low-resource: from the config, else those of ``low_languages``."""
    if config.low_resource:
        unknown = set(config.low_resource) - set(task_of.values())
        if unknown:
            raise ValueError(f"data.low_resource: unknown task(s) {sorted(unknown)}; tasks: {sorted(set(task_of.values()))}")
        return set(config.low_resource)
    return {task for direction, task in task_of.items() if low_languages & set(direction.split("-"))}
