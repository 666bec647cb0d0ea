"""Cleaning stage: each Ring-lite drop rule, whitespace normalisation, idempotence, config errors."""

from __future__ import annotations

import pytest

from ring_lightning.prepare.clean import Cleaner
from ring_lightning.prepare.rows import to_internal


def row(prompt: str, answer: str | None = "7", domain: str = "math", **extra) -> dict:
    raw = {"id": "r", "domain": domain, "prompt": prompt, **extra}
    if answer is not None:
        raw["answer"] = answer
    return to_internal(raw, "test.jsonl row 0", source=None, default_source="test")


def reason(cleaner: Cleaner, r: dict) -> str | None:
    removal = cleaner(r)
    return None if removal is None else removal.reason


@pytest.mark.parametrize("prompt,answer,expected", [
    ("What is 3 + 4?", "7", None),
    ("Compute 7\u0007 times 8.", "56", "invalid_characters"),
    ("Compute 7 times 8.\ufffd", "56", "invalid_characters"),
    ("Find BC in the triangle. ![tri](a.png)", "13", "image"),
    ("See <img src='x'> and find the area.", "3", "image"),
    ("[asy] draw((0,0)--(1,1)); [/asy] Find the slope.", "1", "image"),
    ("As shown in the figure, find the radius of the circle.", "2", "image"),
    ("Let f(x) = x+1.\n(1) Find f(1).\n(2) Find f(2).", "2, 3", "multiple_subquestions"),
    ("Given the sequence: (a) compute the sum; (b) compute the product.", "1", "multiple_subquestions"),
    ("Consider ① the sum and ② the product of the roots.", "1", "multiple_subquestions"),
    ("Which is prime?\n(A) 4\n(B) 7", "B", "multiple_choice"),
    ("Which is prime?\nA. 4\nB. 7\nC. 8", "7", "multiple_choice"),
    ("Which of the following numbers is prime: 4, 7, 8?", "7", "multiple_choice"),
    ("Pick the prime among 4, 7 and 8.", "(B)", "multiple_choice"),
    ("True or false: 7 is prime.", "7", "true_false_or_yes_no"),
    ("Is 91 prime?", "no", "true_false_or_yes_no"),
    ("Is 97 prime?", "\\text{Yes}", "true_false_or_yes_no"),
    ("Prove that the square root of 2 is irrational.", "proof", "no_valid_answer"),
    ("What is the value?", "N/A", "no_valid_answer"),
    ("What is $P(A) + P(B)$ if $P(A)=0.2$ and $P(B)=0.3$?", "0.5", None),  # set notation, not options
    ("Compute $f(1) + f(2)$ where $f(x) = x^2$.", "5", None),  # function values, not sub-questions
])
def test_rules(prompt, answer, expected):
    assert reason(Cleaner(), row(prompt, answer)) == expected


def test_objective_rules_apply_only_to_objective_domains():
    mc = "Which of the following particles is neutral?\n(A) proton\n(B) neutron"
    assert reason(Cleaner(), row(mc, "B", domain="science")) is None
    assert reason(Cleaner(objective_domains=["math", "science"]), row(mc, "B", domain="science")) == "multiple_choice"


def test_knobs_change_the_rules():
    two_parts = "Let f(x) = x+1.\n(1) Find f(1).\n(2) Find f(2)."
    assert reason(Cleaner(max_subquestions=2), row(two_parts, "2, 3")) is None
    assert reason(Cleaner(image_patterns=[]), row("[asy] draw((0,0)--(1,1)); [/asy] Find the slope.", "1")) is None
    assert reason(Cleaner(invalid_answers=["42"]), row("What is 6 times 7?", "42")) == "no_valid_answer"


def test_removal_detail_names_the_evidence():
    removal = Cleaner()(row("Which is prime?\n(A) 4\n(B) 7\n(C) 9", "B"))
    assert removal.detail == {"labels": ["A", "B", "C"]}
    removal = Cleaner()(row("Compute 7\u0007 times 8.", "56"))
    assert removal.detail["char"] == "U+0007"


def test_whitespace_normalisation_and_idempotence():
    cleaner = Cleaner()
    r = row("  What is the   sum\u00a0of 2 and 3?  \r\n\n\n\nAnswer  briefly. \t", " 5 ")
    assert cleaner(r) is None
    assert r["messages"][0]["content"] == "What is the sum of 2 and 3?\n\nAnswer briefly."
    assert r["answer"] == "5"
    again = dict(r)
    assert cleaner(again) is None
    assert again == r


def test_code_keeps_inner_spacing_and_indentation():
    prompt = "Print this grid:\n    a  b\n    c  d   \n"
    r = row(prompt, None, domain="code", tests={"type": "stdio", "cases": [{"input": "", "output": "x"}]})
    assert Cleaner()(r) is None
    assert r["messages"][0]["content"] == "Print this grid:\n    a  b\n    c  d"


def test_whitespace_only_prompt_is_dropped():
    r = to_internal({"id": "e", "domain": "general", "messages": [{"role": "user", "content": " \n\t "}]},
                    "t row 0", source=None, default_source="t")
    assert Cleaner()(r).reason == "empty_prompt"


def test_bad_regex_is_a_clear_config_error():
    with pytest.raises(ValueError, match=r"clean.image_patterns: invalid regex '\(unclosed'"):
        Cleaner(image_patterns=["(unclosed"])
    with pytest.raises(ValueError, match="clean.subquestion_patterns.*capture group"):
        Cleaner(subquestion_patterns=[r"\(\d\)"])


def test_literal_precheck_never_changes_a_result():
    from ring_lightning.prepare.clean import (DEFAULT_BINARY_QUESTION_PATTERNS, DEFAULT_CHOICE_LABEL_PATTERNS,
                                                DEFAULT_IMAGE_PATTERNS, DEFAULT_MULTIPLE_CHOICE_PHRASES,
                                                DEFAULT_SUBQUESTION_PATTERNS, _Rule, required_literals)

    assert required_literals(r"(?i)\b(?:see|refer to) the (?:figure|diagram)\b") == ("figure", "diagram")
    assert required_literals(r"(?i)\btrue or false\b") == ("true or false",)
    assert required_literals(r"\d+") is None
    texts = ["SHOWN IN THE FIGURE below", "Shown in the Figure", "ſhown in the figure",  # long s folds to s
             "TRUE OR FALSE: x", "(A) 1\n(B) 2", "（A） 1 （B） 2", "A. one\nB. two", "Part (a): x\nPart (b): y",
             "Given. (1) f(1). (2) f(2).", "① x ② y", "![a](b.PNG)", "<IMG src=x>", "DATA:IMAGE/png",
             "plain text with no markers", "Yes Or No?", "is it false ?", "the diagram above", "[ASY]"]
    patterns = (DEFAULT_IMAGE_PATTERNS + DEFAULT_SUBQUESTION_PATTERNS + DEFAULT_CHOICE_LABEL_PATTERNS
                + DEFAULT_MULTIPLE_CHOICE_PHRASES + DEFAULT_BINARY_QUESTION_PATTERNS)
    for pattern in patterns:
        rule = _Rule(pattern, "test")
        for text in texts:
            assert bool(rule.search(text, text.casefold())) == bool(rule.pattern.search(text)), (pattern, text)


def test_a_logic_row_verified_from_its_meta_needs_no_answer():
    meta = {"task": "countdown", "numbers": [1, 2, 3], "target": 6}
    assert reason(Cleaner(), row("Make 6 from 1, 2, 3.", None, domain="logic", meta=meta)) is None
