"""Known language codes, and the check that rejects a code nobody has heard of.

Codes are lower-case ISO 639-1 (all 183 current codes, plus the deprecated "sh"
that OPUS-100 still uses) and the ISO 639-3 codes of languages without a
two-letter code that OPUS-100, TED and FLORES-style corpora commonly carry.
A typo such as "fe" for "fr" is caught where the code is read, with the file or
config key that held it and the closest known codes.

Pretrained models' own codes are accepted by their form, so that a corpus can name its files
in the model's codes (train.fra_Latn-eng_Latn.tsv): FLORES-200's (NLLB: ISO 639-3 and an
ISO 15924 script, fra_Latn) and mBART-50's (ISO 639-1 and a region, fr_XX). Whether the
model knows such a code is checked by its family (cats_ds/families), naming the nearest.
"""

from __future__ import annotations

import difflib
import re

KNOWN_LANGUAGES: frozenset[str] = frozenset({
    # ISO 639-1, complete
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bi",
    "bm", "bn", "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da", "de",
    "dv", "dz", "ee", "el", "en", "eo", "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr", "fy",
    "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi", "ho", "hr", "ht", "hu", "hy", "hz", "ia",
    "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja", "jv", "ka", "kg", "ki", "kj", "kk",
    "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky", "la", "lb", "lg", "li", "ln", "lo",
    "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "na", "nb", "nd",
    "ne", "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa", "pi", "pl",
    "ps", "pt", "qu", "rm", "rn", "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk", "sl",
    "sm", "sn", "so", "sq", "sr", "ss", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "ti", "tk",
    "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk", "ur", "uz", "ve", "vi", "vo", "wa",
    "wo", "xh", "yi", "yo", "za", "zh", "zu",
    # deprecated ISO 639-1 Serbo-Croatian, still a language of OPUS-100
    "sh",
    # ISO 639-3 codes common in OPUS-100, TED, FLORES and OPUS corpora
    "ace", "arq", "ast", "awa", "ban", "bho", "bjn", "bug", "ceb", "ckb", "cnh", "crh", "dsb",
    "fil", "gsw", "haw", "hil", "hmn", "hsb", "hup", "ilo", "inh", "kab", "lmo", "ltg", "mag",
    "mai", "min", "mni", "nap", "nds", "pag", "pam", "pms", "rup", "sat", "scn", "sco", "shn",
    "srp", "szl", "tet", "tpi", "vec", "war", "yue", "zza",
})


MODEL_CODE = re.compile(r"^(?:[a-z]{3}_[A-Z][a-z]{3}|[a-z]{2}_[A-Z]{2})$")   # fra_Latn (NLLB), fr_XX (mBART-50)


class UnknownLanguageError(ValueError):
    """A language code that is not in KNOWN_LANGUAGES."""


def check_language(code: str, where: str) -> str:
    """Return `code` if it is a known language code, else raise naming `where`.

    `where` is the file or config key that held the code, so the message points
    at the thing to fix.
    """
    if code in KNOWN_LANGUAGES or MODEL_CODE.match(code):
        return code
    close = difflib.get_close_matches(code.lower(), sorted(KNOWN_LANGUAGES), n=3, cutoff=0.5)
    if code.lower() in KNOWN_LANGUAGES:
        close = [code.lower()]  # only the case is wrong: the fix is certain
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownLanguageError(
        f"{where}: unknown language code {code!r} (expected a lower-case ISO 639-1 or "
        f"ISO 639-3 code, or a pretrained model's code such as fra_Latn or fr_XX){hint}"
    )
