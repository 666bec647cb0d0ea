"""IFEval-style verifiable instructions: one checker per instruction id, with its typed kwargs.

Ids and kwargs follow IFEval (Zhou et al. 2023, google-research/instruction_following_eval) so its
data can be used as is; the checks are re-implemented here without nltk: words are ``\\w+`` runs,
sentences end at ``. ! ?`` (or a line break after text), paragraphs are separated by ``***``
(`number_paragraphs`, as in IFEval) or blank lines (`nth_paragraph_first_word`). Relations accept
IFEval's "less than" / "at least" and also "at most", "more than", "exactly".
``startend:start_checker`` (starts with a phrase) is ours; IFEval has only the end checker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ring_lightning.rewards.language_id import is_language, supported

RELATIONS: dict[str, Callable[[int, int], bool]] = {
    "less than": lambda a, b: a < b, "at most": lambda a, b: a <= b, "at least": lambda a, b: a >= b,
    "more than": lambda a, b: a > b, "exactly": lambda a, b: a == b,
}


@dataclass(frozen=True)
class Check:
    """A checker `fn(response, **kwargs) -> bool` and the kwargs it takes ({name: type})."""

    fn: Callable[..., bool]
    kwargs: dict[str, type]
    optional: tuple[str, ...] = ()


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def _relation(relation: str) -> Callable[[int, int], bool]:
    return RELATIONS[relation]


def _keywords_existence(r: str, keywords: list) -> bool:
    return all(re.search(re.escape(k), r, re.IGNORECASE) for k in keywords)


def _keyword_frequency(r: str, keyword: str, frequency: int, relation: str) -> bool:
    return _relation(relation)(len(re.findall(re.escape(keyword), r, re.IGNORECASE)), frequency)


def _forbidden_words(r: str, forbidden_words: list) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, re.IGNORECASE) for w in forbidden_words)


def _letter_frequency(r: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _relation(let_relation)(r.lower().count(letter.lower()), let_frequency)


def _number_sentences(r: str, num_sentences: int, relation: str) -> bool:
    return _relation(relation)(len(sentences(r)), num_sentences)


def _number_paragraphs(r: str, num_paragraphs: int) -> bool:
    parts = re.split(r"\s?\*\*\*\s?", r)
    if any(not p.strip() for p in parts[1:-1]):
        return False
    return len([p for p in parts if p.strip()]) == num_paragraphs


def _number_words(r: str, num_words: int, relation: str) -> bool:
    return _relation(relation)(len(words(r)), num_words)


def _nth_paragraph_first_word(r: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = [p for p in re.split(r"\n\s*\n", r) if p.strip()]
    if len(paragraphs) != num_paragraphs or not 1 <= nth_paragraph <= len(paragraphs):
        return False
    first = words(paragraphs[nth_paragraph - 1])
    return bool(first) and first[0].lower() == first_word.lower()


def _placeholders(r: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[[^\[\]]+\]", r)) >= num_placeholders


def _postscript(r: str, postscript_marker: str) -> bool:
    return re.search(r"\s*" + re.escape(postscript_marker.lower()) + r".*$", r.lower(), re.MULTILINE) is not None


def _bullets(r: str, num_bullets: int) -> bool:
    return len(re.findall(r"^\s*[\*\-]\s+\S", r, re.MULTILINE)) == num_bullets


def _constrained(r: str) -> bool:
    return any(opt in r for opt in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def _highlights(r: str, num_highlights: int) -> bool:
    found = re.findall(r"\*[^\n\*]+\*", r) + re.findall(r"\*\*[^\n\*]+\*\*", r)
    return len([h for h in found if h.strip("*").strip()]) >= num_highlights


def _sections(r: str, section_spliter: str, num_sections: int) -> bool:
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= num_sections


def _json_format(r: str) -> bool:
    s = r.strip()
    s = re.sub(r"^```(?:json|Json|JSON)?\s*", "", s)
    s = re.sub(r"\s*```$", "", s)
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _title(r: str) -> bool:
    return any(t.strip() for t in re.findall(r"<<([^\n]+?)>>", r))


def _two_responses(r: str) -> bool:
    parts = [p.strip() for p in r.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def _repeat_prompt(r: str, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def _end_checker(r: str, end_phrase: str) -> bool:
    return r.strip().lower().endswith(end_phrase.strip().lower())


def _start_checker(r: str, start_phrase: str) -> bool:
    return r.strip().lower().startswith(start_phrase.strip().lower())


def _quotation(r: str) -> bool:
    s = r.strip()
    return len(s) > 1 and s[0] == '"' and s[-1] == '"'


def _capital_words(r: str, capital_frequency: int, capital_relation: str) -> bool:
    return _relation(capital_relation)(len([w for w in words(r) if w.isupper()]), capital_frequency)


def _all_upper(r: str) -> bool:
    return r == r.upper() and any(c.isalpha() for c in r)


def _all_lower(r: str) -> bool:
    return r == r.lower() and any(c.isalpha() for c in r)


def _no_comma(r: str) -> bool:
    return "," not in r


def _language(r: str, language: str) -> bool:
    return is_language(r, language)


REL = str
CHECKS: dict[str, Check] = {
    "keywords:existence": Check(_keywords_existence, {"keywords": list}),
    "keywords:frequency": Check(_keyword_frequency, {"keyword": str, "frequency": int, "relation": REL}),
    "keywords:forbidden_words": Check(_forbidden_words, {"forbidden_words": list}),
    "keywords:letter_frequency": Check(_letter_frequency, {"letter": str, "let_frequency": int, "let_relation": REL}),
    "language:response_language": Check(_language, {"language": str}),
    "length_constraints:number_sentences": Check(_number_sentences, {"num_sentences": int, "relation": REL}),
    "length_constraints:number_paragraphs": Check(_number_paragraphs, {"num_paragraphs": int}),
    "length_constraints:number_words": Check(_number_words, {"num_words": int, "relation": REL}),
    "length_constraints:nth_paragraph_first_word": Check(
        _nth_paragraph_first_word, {"num_paragraphs": int, "nth_paragraph": int, "first_word": str}),
    "detectable_content:number_placeholders": Check(_placeholders, {"num_placeholders": int}),
    "detectable_content:postscript": Check(_postscript, {"postscript_marker": str}),
    "detectable_format:number_bullet_lists": Check(_bullets, {"num_bullets": int}),
    "detectable_format:constrained_response": Check(_constrained, {}),
    "detectable_format:number_highlighted_sections": Check(_highlights, {"num_highlights": int}),
    "detectable_format:multiple_sections": Check(_sections, {"section_spliter": str, "num_sections": int}),
    "detectable_format:json_format": Check(_json_format, {}),
    "detectable_format:title": Check(_title, {}),
    "combination:two_responses": Check(_two_responses, {}),
    "combination:repeat_prompt": Check(_repeat_prompt, {"prompt_to_repeat": str}),
    "startend:end_checker": Check(_end_checker, {"end_phrase": str}),
    "startend:start_checker": Check(_start_checker, {"start_phrase": str}),
    "startend:quotation": Check(_quotation, {}),
    "change_case:capital_word_frequency": Check(
        _capital_words, {"capital_frequency": int, "capital_relation": REL}),
    "change_case:english_capital": Check(_all_upper, {}),
    "change_case:english_lowercase": Check(_all_lower, {}),
    "punctuation:no_comma": Check(_no_comma, {}),
}


def check_kwargs(instruction_id: str, kwargs: Any) -> dict[str, Any]:
    """Validated kwargs of one instruction (None-valued keys dropped); raises ValueError naming the problem."""
    if instruction_id not in CHECKS:
        raise ValueError(f"unknown instruction id {instruction_id!r}; supported: {', '.join(sorted(CHECKS))}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"instruction {instruction_id!r}: kwargs must be an object")
    spec = CHECKS[instruction_id].kwargs
    given = {k: v for k, v in kwargs.items() if v is not None}
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise ValueError(f"instruction {instruction_id!r}: unknown kwargs {unknown}; expected {sorted(spec)}")
    for name, typ in spec.items():
        if name not in given:
            raise ValueError(f"instruction {instruction_id!r}: missing kwarg {name!r}")
        value = given[name]
        if typ is int and isinstance(value, float) and value.is_integer():
            given[name] = value = int(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ValueError(f"instruction {instruction_id!r}: kwarg {name!r} must be {typ.__name__}, got {value!r}")
        if name in ("relation", "let_relation", "capital_relation") and value not in RELATIONS:
            raise ValueError(f"instruction {instruction_id!r}: {name} must be one of {sorted(RELATIONS)}, "
                             f"got {value!r}")
        if typ is list and not all(isinstance(x, str) for x in value):
            raise ValueError(f"instruction {instruction_id!r}: kwarg {name!r} must be a list of strings")
    if instruction_id == "language:response_language" and not supported(given["language"]):
        raise ValueError(f"instruction {instruction_id!r}: language {given['language']!r} is not supported "
                         "by the built-in heuristic (see rewards/language_id.py)")
    if instruction_id == "keywords:letter_frequency" and len(given["letter"]) != 1:
        raise ValueError(f"instruction {instruction_id!r}: letter must be a single character")
    return given
