"""MathReward past math-verify's parse gaps: normalised forms, exact vs approximate golds, bad golds."""

from __future__ import annotations

import re
import threading
import time

import pytest
from rewards_testlib import make_row

from ring_lightning.rewards.math import MathReward
from ring_lightning.rewards.math_normalize import gold_problem, normalize_answer, split_choice


@pytest.fixture(scope="module")
def reward():
    r = MathReward(timeout_s=2.0, num_workers=2)
    yield r
    r.close()


def score(reward, gold, boxed):
    return reward([make_row("math", answer=gold)], [f"so \\boxed{{{boxed}}}"])[0]


EQUAL = [
    ("\\frac{1}{3}", "0.\\overline{3}"), ("\\frac13", "0.(3)"), ("\\frac{1}{6}", "0.1\\overline{6}"),
    ("\\frac{1}{6}", "0.1(6)"), ("\\frac{4}{3}", "1.\\overline{3}"), ("0.\\overline{3}", "\\frac{1}{3}"),
    ("30", "30°"), ("30^\\circ", "30"), ("30^{\\circ}", "30°"), ("45", "45\\degree"),
    ("1500", "1.5e3"), ("0.0002", "2E-4"), ("1.5e3", "1500"), ("-3000", "-3e3"),
    ("1000", "1\\,000"), ("1000000", "1\\,000\\,000"), ("1000", "1{,}000"), ("1000", "1\\ 000"),
    ("1000", "1\u2009000"), ("1000", "1,000"),
    ("B", "\\textbf{(B)} 5"), ("B", "(B)"), ("B", "\\textbf{B}"), ("5", "\\textbf{(B)} 5"), ("C", "C. 7"),
    ("(2,5)", "2<x<5"), ("[3,\\infty)", "x\\ge 3"), ("(-\\infty, 2)", "x < 2"), ("(2, 5]", "2 < x \\leq 5"),
    ("[3,\\infty)", "3 \\le x"), ("(2,5)", "5 > x > 2"),
    ("\\frac{1}{2}", "0.5"), ("\\frac12", "\\dfrac{1}{2}"), ("\\frac{1}{2}", "\\tfrac12"), ("50\\%", "50"),
    ("50\\%", "\\frac{1}{2}"), ("10", "10\\text{ cm}"), ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\{1,2\\}", "\\{2,1\\}"), ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1&2\\end{pmatrix}"),
    ("(\\frac{1}{2}, 3)", "(0.5, 3)"), ("3.14", "3.14159"), ("3.14", "3.1416"), ("2.5", "\\frac{5}{2}"),
    ("12345678901234567890", "12345678901234567890"), ("$\\frac{3}{4}$", "\\frac34"),
]
NOT_EQUAL = [
    ("\\frac{1}{3}", "0.3333333"), ("\\frac{1}{3}", "0.33"), ("\\frac{1}{3}", "0.\\overline{33}4"),
    ("\\frac{1}{3}", "0.(6)"), ("\\sqrt{2}", "1.41421356"), ("\\pi", "3.14159265358979"),
    ("30", "31°"), ("1500", "1.5e4"), ("1500", "1.5"), ("1000", "1\\,001"), ("1000", "10\\,00"),
    ("B", "\\textbf{(C)} 5"), ("B", "(C)"), ("6", "\\textbf{(B)} 5"),
    ("(2,5)", "2 \\le x < 5"), ("[3,\\infty)", "x > 3"), ("(-\\infty, 2)", "x > 2"),
    ("3.14", "3.15"), ("3.14", "3.1"), ("2.5", "2.6"), ("\\frac{1}{2}", "0.50001"),
    ("12345678901234567890", "12345678901234567891"), ("(1,2)", "(2,1)"), ("\\{1,2\\}", "\\{1,3\\}"),
    ("42", "42 or 43"), ("42", "x"),
]


@pytest.mark.parametrize("gold,boxed", EQUAL)
def test_equal_forms_score_1(reward, gold, boxed):
    res = score(reward, gold, boxed)
    assert res.reward == 1.0 and res.valid, (gold, boxed, res.info)


@pytest.mark.parametrize("gold,boxed", NOT_EQUAL)
def test_near_misses_score_0(reward, gold, boxed):
    res = score(reward, gold, boxed)
    assert res.reward == 0.0 and res.valid, (gold, boxed, res.info)


def test_normalize_rewrites():
    assert normalize_answer("0.(3)") == "\\frac{1}{3}"
    assert normalize_answer("1.5e3") == "1.5\\times10^{3}"
    assert normalize_answer("1\\,000\\,000") == "1000000"
    assert normalize_answer("2 < x \\le 5") == "(2, 5]"
    assert normalize_answer("x \\geq -1") == "[-1, \\infty)"
    assert normalize_answer("e^{2}") == "e^{2}"  # Euler's e untouched
    assert normalize_answer(normalize_answer("0.1\\overline{6}")) == "\\frac{1}{6}"
    assert split_choice("\\textbf{(B)} 5") == ("B", "5") and split_choice("(d)") == ("D", "")
    assert split_choice("5") is None and split_choice("e") is None


def test_decimal_tolerance_knob():
    strict = MathReward(timeout_s=2.0, num_workers=1, decimal_tolerance=0.0)
    try:
        assert score(strict, "3.14", "3.14159").reward == 0.0
        assert score(strict, "3.14", "3.140").reward == 1.0
    finally:
        strict.close()
    with pytest.raises(ValueError, match="decimal_tolerance"):
        MathReward(decimal_tolerance=-1)


@pytest.mark.parametrize("gold,why", [
    ("\\frac{1}{2", "unbalanced braces"), ("1}", "unbalanced braces"), ("the answer is five apples", "prose"),
    ("\\begin{pmatrix}1&2", "unterminated environment"), ("\\left(1, 2", "\\left"), ("x+", "does not parse"),
])
def test_unparseable_golds_fail_validate_and_are_counted(reward, gold, why):
    with pytest.raises(ValueError, match="train.jsonl row 7: gold answer .*" + re.escape(why[:8])):
        reward.validate(make_row("math", answer=gold), "train.jsonl row 7")
    res = score(reward, gold, "1")
    assert res.valid is False and res.info["bad_gold"] is True and why[:8] in res.info["error"]


@pytest.mark.parametrize("gold", ["\\frac{3}{4}", "\\text{Monday}", "x^2 + 1", "no solution", "(1, 2]"])
def test_good_golds_pass_validate(reward, gold):
    assert gold_problem(gold) is None
    reward.validate(make_row("math", answer=gold), "train.jsonl row 1")


def test_timeout_returns_within_limit_plus_1s_under_load(reward):
    score(reward, "2", "2")  # gold checked, workers warm
    stop = threading.Event()

    def burn():
        while not stop.is_set():
            sum(i * i for i in range(10000))

    hogs = [threading.Thread(target=burn, daemon=True) for _ in range(2)]
    for h in hogs:
        h.start()
    try:
        t0 = time.monotonic()
        res = score(reward, "2", "2^{2^{2^{2^{2^{2^{2}}}}}}")
        took = time.monotonic() - t0
    finally:
        stop.set()
    assert res.reward == 0.0 and res.info["timeout"] is True
    assert took < reward.timeout_s + 1.0, took
    assert score(reward, "2", "2").reward == 1.0  # the replacement worker took over
