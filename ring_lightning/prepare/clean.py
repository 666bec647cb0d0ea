"""Rule-based cleaning of RL prompts: whitespace normalisation and the Ring-lite drop rules.

Ring-lite (arXiv 2506.14731, RL data curation) cleans its reasoning-RL problems by dropping those
with invalid characters, with images, with several sub-questions, or without a valid answer, and
drops multiple-choice, true/false and yes/no math items (a policy guesses those right by chance,
which gives a noisy, hackable reward). The report names the rules but not their implementation, so
every rule here is a configurable regex / value list, with defaults chosen by us: docs/design.md#prepare-clean.
"""

from __future__ import annotations

import re
import unicodedata
from re import _constants as _c
from re import _parser
from typing import Any

from ring_lightning.prepare.rows import Removal, RowMarker, StageRunner, user_text

DEFAULT_IMAGE_PATTERNS = [
    r"!\[[^\]]*\]\([^)]*\)",
    r"(?i)<img\b",
    r"(?i)\b[\w\-/]+\.(?:png|jpe?g|gif|bmp|svg|webp|tiff?)\b",
    r"(?i)\bdata:image/",
    r"\[asy\]",
    r"(?i)\b(?:figure|diagram|picture|image)s?\s+(?:below|above)\b",
    r"(?i)\b(?:as )?shown in the (?:figure|diagram|picture|image)\b",
    r"(?i)\b(?:see|refer to) the (?:figure|diagram|picture|image)\b",
]
DEFAULT_SUBQUESTION_PATTERNS = [
    r"(?m)(?:^|(?<=[.?!:;。？！：；]))[ \t]*[(（][ \t]*"
    r"([1-9]|[a-h]|i{1,3}|iv|vi{0,3}|I{1,3}|IV|VI{0,3})[ \t]*[)）]",
    r"([①②③④⑤⑥⑦⑧⑨⑩])",
    r"(?im)^[ \t]*part[ \t]*\(?([a-h1-9])\)?[ \t]*[:.)]",
]
DEFAULT_CHOICE_LABEL_PATTERNS = [
    r"(?m)(?:^|(?<=\s))[(（]([A-E])[)）]",
    r"(?m)^[ \t]*([A-E])[.)：:][ \t]",
]
DEFAULT_MULTIPLE_CHOICE_PHRASES = [
    r"(?i)\b(?:which|what) of the following\b",
    r"(?i)\banswer choices\b",
    r"(?i)\bchoose the (?:correct|best) (?:answer|option)\b",
]
DEFAULT_BINARY_QUESTION_PATTERNS = [
    r"(?i)\btrue or false\b",
    r"(?i)\byes or no\b",
    r"(?i)\b(?:true|false)\s*[?？]\s*$",
]
DEFAULT_BINARY_ANSWERS = ["true", "false", "yes", "no", "t", "f", "correct", "incorrect",
                          "正确", "错误", "是", "否"]
DEFAULT_INVALID_ANSWERS = ["", "none", "n/a", "na", "null", "nan", "unknown", "-", "?", "see solution",
                           "see below", "see explanation", "proof", "omitted", "no answer", "无", "略"]
ANSWER_DOMAINS = ("math", "science")  # logic rows are verified from `meta` (rows.REQUIRED_FIELD)
_UNICODE_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_BLANK_LINES = re.compile(r"\n{3,}")
_ANSWER_WRAPPERS = re.compile(r"^\$+|\$+$|^\\boxed\{(.*)\}$|^\\text\{(.*)\}$")


class Cleaner:
    """The cleaning stage: normalise whitespace, then drop rows that break a rule.

    Args:
        enabled: run this stage.
        normalize_whitespace: CRLF -> LF, unicode spaces -> " ", zero-width characters removed,
            trailing spaces stripped per line, 3+ newlines -> 2, ends stripped; runs of inner spaces
            collapse to one except in `keep_spacing_domains` (leading indentation is always kept).
        keep_spacing_domains: domains whose inner spacing is meaningful (code examples, ASCII grids).
        invalid_char_pattern: regex; a row whose messages or answer match it is dropped.
        image_patterns: regexes; a row whose messages match any is dropped ("image").
        subquestion_patterns: regexes with one capture group (the label); labels are counted
            distinct over all patterns on the user turns.
        max_subquestions: a row with more distinct sub-question labels than this is dropped.
        objective_domains: domains where multiple-choice and true/false/yes-no items are dropped.
        choice_label_patterns: regexes with one capture group (an option letter).
        min_choice_labels: this many distinct option letters make a row multiple choice.
        multiple_choice_phrases: regexes that alone make a row multiple choice.
        choice_answer_pattern: regex; a gold answer matching it (a bare option letter) makes a row
            multiple choice.
        binary_question_patterns: regexes that make a row a true/false or yes/no item.
        binary_answers: gold answers (case-insensitive, `$`/`\\boxed{}`/`\\text{}` stripped) that
            make a row a true/false or yes/no item.
        invalid_answers: gold answers (same normalisation) that count as "no valid answer" for
            the answer domains (math, science; logic verifiers read `meta`).
    """

    name = "clean"

    def __init__(
        self,
        enabled: bool = True,
        normalize_whitespace: bool = True,
        keep_spacing_domains: list[str] = ["code"],  # noqa: B006 (jsonargparse needs literal defaults)
        invalid_char_pattern: str = r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\ufffd\ue000-\uf8ff]",
        image_patterns: list[str] = DEFAULT_IMAGE_PATTERNS,  # noqa: B006
        subquestion_patterns: list[str] = DEFAULT_SUBQUESTION_PATTERNS,  # noqa: B006
        max_subquestions: int = 1,
        objective_domains: list[str] = ["math"],  # noqa: B006
        choice_label_patterns: list[str] = DEFAULT_CHOICE_LABEL_PATTERNS,  # noqa: B006
        min_choice_labels: int = 2,
        multiple_choice_phrases: list[str] = DEFAULT_MULTIPLE_CHOICE_PHRASES,  # noqa: B006
        choice_answer_pattern: str = r"^\(?[A-Ea-e]\)?\.?$",
        binary_question_patterns: list[str] = DEFAULT_BINARY_QUESTION_PATTERNS,  # noqa: B006
        binary_answers: list[str] = DEFAULT_BINARY_ANSWERS,  # noqa: B006
        invalid_answers: list[str] = DEFAULT_INVALID_ANSWERS,  # noqa: B006
    ):
        self.enabled = enabled
        self.normalize_whitespace = normalize_whitespace
        self.keep_spacing_domains = set(keep_spacing_domains)
        self.invalid_char = _compile(invalid_char_pattern, "clean.invalid_char_pattern")
        self.image = [_Rule(p, "clean.image_patterns") for p in image_patterns]
        self.subquestion = [_Rule(p, "clean.subquestion_patterns", groups=1) for p in subquestion_patterns]
        self.max_subquestions = max_subquestions
        self.objective_domains = set(objective_domains)
        self.choice_labels = [_Rule(p, "clean.choice_label_patterns", groups=1) for p in choice_label_patterns]
        self.min_choice_labels = min_choice_labels
        self.mc_phrases = [_Rule(p, "clean.multiple_choice_phrases") for p in multiple_choice_phrases]
        self.choice_answer = _compile(choice_answer_pattern, "clean.choice_answer_pattern")
        self.binary_questions = [_Rule(p, "clean.binary_question_patterns") for p in binary_question_patterns]
        self.binary_answers = {a.strip().lower() for a in binary_answers}
        self.invalid_answers = {a.strip().lower() for a in invalid_answers}

    def apply(self, ds, runner: StageRunner):
        """Mark the rows this stage removes (parallel map)."""
        return runner.map(ds, RowMarker(self.name, self), desc=self.name)

    def report(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Nothing to release."""

    def normalize(self, text: str, keep_spacing: bool) -> str:
        """Whitespace normalisation (idempotent)."""
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _ZERO_WIDTH.sub("", _UNICODE_SPACES.sub(" ", text))
        lines = [line.rstrip() for line in text.split("\n")]
        if not keep_spacing:
            lines = [_INNER_SPACES.sub(" ", line) for line in lines]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()

    def __call__(self, row: dict[str, Any]) -> Removal | None:
        """Normalise `row` in place; return why it must be dropped, or None to keep it."""
        if self.normalize_whitespace:
            keep = row["domain"] in self.keep_spacing_domains
            row["messages"] = [{"role": m["role"], "content": self.normalize(m["content"], keep)}
                               for m in row["messages"]]
            if row["answer"] is not None:
                row["answer"] = row["answer"].strip()
        contents = "\n".join(m["content"] for m in row["messages"])
        question = user_text(row)
        if not question.strip():
            return Removal("empty_prompt", {})
        for text in (contents, row["answer"] or ""):
            hit = self.invalid_char.search(text)
            if hit:
                return Removal("invalid_characters", {"char": f"U+{ord(hit.group(0)[0]):04X}", "at": hit.start()})
        folded, q_folded = contents.casefold(), question.casefold()
        for rule in self.image:
            hit = rule.search(contents, folded)
            if hit:
                return Removal("image", {"match": hit.group(0)[:80], "pattern": rule.pattern.pattern})
        labels = sorted({m.group(1).lower() for rule in self.subquestion for m in rule.finditer(question, q_folded)})
        if len(labels) > self.max_subquestions:
            return Removal("multiple_subquestions", {"labels": labels})
        answer = _strip_answer(row["answer"]) if row["answer"] is not None else None
        if row["domain"] in ANSWER_DOMAINS and (answer is None or answer.lower() in self.invalid_answers):
            return Removal("no_valid_answer", {"answer": row["answer"]})
        if row["domain"] in self.objective_domains:
            found = self._objective_kind(question, q_folded, answer)
            if found is not None:
                return found
        return None

    def _objective_kind(self, question: str, folded: str, answer: str | None) -> Removal | None:
        letters = sorted({m.group(1).upper() for rule in self.choice_labels for m in rule.finditer(question, folded)})
        if len(letters) >= self.min_choice_labels:
            return Removal("multiple_choice", {"labels": letters})
        for rule in self.mc_phrases:
            hit = rule.search(question, folded)
            if hit:
                return Removal("multiple_choice", {"match": hit.group(0)})
        if answer is not None and self.choice_answer.search(answer):
            return Removal("multiple_choice", {"answer": answer})
        for rule in self.binary_questions:
            hit = rule.search(question, folded)
            if hit:
                return Removal("true_false_or_yes_no", {"match": hit.group(0)})
        if answer is not None and answer.lower() in self.binary_answers:
            return Removal("true_false_or_yes_no", {"answer": answer})
        return None


def _strip_answer(answer: str) -> str:
    """`$x$`, `\\boxed{x}`, `\\text{x}` -> `x` (repeatedly), stripped, NFKC."""
    prev = None
    answer = unicodedata.normalize("NFKC", answer).strip()
    while prev != answer:
        prev = answer
        m = _ANSWER_WRAPPERS.search(answer)
        if m and (m.group(1) is not None or m.group(2) is not None):
            answer = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        else:
            answer = answer.strip("$").strip()
    return answer


def _compile(pattern: str, key: str, groups: int = 0) -> re.Pattern:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{key}: invalid regex {pattern!r} ({e}); fix the pattern in the config") from None
    if groups and compiled.groups < groups:
        raise ValueError(f"{key}: regex {pattern!r} needs a capture group for the label, e.g. '\\(([a-d])\\)'")
    return compiled


class _Rule:
    """A compiled regex plus literals one of which any match must contain (a cheap pre-check)."""

    def __init__(self, pattern: str, key: str, groups: int = 0):
        self.pattern = _compile(pattern, key, groups)
        self.literals = required_literals(pattern)

    def may_match(self, folded: str) -> bool:
        return self.literals is None or any(lit in folded for lit in self.literals)

    def search(self, text: str, folded: str) -> re.Match | None:
        return self.pattern.search(text) if self.may_match(folded) else None

    def finditer(self, text: str, folded: str):
        return self.pattern.finditer(text) if self.may_match(folded) else ()


def required_literals(pattern: str) -> tuple[str, ...] | None:
    """Case-folded ASCII strings one of which every match of `pattern` contains; None if unknown.

    Found from the parsed regex: the most selective mandatory literal run, or a mandatory group /
    alternation whose every branch has one. Checking `lit in text.casefold()` first is a necessary
    condition for a match (case-insensitive patterns included), so skipping the regex when it fails
    never changes a result; it only saves the slow scan on most rows.
    """
    try:
        tree = _parser.parse(pattern)
    except Exception:  # noqa: BLE001 (the pattern compiled; an unusual parse just gets no pre-check)
        return None
    req = _required(list(tree))
    return req or None


def _foldable(code: int) -> bool:
    """ASCII, or a character without case (punctuation, CJK): casefold comparison is then exact."""
    char = chr(code)
    return code < 128 or char.lower() == char.upper()


def _selectivity(literals: tuple[str, ...]) -> int:
    """How telling a literal set is: its shortest member's length, spaces not counted."""
    return min(len(lit.strip()) for lit in literals) if literals else -1


def _required(items: list) -> tuple[str, ...] | None:
    best: tuple[str, ...] | None = None

    def better(a, b):
        if a is None or b is None:
            return a if b is None else b
        return a if _selectivity(a) >= _selectivity(b) else b

    run = ""
    for op, av in items:
        if op is _c.LITERAL and _foldable(av):
            run += chr(av).casefold()
            continue
        best, run = better(best, (run,) if run else None), ""
        if op is _c.IN and av and all(kind is _c.LITERAL and _foldable(code) for kind, code in av):
            best = better(best, tuple(chr(code).casefold() for _, code in av))
        elif op is _c.BRANCH:
            alts = [_required(list(alt)) for alt in av[1]]
            if all(a is not None for a in alts):
                best = better(best, tuple(x for a in alts for x in a))
        elif op is _c.SUBPATTERN:
            best = better(best, _required(list(av[-1])))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT) and av[0] >= 1:
            best = better(best, _required(list(av[2])))
    return better(best, (run,) if run else None)
