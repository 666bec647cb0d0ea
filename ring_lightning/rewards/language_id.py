"""A small, dependency-free response-language check for the instruction-following reward.

No language-identification package is installed (langdetect / langid are not dependencies), so
IFEval's ``language:response_language`` is checked heuristically:

1. the dominant Unicode script of the letters (at least half of them) must be the language's
   script (Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai, Hangul, Japanese kana, Han, ...);
   Japanese needs kana, Chinese needs Han without kana;
2. for Latin-script languages, the language's function words must be the most frequent among the
   supported Latin languages (en, de, fr, es, it, pt, nl).

Other language codes are rejected at validation time (`supported`). This is deliberately coarse:
it separates "answered in English" from "answered in German / Russian / Chinese", which is what
the constraint is for; it does not separate e.g. Russian from Ukrainian (same script).
"""

from __future__ import annotations

import re
import unicodedata

_SCRIPT_OF_LANG = {
    "ru": "CYRILLIC", "uk": "CYRILLIC", "bg": "CYRILLIC", "sr": "CYRILLIC", "mk": "CYRILLIC", "kk": "CYRILLIC",
    "el": "GREEK", "ar": "ARABIC", "fa": "ARABIC", "ur": "ARABIC", "he": "HEBREW", "hi": "DEVANAGARI",
    "mr": "DEVANAGARI", "ne": "DEVANAGARI", "bn": "BENGALI", "th": "THAI", "ko": "HANGUL", "ja": "KANA",
    "zh": "HAN", "ka": "GEORGIAN", "hy": "ARMENIAN", "ta": "TAMIL", "te": "TELUGU", "gu": "GUJARATI",
    "kn": "KANNADA", "ml": "MALAYALAM", "pa": "GURMUKHI",
}
_STOPWORDS = {
    "en": "the and of to in is that it for was with as on be are this by not have you at from or an which but",
    "de": "der die und das ist nicht ein eine zu den mit sich des auf für im dem auch es von wird sind",
    "fr": "le la les et des est une un du que pas pour dans qui sur au avec ce il sont par plus elle",
    "es": "el la los las y de que en es un una por con para del se no su al lo como más pero",
    "it": "il la di che e è un una per non sono del della con si le gli da nel anche come",
    "pt": "o a os as e de que em um uma para com não do da no na por se mais são ao",
    "nl": "de het een en van is dat op te in zijn niet met voor die er ook aan wordt bij",
}
_STOP = {lang: set(words.split()) for lang, words in _STOPWORDS.items()}
LATIN_LANGUAGES = tuple(_STOPWORDS)


def supported(lang: str) -> bool:
    return lang in _SCRIPT_OF_LANG or lang in _STOP


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    if name.startswith(("HIRAGANA", "KATAKANA")):
        return "KANA"
    if name.startswith("CJK"):
        return "HAN"
    return name.split(" ", 1)[0] if name else ""


def dominant_script(text: str) -> str | None:
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            s = _script(ch)
            counts[s] = counts.get(s, 0) + 1
    if not counts:
        return None
    total = sum(counts.values())
    if counts.get("KANA"):  # Japanese mixes kana with Han
        return "KANA" if (counts.get("KANA", 0) + counts.get("HAN", 0)) * 2 >= total else None
    best = max(counts, key=counts.get)
    return best if counts[best] * 2 >= total else None


def latin_language(text: str) -> str | None:
    words = re.findall(r"[^\W\d_]+", text.lower())
    scores = {lang: sum(w in stop for w in words) for lang, stop in _STOP.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 and list(scores.values()).count(scores[best]) == 1 else None


def is_language(text: str, lang: str) -> bool:
    """True when `text` looks written in `lang` (an ISO 639-1 code accepted by `supported`)."""
    script = dominant_script(text)
    if lang in _SCRIPT_OF_LANG:
        return script == _SCRIPT_OF_LANG[lang]
    return script == "LATIN" and latin_language(text) == lang
