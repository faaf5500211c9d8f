"""Tiny random "pretrained" translation checkpoints of five model families, built offline.

Each builder writes a directory laid out like a hub download (config.json, model.safetensors,
generation_config.json and the family's tokenizer files), so tests can run the real loading
code (``AutoConfig``, ``AutoTokenizer.from_pretrained(dir)``,
``AutoModelForSeq2SeqLM.from_pretrained(dir)``) without network. The tokenizers are
transformers' own classes built from a sentencepiece model trained here on a few sentences,
so they follow each family's real conventions (special-token ids, language-code tokens,
where the codes go); the weights are random and tiny (d_model 16, one layer each side).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sentencepiece as spm
import torch
from tokenizers.models import BPE, Unigram
from transformers import (M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer, MarianConfig, MarianMTModel,
                          MarianTokenizer, MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration,
                          MT5Config, MT5ForConditionalGeneration, NllbTokenizer, T5Tokenizer)
from transformers.convert_slow_tokenizer import NllbConverter, SentencePieceExtractor
from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES as M2M100_CODES
from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES as MBART50_CODES
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as NLLB_CODES

FAMILIES = ("nllb", "m2m100", "mbart50", "marian", "mt5")

# What a tokenizer of each family accepts as src_lang/tgt_lang (marian: the tag written before
# the text; mt5 has none). The fairseq classes hard-code their full lists, so the tiny ones know
# every code the real checkpoint knows.
LANGUAGE_CODES: dict[str, tuple[str, ...]] = {
    "nllb": tuple(NLLB_CODES),
    "m2m100": tuple(M2M100_CODES["m2m100"]),
    "mbart50": tuple(MBART50_CODES),
    "marian": (">>deu<<", ">>eng<<", ">>fra<<", ">>rus<<", ">>spa<<"),  # like opus-mt-en-mul's tags
    "mt5": (),
}

# The same nine sentences in five languages (parallel, so tests can pair them); the last one puts
# digits and punctuation into every vocabulary, so everyday test strings rarely hit <unk>.
SENTENCES: dict[str, tuple[str, ...]] = {
    "en": ("In the beginning God created the heaven and the earth.", "The cat sleeps on the warm mat.",
           "We went to the market this morning.", "The river runs past the old stone house.",
           "Please give me a glass of water.", "The children are reading a new book.",
           "It is raining in the city tonight.", "My brother works in a small bakery.",
           "Call me at 10:45 or 23:09; no later! (Okay?) \"Yes\" - 6, 7, 8."),
    "fr": ("Au commencement, Dieu créa les cieux et la terre.", "Le chat dort sur le tapis chaud.",
           "Nous sommes allés au marché ce matin.", "La rivière passe devant la vieille maison de pierre.",
           "Donnez-moi un verre d'eau, s'il vous plaît.", "Les enfants lisent un nouveau livre.",
           "Il pleut en ville ce soir.", "Mon frère travaille dans une petite boulangerie.",
           "Appelle-moi à 10:45 ou 23:09 ; pas plus tard ! (D'accord ?) « Oui » - 6, 7, 8."),
    "de": ("Im Anfang schuf Gott Himmel und Erde.", "Die Katze schläft auf der warmen Matte.",
           "Wir sind heute Morgen auf den Markt gegangen.", "Der Fluss fließt am alten Steinhaus vorbei.",
           "Bitte gib mir ein Glas Wasser.", "Die Kinder lesen ein neues Buch.",
           "Heute Abend regnet es in der Stadt.", "Mein Bruder arbeitet in einer kleinen Bäckerei.",
           "Ruf mich um 10:45 oder 23:09 an; nicht später! (Okay?) „Ja“ - 6, 7, 8."),
    "es": ("En el principio creó Dios los cielos y la tierra.", "El gato duerme en la alfombra caliente.",
           "Fuimos al mercado esta mañana.", "El río pasa junto a la vieja casa de piedra.",
           "Por favor, dame un vaso de agua.", "Los niños leen un libro nuevo.",
           "Esta noche llueve en la ciudad.", "Mi hermano trabaja en una pequeña panadería.",
           "Llámame a las 10:45 o 23:09; ¡no más tarde! (¿Vale?) «Sí» - 6, 7, 8."),
    "ru": ("В начале сотворил Бог небо и землю.", "Кошка спит на тёплом коврике.",
           "Сегодня утром мы ходили на рынок.", "Река течёт мимо старого каменного дома.",
           "Пожалуйста, дай мне стакан воды.", "Дети читают новую книгу.",
           "Сегодня вечером в городе идёт дождь.", "Мой брат работает в маленькой пекарне.",
           "Позвони мне в 10:45 или 23:09; не позже! (Ладно?) «Да» - 6, 7, 8."),
}
DEFAULT_SENTENCES = [line for lines in SENTENCES.values() for line in lines]

# Small enough that a model is mostly embeddings; big enough for every family's attention shapes.
_BART_LIKE = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                  encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128)


def train_spm(directory: Path, sentences: list[str], vocab_size: int = 300, model_type: str = "unigram",
              name: str = "spm.model", **options) -> Path:
    """Trains a sentencepiece model on ``sentences`` into ``directory/name``; deterministic (one thread,
    no sampling). ``vocab_size`` is an upper bound: a few dozen lines support fewer unigram pieces.
    ``options`` go to the trainer (e.g. T5's pad_id=0, eos_id=1, unk_id=2, bos_id=-1)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "wb") as out:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=out, vocab_size=vocab_size,
                                       model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
                                       num_threads=1, shuffle_input_sentence=False, minloglevel=2, **options)
    return path


def _pieces(spm_path: Path) -> list[str]:
    """The pieces after sentencepiece's <unk>, <s>, </s> (ids 0-2 by default)."""
    processor = spm.SentencePieceProcessor(model_file=str(spm_path))
    return [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]


def _extract(spm_path: Path, model=Unigram) -> dict:
    """What transformers' SentencePieceExtractor reads from a .model for a TokenizersBackend class:
    vocab ((piece, score) list for Unigram, piece->id dict for BPE), merges for BPE, the normalizer
    charsmap. Its additional_special_tokens (the .model's control tokens) are dropped: the hub
    files do not list <s>, </s> or <pad> as extra special tokens."""
    extracted = SentencePieceExtractor(str(spm_path)).extract(model)
    keep = ("vocab", "merges", "_spm_precompiled_charsmap")
    return {key: value for key, value in extracted.items() if key in keep}


def _nllb(directory: Path, sentences: list[str]):
    # NllbTokenizer (v5) is a BPE TokenizersBackend. Built with transformers' own converter, in the
    # hub layout: <s> <pad> </s> <unk>, the pieces (spm id + 1), the 202 codes, <mask> last. (A bare
    # .model through from_pretrained(dir) loses the codes: the .model's control tokens replace the
    # class's default code list; passing them back puts <mask> before them.)
    spm_path = train_spm(directory, sentences, model_type="bpe", name="sentencepiece.bpe.model")
    extracted = _extract(spm_path, BPE)
    vocab = NllbConverter.convert_from_spm(vocab=extracted.pop("vocab"))["vocab"]
    for token in [*NLLB_CODES, "<mask>"]:
        vocab[token] = len(vocab)
    tokenizer = NllbTokenizer(vocab=vocab, extra_special_tokens=list(NLLB_CODES), **extracted)
    config = M2M100Config(vocab_size=len(tokenizer), encoder_layerdrop=0.0, decoder_layerdrop=0.0,
                          tokenizer_class="NllbTokenizer", **_BART_LIKE)  # defaults: pad 1, eos 2, start 2
    return tokenizer, M2M100ForConditionalGeneration(config)


def _m2m100(directory: Path, sentences: list[str]):
    # M2M100Tokenizer is still a sentencepiece (python) tokenizer: vocab.json maps the fairseq
    # dictionary, the 100 __xx__ codes get the ids after it, then 8 "madeup words" pad the
    # embedding (facebook/m2m100_418M: 128004 + 100 + 8 = 128112). len(tokenizer) and get_vocab()
    # leave the codes out, so the embedding cannot be sized from len(tokenizer) here.
    spm_path = train_spm(directory, sentences, model_type="bpe", name="sentencepiece.bpe.model")
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + _pieces(spm_path))}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # The hub's tokenizer files list the codes as special tokens; without that the class (v5.24)
    # leaves them ordinary: not matched in text, not dropped by decode(skip_special_tokens=True).
    codes = [language_token("m2m100", code) for code in LANGUAGE_CODES["m2m100"]]
    tokenizer = M2M100Tokenizer(str(directory / "vocab.json"), str(spm_path), additional_special_tokens=codes)
    size = len(vocab) + len(tokenizer.lang_token_to_id) + tokenizer.num_madeup_words
    config = M2M100Config(vocab_size=size, encoder_layerdrop=0.0, decoder_layerdrop=0.0, **_BART_LIKE)
    return tokenizer, M2M100ForConditionalGeneration(config)


def _mbart50(directory: Path, sentences: list[str]):
    # MBart50Tokenizer (v5) is a Unigram TokenizersBackend: given the spm's (piece, score) list it
    # builds the hub layout itself: <s> <pad> </s> <unk>, pieces, the 52 codes, <mask>.
    extracted = _extract(train_spm(directory, sentences, model_type="unigram", name="sentencepiece.bpe.model"))
    tokenizer = MBart50Tokenizer(bos_token="<s>", **extracted)  # the hub files name a bos token too
    config = MBartConfig(vocab_size=len(tokenizer), decoder_start_token_id=2, scale_embedding=True,
                         tokenizer_class="MBart50Tokenizer", **_BART_LIKE)
    return tokenizer, MBartForConditionalGeneration(config)


def _marian(directory: Path, sentences: list[str]):
    # Marian's vocab.json (not the spm ids) defines the ids: </s> 0, <unk> 1, the >>xxx<< target
    # tags, the pieces, and <pad> last, which is also the decoder start token.
    spm_path = train_spm(directory, sentences, model_type="unigram", name="source.spm")
    shutil.copyfile(spm_path, directory / "target.spm")  # one shared vocabulary, as in opus-mt
    tokens = ["</s>", "<unk>", *LANGUAGE_CODES["marian"], *_pieces(spm_path), "<pad>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(str(spm_path), str(directory / "target.spm"), str(directory / "vocab.json"),
                                source_lang="en", target_lang="mul")
    pad = vocab["<pad>"]
    config = MarianConfig(vocab_size=len(vocab), pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0,
                          forced_eos_token_id=0, scale_embedding=True, **_BART_LIKE)
    return tokenizer, MarianMTModel(config)


def _mt5(directory: Path, sentences: list[str]):
    # T5 ids: <pad> 0, </s> 1, <unk> 2. google/mt5-* ship extra_ids=0 (no <extra_id_N> tokens).
    extracted = _extract(train_spm(directory, sentences, model_type="unigram", name="spiece.model",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    tokenizer = T5Tokenizer(extra_ids=0, **extracted)
    config = MT5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                       num_heads=2, relative_attention_num_buckets=8, tie_word_embeddings=False,
                       tokenizer_class="T5Tokenizer")  # defaults: pad 0, eos 1, decoder start 0
    return tokenizer, MT5ForConditionalGeneration(config)


_BUILDERS = {"nllb": _nllb, "m2m100": _m2m100, "mbart50": _mbart50, "marian": _marian, "mt5": _mt5}


def build_tiny_model(family: str, directory: Path, sentences: list[str] | None = None) -> Path:
    """Writes a tiny random model of ``family`` and its tokenizer into ``directory``; returns it.
    Same sentences, same files and weights (seeded without touching the caller's RNG)."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    directory = Path(directory)
    # An earlier build's files (another family's tokenizer) would be loaded alongside this one.
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer, model = _BUILDERS[family](directory, list(sentences or DEFAULT_SENTENCES))
    # Every id the tokenizer can produce, language codes included, has an embedding row.
    codes = [tokenizer.convert_tokens_to_ids(language_token(family, code)) for code in LANGUAGE_CODES[family]]
    assert max([*tokenizer.get_vocab().values(), *codes]) < model.config.vocab_size, family
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def language_token(family: str, code: str) -> str:
    """The vocabulary token of a language code (for forced_bos_token_id): m2m100's ``fr`` is ``__fr__``."""
    return f"__{code}__" if family == "m2m100" else code
