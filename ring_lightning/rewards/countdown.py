"""Countdown answers, scored by parsing the arithmetic expression with `ast` (never `eval`).

reasoning-gym's own Countdown scorer hands the model's string to sympy's ``parse_expr``, which
evaluates Python code; a policy could put anything there. Here the expression may contain only
integer literals, ``+ - * /``, unary minus and parentheses; it is evaluated exactly with
`fractions.Fraction`. The rule is reasoning-gym's: the numbers used must be exactly the given ones
(``use_all=True``, each once) — or, for the classic game / `data/synthetic/problems.py`, any sub-multiset
(``use_all=False``: each number at most once). ``division="exact"`` (the classic game) rejects
any division with a remainder, intermediate ones included; "real" allows rational intermediates.
"""

from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction

MAX_EXPRESSION_CHARS = 512
MAX_LITERAL_DIGITS = 12
_LATEX = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "÷": "/", "−": "-", "\\left": "", "\\right": "",
          "{": "(", "}": ")"}


class CountdownError(ValueError):
    """The answer is not a valid Countdown expression; the message says why."""


def normalize_expression(text: str) -> str:
    """Strip formatting the model may add: ``$…$``, LaTeX operators, a trailing ``= target``."""
    s = text.strip().strip("$").strip()
    for k, v in _LATEX.items():
        s = s.replace(k, v)
    if "=" in s:
        s = s.split("=", 1)[0]
    return s.strip()


def evaluate_expression(expr: str, exact_division: bool = False) -> tuple[Fraction, list[int]]:
    """(exact value, integer literals used) of an arithmetic expression; raises CountdownError.

    With `exact_division` every division must leave no remainder (the classic game's rule)."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise CountdownError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise CountdownError(f"not an arithmetic expression: {type(e).__name__}") from None
    used: list[int] = []

    def ev(node: ast.AST, depth: int = 0) -> Fraction:
        if depth > 100:
            raise CountdownError("expression nested too deeply")
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if len(str(node.value)) > MAX_LITERAL_DIGITS:
                raise CountdownError("number literal too long")
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand, depth + 1)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left, depth + 1), ev(node.right, depth + 1)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if b == 0:
                raise CountdownError("division by zero")
            if exact_division and (a / b).denominator != 1:
                raise CountdownError(f"{a} / {b} is not a whole number (division must be exact)")
            return a / b
        raise CountdownError(f"only integers, + - * / and parentheses are allowed, found {type(node).__name__}")

    value = ev(tree.body)
    return value, used


DIVISION = ("exact", "real")
NUMBERS_RULES = ("exactly_once", "at_most_once")


def score_countdown(answer: str, numbers: list[int], target: int, use_all: bool,
                    division: str = "real") -> tuple[bool, str]:
    """(correct, reason): the expression reaches `target` using the allowed numbers (`use_all`:
    each exactly once, else each at most once); `division` "exact" forbids remainders."""
    if division not in DIVISION:
        raise ValueError(f"countdown division must be one of {DIVISION}, got {division!r}")
    try:
        value, used = evaluate_expression(normalize_expression(answer), exact_division=division == "exact")
    except CountdownError as e:
        return False, str(e)
    have, need = Counter(used), Counter(int(n) for n in numbers)
    if use_all and have != need:
        return False, f"must use exactly the numbers {sorted(need.elements())}, used {sorted(used)}"
    if not use_all and have - need:
        return False, f"used numbers not available: {sorted((have - need).elements())}"
    if value != Fraction(target):
        return False, f"evaluates to {value}, not {target}"
    return True, ""
