"""Pretrained checkpoints of five families, loaded from disk by the real code (cats_ds/pretrained.py):
the ids each family lays out against transformers' own tokenizer, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from cats_ds import pretrained
from cats_ds.config import ConfigError, load_config
from cats_ds.data.corpus import Direction
from cats_ds.export import save_export
from cats_ds.families import LanguageCodeError
from cats_ds.families.nllb import ISO_TO_FLORES, NLLB
from cats_ds.model import ModelConfig, fit_max_len, load_pretrained_config
from pretrained_fixtures import SENTENCES, build_tiny_model

SOURCE, TARGET = SENTENCES["en"][1], SENTENCES["fr"][1]

# family -> (corpus source language, target language, the codes transformers' tokenizer takes)
PAIRS = {"nllb": ("en", "fr", "eng_Latn", "fra_Latn"), "m2m100": ("en", "fr", "en", "fr"),
         "mbart50": ("en", "fr", "en_XX", "fr_XX")}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    return {family: build_tiny_model(family, root / family) for family in ("nllb", "m2m100", "mbart50", "marian", "mt5")}


def load(directory: Path, **kwargs):
    hf_config = pretrained.load_config(str(directory))
    return pretrained.load_tokenizer(str(directory), hf_config, **kwargs), hf_config


@pytest.mark.parametrize("family", sorted(PAIRS))
def test_code_families_lay_out_sources_and_labels_as_transformers_does(models, family: str) -> None:
    src, tgt, src_code, tgt_code = PAIRS[family]
    ours, _ = load(models[family])
    theirs = AutoTokenizer.from_pretrained(models[family], src_lang=src_code, tgt_lang=tgt_code)
    expected = theirs([SOURCE], text_target=[TARGET])
    assert ours.encode_source_batch([SOURCE], src, tgt) == expected["input_ids"]
    assert ours.encode_target_batch([TARGET], tgt) == expected["labels"]
    source, labels = expected["input_ids"][0], expected["labels"][0]
    code_token = (lambda code: f"__{code}__") if family == "m2m100" else (lambda code: code)
    # the layout itself: [src_code] pieces </s>, [tgt_code] pieces </s>, the target code forced
    assert source[0] == theirs.convert_tokens_to_ids(code_token(src_code)) and source[-1] == theirs.eos_token_id
    assert labels[0] == theirs.convert_tokens_to_ids(code_token(tgt_code)) and labels[-1] == theirs.eos_token_id
    assert ours.forced_bos_id(tgt) == labels[0]


def test_corpus_names_that_are_model_codes_are_used_as_they_are(models) -> None:
    ours, _ = load(models["nllb"])
    assert ours.encode_source_batch([SOURCE], "eng_Latn", "fra_Latn") == ours.encode_source_batch([SOURCE], "en", "fr")


def test_the_language_map_overrides_the_builtin_one(models) -> None:
    ours, _ = load(models["nllb"], languages={"fr": "fra_Latn", "en": "deu_Latn"})
    theirs = AutoTokenizer.from_pretrained(models["nllb"], src_lang="deu_Latn")
    assert ours.encode_source_batch([SOURCE], "en", "fr") == theirs([SOURCE])["input_ids"]


def test_marian_writes_the_target_tag_before_a_multi_target_source(models) -> None:
    ours, _ = load(models["marian"])
    theirs = AutoTokenizer.from_pretrained(models["marian"])
    assert ours.encode_source_batch([SOURCE], "en", "fr") == theirs([f">>fra<< {SOURCE}"])["input_ids"]
    assert ours.encode_source_batch([SOURCE], "en", "fr")[0][0] == theirs.convert_tokens_to_ids(">>fra<<")
    assert ours.encode_target_batch([TARGET], "fr") == theirs(text_target=[TARGET])["input_ids"]
    assert ours.forced_bos_id("fr") is None


def test_mt5_takes_the_source_prefix_and_no_codes(models) -> None:
    ours, _ = load(models["mt5"], source_prefix="translate {src} to {tgt}: ")
    theirs = AutoTokenizer.from_pretrained(models["mt5"])
    assert ours.encode_source_batch([SOURCE], "en", "fr") == theirs([f"translate en to fr: {SOURCE}"])["input_ids"]
    assert ours.encode_target_batch([TARGET], "fr") == theirs(text_target=[TARGET])["input_ids"]
    assert ours.forced_bos_id("fr") is None


@pytest.mark.parametrize("family", ["nllb", "m2m100", "mbart50", "marian", "mt5"])
def test_generated_rows_decode_without_codes_or_special_tokens(models, family: str) -> None:
    ours, hf_config = load(models[family])
    labels = ours.encode_target_batch([TARGET], "fr")[0]
    row = [hf_config.decoder_start_token_id, *labels, ours.pad_id, ours.pad_id]
    assert ours.decode_generated([row]) == AutoTokenizer.from_pretrained(models[family]).batch_decode(
        [[token for token in labels if token != ours.forced_bos_id("fr")]], skip_special_tokens=True)
    assert "__fr__" not in ours.decode_generated([row])[0] and "fra_Latn" not in ours.decode_generated([row])[0]


def test_every_builtin_nllb_code_is_one_nllb_knows(models) -> None:
    ours, _ = load(models["nllb"])
    assert set(ISO_TO_FLORES.values()) <= set(ours.codes())


def test_a_language_the_model_lacks_is_named_with_the_nearest_codes(models) -> None:
    ours, _ = load(models["nllb"])
    with pytest.raises(LanguageCodeError, match=r"language 'xx'.*no language code 'xx'.*model.languages.xx"):
        ours.encode_source_batch([SOURCE], "xx", "fr")
    with pytest.raises(LanguageCodeError, match=r"model.languages.fr=fra_Latx.*nearest: fra_Latn"):
        load(models["nllb"], languages={"fr": "fra_Latx"})[0].encode_target_batch([TARGET], "fr")


def test_a_code_whose_token_is_unknown_to_the_tokenizer_is_refused(models, monkeypatch) -> None:
    monkeypatch.setattr(NLLB, "codes", lambda self: ["zzz_Zzzz", "eng_Latn"])
    ours, _ = load(models["nllb"], languages={"fr": "zzz_Zzzz"})
    with pytest.raises(LanguageCodeError, match="'zzz_Zzzz' is the unknown token"):
        ours.encode_target_batch([TARGET], "fr")


# --- refusals


def test_a_hub_id_without_network_says_to_pass_a_directory(monkeypatch) -> None:
    # the test machines have no hub either way; offline mode answers at once instead of after retries
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(pretrained.PretrainedError, match="hub could not give.*pass that directory"):
        pretrained.load_config("facebook/nllb-200-distilled-600M")


def test_a_directory_without_config_or_tokenizer_is_refused(models, tmp_path: Path) -> None:
    with pytest.raises(pretrained.PretrainedError, match=r"no usable config.json"):
        pretrained.load_config(str(tmp_path))
    weights_only = tmp_path / "weights_only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        (weights_only / name).write_bytes((models["nllb"] / name).read_bytes())
    hf_config = pretrained.load_config(str(weights_only))
    with pytest.raises(pretrained.PretrainedError, match=r"no usable tokenizer files"):
        pretrained.load_tokenizer(str(weights_only), hf_config)


def test_a_missing_directory_is_named() -> None:
    with pytest.raises(pretrained.PretrainedError, match="no such directory"):
        pretrained.load_config("./no/such/model")


def test_a_decoder_only_model_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(pretrained.PretrainedError, match="decoder-only model.*needs an encoder-decoder"):
        pretrained.load_config(str(tmp_path))


def test_preset_keys_beside_pretrained_are_refused() -> None:
    with pytest.raises(ConfigError, match="model.pretrained=x is set together with model.preset, model.d_model"):
        load_config(None, ["model.pretrained=x", "model.preset=tiny", "model.d_model=64"])
    assert load_config(None, ["model.pretrained=x"]).model.pretrained == "x"


@pytest.mark.parametrize("family, limited", [("mbart50", True), ("marian", True), ("nllb", False), ("mt5", False)])
def test_max_len_beyond_the_positions_is_refused_unless_it_is_the_automatic_choices_cap(models, family,
                                                                                        limited) -> None:
    """Learned (mBART) and fixed sinusoidal (Marian) positions limit the length; NLLB/M2M100's
    sinusoidal positions are computed for any length and T5's are relative."""
    model = ModelConfig(pretrained=str(models[family]))
    hf_config = load_pretrained_config(model, 10_000, max_len_auto=True)
    longest = hf_config.max_position_embeddings - 2 if limited else 10_000
    assert fit_max_len(10_000, hf_config) == longest
    assert fit_max_len(8, hf_config) == 8
    if limited:
        with pytest.raises(ValueError, match=rf"data.max_len=10000: .* has {longest + 2} positions; set "
                                             rf"data.max_len <= {longest}, or data.max_len_auto: true"):
            load_pretrained_config(model, 10_000)
    else:
        assert load_pretrained_config(model, 10_000) is not None
    if family == "nllb":    # and a sentence longer than max_position_embeddings runs through it
        net = AutoModelForSeq2SeqLM.from_pretrained(models[family]).eval()
        ids = torch.full((1, hf_config.max_position_embeddings + 10), 5)
        assert net(input_ids=ids, decoder_input_ids=ids).logits.shape[1] == ids.shape[1]


def test_corpus_files_may_be_named_in_the_model_codes(tmp_path: Path, models) -> None:
    from cats_ds.data.corpus import find_directions, read_split
    (tmp_path / "train.fra_Latn-eng_Latn.tsv").write_text(f"{TARGET}\t{SOURCE}\n", encoding="utf-8")
    (tmp_path / "train.fr_XX-en_XX.tsv").write_text(f"{TARGET}\t{SOURCE}\n", encoding="utf-8")
    names = sorted(direction.name for direction in find_directions(tmp_path, "train"))
    assert names == ["fr_XX-en_XX", "fra_Latn-eng_Latn"]
    bitexts = read_split(tmp_path, "train")
    ours, _ = load(models["nllb"])
    direction = next(d for d in bitexts if d.src == "fra_Latn")
    assert ours.encode_source_batch(bitexts[direction].src, direction.src, direction.tgt)[0][0] == \
        ours.hf.convert_tokens_to_ids("fra_Latn")


def test_an_export_cut_short_leaves_the_previous_one_whole(models, tmp_path, monkeypatch) -> None:
    """The export is written beside its directory and renamed into place (issue 29 part 5: a
    half-written export failed to load with safetensors' or sentencepiece's errors)."""
    hf_config = pretrained.load_config(str(models["nllb"]))
    tokenizer = pretrained.load_tokenizer(str(models["nllb"]), hf_config)
    model = AutoModelForSeq2SeqLM.from_pretrained(models["nllb"])
    out, directions = tmp_path / "export", [Direction("fr", "en")]
    save_export(model, tokenizer, out, 1, 20, directions)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def cut_short(directory):
        raise OSError("killed while writing the tokenizer")
    monkeypatch.setattr(tokenizer, "save_pretrained", cut_short)
    with pytest.raises(OSError, match="killed"):
        save_export(model, tokenizer, out, 2, 20, directions)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    monkeypatch.undo()
    save_export(model, tokenizer, out, 2, 20, directions)
    assert json.loads((out / "generation_config.json").read_text())["num_beams"] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]     # no leftovers
