"""Hugging Face `datasets` corpora exported once into the local corpus format.

Supported record shapes, recognised by their column:
  - "translation": {"en": ..., "fr": ...}, one pair per record: OPUS-100
    (`Helsinki-NLP/opus-100`, configs "en-fr", ...), WMT (`wmt/wmt19`,
    configs "de-en", ...) and any dataset built the same way;
  - "translations": {"language": [...], "translation": [...]}, one TED talk
    sentence in many languages per record (`ted_multi`).
A hub name and local files (`data_files=` with the "json" or "parquet"
builder) go through the same `datasets.load_dataset` call and the same
conversion code, so the local path tests the hub path. The result is written
with corpus.write_direction, streaming, so even WMT-sized train sets never sit
in memory as Python lists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

from cats_ds.data.corpus import (
    MANIFEST_NAME,
    Direction,
    manifest_matches,
    remove_manifest_files,
    tsv_path,
    write_direction,
    write_manifest,
)

logger = logging.getLogger(__name__)

# Local split name -> names a hub dataset may use for it (the local name itself is tried first).
HUB_SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "valid": ("validation", "valid", "dev"),
    "test": ("test",),
}
_NULL_TEXTS = frozenset({"__NULL__", "_ _ NULL _ _"})  # TED's marks for a missing translation
_BATCH = 1000


class HubCorpusError(ValueError):
    """A dataset that does not fit the request (language, split, record shape)."""


@dataclass(frozen=True)
class HubSpec:
    """Which dataset, directions and splits to export.

    dataset: a hub id ("Helsinki-NLP/opus-100", "wmt/wmt19", "ted_multi") or,
        with data_files, a builder name ("json", "parquet").
    directions: "src-tgt" strings in our language codes. Each direction is read
        from the hub config named after its two languages ("en-fr" serves fr-en
        and en-fr), else from the only config with another name ("plain_text"),
        among the dataset's configs (datasets.get_dataset_config_names; none
        for local files).
    splits: local split names to export; "valid" is read from the dataset's
        "validation" (or "valid", "dev") split.
    data_files: local split name -> file(s), for local json/parquet files.
    language_codes: our code -> the code in the records, e.g. {"pt": "pt-br"}.
    """

    dataset: str
    directions: tuple[str, ...]
    splits: tuple[str, ...] = ("train", "valid", "test")
    data_files: Mapping[str, str | Sequence[str]] | None = None
    language_codes: Mapping[str, str] = field(default_factory=dict)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("directions", "splits"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"HubSpec.{name}: expected a sequence of strings, got the string {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not self.dataset:
            raise ValueError("HubSpec.dataset: empty")
        if not self.parsed_directions:      # parsing fails now on a malformed direction, not after downloading
            raise ValueError("HubSpec.directions: empty")
        if not self.splits:
            raise ValueError("HubSpec.splits: empty")
        if self.data_files is not None:
            missing = [split for split in self.splits if split not in self.data_files]
            if missing:
                raise ValueError(f"HubSpec.data_files: no files for split(s) {missing}")

    @property
    def parsed_directions(self) -> tuple[Direction, ...]:
        return tuple(Direction.parse(text, where=f"HubSpec.directions[{i}]") for i, text in enumerate(self.directions))

    def record_code(self, lang: str) -> str:
        return self.language_codes.get(lang, lang)


def _config_for(spec: HubSpec, direction: Direction, configs: Sequence[str]) -> str | None:
    """The config holding `direction`: the one named after its two languages, else the only other one."""
    if not configs:
        return None
    wanted = {spec.record_code(direction.src), spec.record_code(direction.tgt)}
    pair_configs = [c for c in configs if _is_pair_config(c) and set(c.split("-")) == wanted]
    other_configs = [c for c in configs if not _is_pair_config(c)]
    matching = pair_configs or other_configs
    if len(matching) != 1:
        found = "none" if not matching else f"several ({', '.join(matching)})"
        raise HubCorpusError(
            f"{spec.dataset}: {found} of the configs {list(configs)} serve direction {direction.name}; "
            "a direction needs exactly one config named after its language pair (or one config in all)"
        )
    return matching[0]


def _is_pair_config(config: str) -> bool:
    parts = config.split("-")
    return len(parts) == 2 and all(part.isalpha() for part in parts)


def export_hub_corpus(spec: HubSpec, out_dir: Path) -> Path:
    """Load the spec's dataset with datasets.load_dataset and write the local format; return out_dir.

    Writes manifest.json last (parameters, configs, counts, files); a second
    call with the same spec reuses out_dir without loading anything.
    """
    out_dir = Path(out_dir)
    params = _params(spec)
    if manifest_matches(out_dir, params):
        logger.info("%s: already exported with the same spec; reusing it", out_dir)
        return out_dir
    if (out_dir / MANIFEST_NAME).exists():
        logger.warning("%s: exported with another spec; rebuilding it", out_dir)
    remove_manifest_files(out_dir)
    configs = _available_configs(spec)
    by_config: dict[str | None, list[Direction]] = {}
    for direction in spec.parsed_directions:
        by_config.setdefault(_config_for(spec, direction, configs), []).append(direction)
    counts: dict[str, dict[str, int]] = {split: {} for split in spec.splits}
    for config, directions in by_config.items():
        loaded = _load(spec, config)
        for split in spec.splits:
            dataset = _pick_split(loaded, split, _describe(spec, config))
            for direction in directions:
                where = f"{_describe(spec, config)} split {split!r}"
                counts[split][direction.name] = write_direction(out_dir, split, direction,
                                                                 _pairs(dataset, direction, spec, where))
                logger.info("%s: wrote %d %s pairs", where, counts[split][direction.name], direction.name)
    write_manifest(out_dir, {
        "params": params,
        "configs": {d.name: config for config, directions in by_config.items() for d in directions},
        "counts": counts,
        "files": [tsv_path(out_dir, split, d).name for split in spec.splits for d in spec.parsed_directions],
    })
    return out_dir


def _params(spec: HubSpec) -> dict[str, object]:
    """The spec as JSON data; local files are named by absolute path, size and mtime."""
    params = asdict(spec)
    del params["cache_dir"]  # where datasets caches its downloads does not change the export
    params["language_codes"] = dict(spec.language_codes)
    if spec.data_files is not None:
        params["data_files"] = {
            split: [_file_identity(Path(f)) for f in _as_list(files)] for split, files in spec.data_files.items()
        }
    return params


def _file_identity(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"HubSpec.data_files: {path} does not exist")
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _available_configs(spec: HubSpec) -> tuple[str, ...]:
    """The hub dataset's configs (none for local files), to pick one per direction."""
    if spec.data_files is not None:
        return ()
    return tuple(datasets.get_dataset_config_names(spec.dataset))


def _describe(spec: HubSpec, config: str | None) -> str:
    name = spec.dataset if spec.data_files is None else f"{spec.dataset} files {dict(spec.data_files)}"
    return name if config is None else f"{name} config {config!r}"


def _load(spec: HubSpec, config: str | None) -> datasets.DatasetDict:
    data_files = None
    if spec.data_files is not None:
        data_files = {split: _as_list(spec.data_files[split]) for split in spec.splits}
    loaded = datasets.load_dataset(
        spec.dataset, name=config, data_files=data_files, cache_dir=spec.cache_dir
    )
    if not isinstance(loaded, datasets.DatasetDict):
        raise HubCorpusError(f"{_describe(spec, config)}: expected a dataset with named splits")
    return loaded


def _as_list(files: str | Sequence[str]) -> list[str]:
    return [files] if isinstance(files, str) else [str(f) for f in files]


def _pick_split(loaded: datasets.DatasetDict, split: str, where: str) -> datasets.Dataset:
    for name in (split, *HUB_SPLIT_NAMES.get(split, ())):
        if name in loaded:
            return loaded[name]
    raise HubCorpusError(f"{where}: no split for {split!r}; the dataset has {sorted(loaded)}")


def _pairs(dataset: datasets.Dataset, direction: Direction, spec: HubSpec, where: str) -> Iterator[tuple[str, str]]:
    src, tgt = spec.record_code(direction.src), spec.record_code(direction.tgt)
    if "translation" in dataset.column_names:
        return _translation_pairs(dataset, src, tgt, where)
    if "translations" in dataset.column_names:
        return _ted_pairs(dataset, src, tgt, where)
    raise HubCorpusError(
        f"{where}: records have neither a 'translation' column (OPUS-100, WMT) nor a "
        f"'translations' column (TED); columns: {dataset.column_names}"
    )


def _translation_languages(feature: object, where: str) -> list[str]:
    if isinstance(feature, datasets.Translation):
        return list(feature.languages)
    if isinstance(feature, dict):
        return list(feature)
    raise HubCorpusError(f"{where}: 'translation' is {feature!r}, not a language -> text mapping")


def _translation_pairs(dataset: datasets.Dataset, src: str, tgt: str, where: str) -> Iterator[tuple[str, str]]:
    languages = _translation_languages(dataset.features["translation"], where)
    missing = [lang for lang in (src, tgt) if lang not in languages]
    if missing:
        raise HubCorpusError(f"{where}: language(s) {missing} not in the records; they have {languages}")
    incomplete = 0
    for batch in dataset.select_columns(["translation"]).iter(batch_size=_BATCH):
        for record in batch["translation"]:
            src_text, tgt_text = record.get(src), record.get(tgt)
            if src_text is None or tgt_text is None:
                incomplete += 1  # local json files may mix language pairs
                continue
            yield src_text, tgt_text
    if incomplete:
        logger.warning("%s: skipped %d record(s) without both %s and %s", where, incomplete, src, tgt)


def _ted_pairs(dataset: datasets.Dataset, src: str, tgt: str, where: str) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    found = skipped = 0
    for batch in dataset.select_columns(["translations"]).iter(batch_size=_BATCH):
        for record in batch["translations"]:
            texts = {lang: text for lang, text in zip(record["language"], record["translation"])
                     if text is not None and text.strip() not in _NULL_TEXTS}
            seen.update(record["language"])
            if src in texts and tgt in texts:
                found += 1
                yield texts[src], texts[tgt]
            else:
                skipped += 1  # normal for TED: not every talk is translated into every language
    if not found:
        missing = [lang for lang in (src, tgt) if lang not in seen]
        raise HubCorpusError(
            f"{where}: no record has both {src} and {tgt}"
            + (f"; {missing} never occur" if missing else "")
            + f"; languages in the records: {sorted(seen)}"
        )
    if skipped:
        logger.info("%s: %d record(s) lack %s or %s", where, skipped, src, tgt)
