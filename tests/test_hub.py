"""Hugging Face dataset export: the three record shapes, through real datasets.load_dataset on local files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cats_ds.data import hub
from cats_ds.data.corpus import Direction, read_manifest, read_split
from cats_ds.data.hub import HubCorpusError, HubSpec, export_hub_corpus

OPUS = {
    "train": [("Bonjour le monde", "Hello world"), ("deux\tmots", "two\nwords"), ("", "dropped"), ("Chat", "Cat")],
    "valid": [("Oui", "Yes")],
    "test": [("Non", "No"), ("Merci", "Thanks")],
}


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def opus_files(tmp_path: Path) -> dict[str, str]:
    return {
        split: write_jsonl(tmp_path / f"opus.{split}.jsonl", [{"translation": {"en": en, "fr": fr}} for fr, en in pairs])
        for split, pairs in OPUS.items()
    }


def test_opus_shape_both_directions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = HubSpec("json", directions=("fr-en", "en-fr"), data_files=opus_files(tmp_path), cache_dir=str(tmp_path / "hf"))
    with caplog.at_level(logging.WARNING, logger="cats_ds.data.corpus"):
        out = export_hub_corpus(spec, tmp_path / "corpus")
    train = read_split(out, "train")
    assert train[Direction("fr", "en")].src == ["Bonjour le monde", "deux mots", "Chat"]
    assert train[Direction("fr", "en")].tgt == ["Hello world", "two words", "Cat"]
    assert train[Direction("en", "fr")].src == ["Hello world", "two words", "Cat"]
    assert "dropped 1 pair(s)" in caplog.text
    assert read_split(out, "test")[Direction("fr", "en")].src == ["Non", "Merci"]
    manifest = read_manifest(out)
    assert manifest["counts"] == {"train": {"fr-en": 3, "en-fr": 3}, "valid": {"fr-en": 1, "en-fr": 1},
                                  "test": {"fr-en": 2, "en-fr": 2}}
    assert sorted(manifest["files"]) == sorted(p.name for p in out.glob("*.tsv"))


def test_wmt_shape_from_parquet(tmp_path: Path) -> None:
    files = {}
    for split, n in (("train", 3), ("valid", 2)):
        rows = [{"translation": {"de": f"Satz {i}", "en": f"sentence {i}"}} for i in range(n)]
        files[split] = str(tmp_path / f"wmt.{split}.parquet")
        pq.write_table(pa.Table.from_pylist(rows), files[split])
    spec = HubSpec("parquet", directions=["de-en"], splits=["train", "valid"], data_files=files,
                   cache_dir=str(tmp_path / "hf"))
    out = export_hub_corpus(spec, tmp_path / "corpus")
    train = read_split(out, "train")[Direction("de", "en")]
    assert (train.src, train.tgt) == (["Satz 0", "Satz 1", "Satz 2"], ["sentence 0", "sentence 1", "sentence 2"])
    assert len(read_split(out, "valid")[Direction("de", "en")]) == 2
    assert not (out / "test.de-en.tsv").exists()


def ted_record(talk: str, texts: dict[str, str]) -> dict:
    return {"talk_name": talk, "translations": {"language": list(texts), "translation": list(texts.values())}}


def test_ted_shape_with_language_codes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = [
        ted_record("t1", {"en": "Hi", "fr": "Salut", "pt-br": "Oi"}),
        ted_record("t1", {"en": "Bye", "pt-br": "Tchau"}),  # no French
        ted_record("t2", {"de": "Ja", "en": "Yes", "fr": "__NULL__", "pt-br": "Sim"}),  # French missing
        ted_record("t2", {"en": "Thanks", "fr": "Merci"}),
    ]
    files = {split: write_jsonl(tmp_path / f"ted.{split}.jsonl", records) for split in ("train", "valid", "test")}
    spec = HubSpec("json", directions=("fr-en", "pt-en"), data_files=files, language_codes={"pt": "pt-br"},
                   cache_dir=str(tmp_path / "hf"))
    with caplog.at_level(logging.INFO, logger="cats_ds.data.hub"):
        out = export_hub_corpus(spec, tmp_path / "corpus")
    train = read_split(out, "train")
    assert (train[Direction("fr", "en")].src, train[Direction("fr", "en")].tgt) == (["Salut", "Merci"], ["Hi", "Thanks"])
    assert train[Direction("pt", "en")].src == ["Oi", "Tchau", "Sim"]
    assert "2 record(s) lack fr or en" in caplog.text


def test_missing_language_is_a_clear_error(tmp_path: Path) -> None:
    spec = HubSpec("json", directions=("de-en",), data_files=opus_files(tmp_path), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(HubCorpusError, match=r"split 'train'.*\['de'\] not in the records; they have \['en', 'fr'\]"):
        export_hub_corpus(spec, tmp_path / "corpus")
    assert not list((tmp_path / "corpus").glob("*"))  # nothing half-written
    ted = {s: write_jsonl(tmp_path / f"ted.{s}.jsonl", [ted_record("t", {"en": "a", "fr": "b"})]) for s in ("train",)}
    spec = HubSpec("json", directions=("ja-en",), splits=("train",), data_files=ted, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(HubCorpusError, match=r"no record has both ja and en; \['ja'\] never occur"):
        export_hub_corpus(spec, tmp_path / "corpus")


def test_unknown_record_shape(tmp_path: Path) -> None:
    files = {"train": write_jsonl(tmp_path / "x.jsonl", [{"src": "a", "tgt": "b"}])}
    spec = HubSpec("json", directions=("fr-en",), splits=("train",), data_files=files, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(HubCorpusError, match=r"neither a 'translation' column.*\['src', 'tgt'\]"):
        export_hub_corpus(spec, tmp_path / "corpus")


def fake_hub(calls: list[tuple[str, str | None]]):
    """load_dataset for two OPUS-100-like configs, as the hub returns them (Translation features)."""
    def load_dataset(path: str, name: str | None = None, **kwargs: object) -> datasets.DatasetDict:
        calls.append((path, name))
        src = {"en-fr": "fr", "de-en": "de"}[name]
        features = datasets.Features({"translation": datasets.Translation(languages=sorted(["en", src]))})
        def split(n: int) -> datasets.Dataset:
            rows = [{"translation": {"en": f"en {name} {i}", src: f"{src} {i}"}} for i in range(n)]
            return datasets.Dataset.from_list(rows, features=features)
        return datasets.DatasetDict({"train": split(3), "validation": split(2), "test": split(1)})
    return load_dataset


def test_hub_path_picks_configs_and_split_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None]] = []
    monkeypatch.setattr(hub.datasets, "load_dataset", fake_hub(calls))
    monkeypatch.setattr(hub.datasets, "get_dataset_config_names",
                        lambda name: ["af-en", "de-en", "en-fr", "en-ja"])
    spec = HubSpec("Helsinki-NLP/opus-100", directions=("fr-en", "de-en", "en-fr"))
    out = export_hub_corpus(spec, tmp_path)
    assert calls == [("Helsinki-NLP/opus-100", "en-fr"), ("Helsinki-NLP/opus-100", "de-en")]
    valid = read_split(out, "valid")
    assert valid[Direction("fr", "en")].src == ["fr 0", "fr 1"]
    assert valid[Direction("en", "fr")].src == ["en en-fr 0", "en en-fr 1"]
    assert read_split(out, "train")[Direction("de", "en")].tgt == ["en de-en 0", "en de-en 1", "en de-en 2"]
    assert read_manifest(out)["configs"] == {"fr-en": "en-fr", "en-fr": "en-fr", "de-en": "de-en"}
    # the same spec again: reused, nothing loaded
    export_hub_corpus(spec, tmp_path)
    assert len(calls) == 2


def test_hub_split_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub.datasets, "load_dataset", fake_hub([]))
    monkeypatch.setattr(hub.datasets, "get_dataset_config_names", lambda name: ["de-en", "zh-en"])
    spec = HubSpec("wmt/wmt19", directions=("de-en",), splits=("train", "dev2"))
    with pytest.raises(HubCorpusError, match=r"wmt/wmt19 config 'de-en': no split for 'dev2'; the dataset has "
                                             r"\['test', 'train', 'validation'\]"):
        export_hub_corpus(spec, tmp_path)


def test_config_choice() -> None:
    fr_en = Direction("fr", "en")
    with pytest.raises(HubCorpusError, match="none of the configs.*fr-en"):
        hub._config_for(HubSpec("wmt/wmt19", directions=("fr-en",)), fr_en, ("de-en", "zh-en"))
    with pytest.raises(HubCorpusError, match=r"several \(plain_text, other\)"):
        hub._config_for(HubSpec("ted_multi", directions=("fr-en",)), fr_en, ("plain_text", "other"))
    assert hub._config_for(HubSpec("ted_multi", directions=("fr-en",)), fr_en, ("plain_text",)) == "plain_text"


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match=r"HubSpec.data_files: no files for split\(s\) \['test'\]"):
        HubSpec("json", directions=("fr-en",), data_files={"train": "a", "valid": "b"})
    with pytest.raises(ValueError, match="HubSpec.directions: expected a sequence"):
        HubSpec("json", directions="fr-en")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"HubSpec.directions\[1\].*'fe'"):
        HubSpec("x", directions=("fr-en", "fe-en"))
