"""Answer normalisation before math-verify, and the structural checks of a gold answer.

math-verify (the parser `MathReward` wraps) misreads several common answer forms; each rule here
rewrites one of them into a form it parses correctly, for gold and prediction alike:

* repeating decimals ``0.\\overline{3}``, ``0.1\\overline{6}``, ``0.(3)`` -> the exact fraction;
* the Unicode degree sign ``30°`` / ``\\degree`` -> ``30^\\circ`` (which math-verify drops);
* plain e-notation ``1.5e3``, ``2E-4`` -> ``1.5\\times10^{3}`` (math-verify reads Euler's e);
* thousands separators ``1\\,000``, ``1\\ 000``, ``1{,}000``, thin-space characters -> ``1000``;
* formatting wrappers ``\\textbf{…}``, ``\\mathbf{…}``, ``\\boldsymbol{…}`` -> their content, and a
  multiple-choice answer ``(B) 5`` / ``B. 5`` split into letter and value (`split_choice`);
* an interval written as an inequality, ``2 < x \\le 5`` / ``x \\geq 3`` -> ``(2, 5]`` / ``[3, \\infty)``.

`gold_problem` says why a gold answer is not a gradable answer (unbalanced braces or
environments, prose), or None. No model text is ever evaluated: everything is string rewriting.
"""

from __future__ import annotations

import re
from fractions import Fraction

_WRAPPERS = ("textbf", "mathbf", "boldsymbol", "bm", "mathrm", "textrm", "emph", "underline")
_SEP = r"(?:\\,|\\ |\\;|\\:|\\!|\{,\}|[\u2009\u202f\u00a0])"
_LT = {"<": False, r"\lt": False, r"\le": True, r"\leq": True, r"\leqslant": True, "≤": True, "<=": True}
_GT = {">": False, r"\gt": False, r"\ge": True, r"\geq": True, r"\geqslant": True, "≥": True, ">=": True}
_NUM = r"-?(?:\\infty|\d+(?:\.\d+)?|\\frac\{[^{}]*\}\{[^{}]*\}|\\sqrt\{[^{}]*\}|[a-z0-9.\\{}^/]+?)"
_CHOICE = re.compile(r"^\(\s*([A-Ea-e])\s*\)\s*[.:]?\s*(.*)$|^([A-E])\s*[.:)]\s*(.+)$", re.S)
_LETTER = re.compile(r"^\(\s*([A-Ea-e])\s*\)$|^([A-E])$")


def unwrap(s: str, names: tuple[str, ...] = _WRAPPERS) -> str:
    """Replace ``\\name{content}`` by ``content`` for the formatting macros `names` (nesting kept)."""
    pat = re.compile(r"\\(" + "|".join(names) + r")\s*\{")
    while True:
        m = pat.search(s)
        if not m:
            return s
        depth, i = 1, m.end()
        while i < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[i], 0) if s[i - 1] != "\\" else 0
            i += 1
        if depth:
            return s  # unbalanced: leave it for `gold_problem` / the parser
        s = s[:m.start()] + s[m.end():i - 1] + s[i:]


def _repeating(m: re.Match) -> str:
    whole, fixed, rep = m.group(1) or "0", m.group(2) or "", m.group(3)
    base = Fraction(int(whole + fixed), 10 ** len(fixed))
    value = base + Fraction(int(rep), 10 ** len(fixed) * (10 ** len(rep) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _sci(m: re.Match) -> str:
    return f"{m.group(1)}\\times10^{{{int(m.group(2))}}}"


def _interval(s: str) -> str:
    """``a < x < b`` / ``x >= a`` (any one variable letter) -> interval notation; else `s`."""
    ops = "|".join(re.escape(k) for k in sorted({**_LT, **_GT}, key=len, reverse=True))
    body = re.sub(r"\s+", " ", s.strip())
    m = re.fullmatch(rf"(?P<a>{_NUM}) ?(?P<o1>{ops}) ?(?P<v>[a-zA-Z]) ?(?P<o2>{ops}) ?(?P<b>{_NUM})", body)
    if m and m.group("v") not in (m.group("a"), m.group("b")):
        o1, o2, a, b = m.group("o1"), m.group("o2"), m.group("a"), m.group("b")
        if o1 in _GT and o2 in _GT:
            (o1, a), (o2, b) = (o2, b), (o1, a)
            o1, o2 = _flip(o1), _flip(o2)
        if o1 in _LT and o2 in _LT:
            return f"{'[' if _LT[o1] else '('}{a}, {b}{']' if _LT[o2] else ')'}"
        return s
    m = re.fullmatch(rf"(?P<v>[a-zA-Z]) ?(?P<o>{ops}) ?(?P<a>{_NUM})", body)
    if m is None:
        m2 = re.fullmatch(rf"(?P<a>{_NUM}) ?(?P<o>{ops}) ?(?P<v>[a-zA-Z])", body)
        if m2 is None or m2.group("a") == m2.group("v"):
            return s
        o, a = _flip(m2.group("o")), m2.group("a")
    else:
        o, a = m.group("o"), m.group("a")
    if o in _LT:
        return f"(-\\infty, {a}{']' if _LT[o] else ')'}"
    return f"{'[' if _GT[o] else '('}{a}, \\infty)"


def _flip(op: str) -> str:
    table = {"<": ">", r"\lt": r"\gt", r"\le": r"\ge", r"\leq": r"\geq", r"\leqslant": r"\geqslant",
             "≤": "≥", "<=": ">="}
    table.update({v: k for k, v in table.items()})
    return table[op]


def normalize_answer(s: str) -> str:
    """The answer rewritten as described in the module docstring (idempotent)."""
    s = unwrap(s.strip())
    s = re.sub(r"^\\in\s*|^[a-zA-Z]\s*\\in\s*", "", s)
    s = s.replace("°", "^\\circ").replace("\\degree", "^\\circ").replace("^{\\circ}", "^\\circ")
    s = re.sub(r"(\d)\s*\^\s*\\circ\s*\\?[CF]\b", r"\1", s)  # temperatures: 30°C -> 30
    for _ in range(6):  # 1\,000\,000: each pass removes one separator per group
        s2 = re.sub(rf"(\d){_SEP}\s*(\d{{3}})(?!\d)", r"\1\2", s)
        if s2 == s:
            break
        s = s2
    s = re.sub(r"(\d*)\.(\d*)\\(?:overline|bar|dot)\s*\{(\d+)\}", _repeating, s)
    s = re.sub(r"(\d*)\.(\d*)\\(?:overline|bar|dot)\s*(\d)", _repeating, s)
    s = re.sub(r"(?<![\w.])(\d*)\.(\d*)\((\d+)\)", _repeating, s)
    s = re.sub(r"(?<![A-Za-z\\\d.])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d+)(?![\d.])", _sci, s)
    return _interval(s)


def split_choice(s: str) -> tuple[str, str] | None:
    """``(B) 5`` / ``B. 5`` / ``(b)`` -> (letter, value or ""); None when `s` is not a choice."""
    s = unwrap(s.strip())
    m = _LETTER.match(s)
    if m:
        return (m.group(1) or m.group(2)).upper(), ""
    m = _CHOICE.match(s)
    if m is None:
        return None
    letter, value = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return letter.upper(), value.strip()


def decimal_places(s: str) -> int | None:
    """The most decimal places of a decimal literal in `s` (None: no decimal literal, an exact answer)."""
    places = [len(m.group(1)) for m in re.finditer(r"\d\.(\d+)", s)]
    return max(places) if places else None


def exact_decimals(s: str) -> str:
    """Every decimal literal ``0.25`` written as the exact fraction ``\\frac{25}{100}``."""
    return re.sub(r"(\d+)\.(\d+)", lambda m: f"\\frac{{{int(m.group(1) + m.group(2))}}}{{{10 ** len(m.group(2))}}}", s)


def gold_problem(gold: str) -> str | None:
    """Why `gold` cannot be a gradable answer (structure only), or None."""
    depth = 0
    for i, ch in enumerate(gold):
        if ch in "{}" and (i == 0 or gold[i - 1] != "\\"):
            depth += 1 if ch == "{" else -1
            if depth < 0:
                return "unbalanced braces (a '}' without its '{')"
    if depth:
        return f"unbalanced braces ({depth} '{{' never closed)"
    begins = re.findall(r"\\begin\{([^}]*)\}", gold)
    ends = re.findall(r"\\end\{([^}]*)\}", gold)
    if sorted(begins) != sorted(ends):
        return f"unterminated environment (\\begin {begins} vs \\end {ends})"
    if len(re.findall(r"\\left\b", gold)) != len(re.findall(r"\\right\b", gold)):
        return "unbalanced \\left / \\right"
    text = re.sub(r"\\[a-zA-Z]+", " ", gold)
    if len(re.findall(r"[A-Za-z]{2,}", text)) >= 3:
        return "prose, not an answer (three or more words)"
    return None
