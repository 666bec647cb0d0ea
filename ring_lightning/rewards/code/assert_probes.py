"""Assert-style code tests, rewritten so the *trainer* (not the sandboxed program) judges each assert.

Every ``assert`` statement of a test file becomes a call ``__rl_probe__(id, operand, ...)`` that the
sandbox harness (`code_harness.py`) answers by sending the operands, serialised with an exact
built-in-types-only encoding, to the trainer; `judge_event` then evaluates the assertion here:

* ``assert A <op> B`` with one comparison operator (``== != < <= > >= in not in``, and ``is`` /
  ``is not`` against None / True / False): both operands are sent and compared here. When one side
  is a literal (``assert f(3) == [1, 2]``: the common case), that literal is *removed* from the code
  sent into the sandbox and kept here, so a program cannot learn the expected value and cannot fake
  it, even with full control of its own process.
* ``assert math.isclose(A, B[, rel_tol=..., abs_tol=...])`` (literal tolerances): like ``==``, with
  `math.isclose` evaluated here.
* any other ``assert X``: X is evaluated in the sandbox and sent; ``bool`` of the decoded value
  decides.

Values of other types (user classes, subclasses of built-ins, numpy scalars) cannot be sent: that
assertion fails. So an object whose ``__eq__`` always returns True earns nothing. Limits: a
program controls its own process, so for operands that are *not* literals (both sides computed in
the sandbox) a determined program could find the harness's key in its own memory and send made-up
values; it never holds the result channel or its token (`harness_assert.py`), so records it writes
itself fail the run. Literal-side comparisons are not forgeable.

An assert that is not inside a loop, condition, ``try`` or ``match`` must be executed at least once
(`Probe.required`): a test function that is never called, or a program that exits before the tests
run, fails.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROBE_NAME = "__rl_probe__"
_OPS: dict[type, tuple[str, Callable[[Any, Any], bool]]] = {
    ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne), ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le), ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
    ast.In: ("in", lambda a, b: a in b), ast.NotIn: ("not in", lambda a, b: a not in b),
    ast.Is: ("is", operator.is_), ast.IsNot: ("is not", operator.is_not),
}
_OP_BY_NAME = {name: fn for name, fn in _OPS.values()}
_CONDITIONAL = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try, ast.Match, ast.ExceptHandler)
_MISSING = object()


class AssertTestError(ValueError):
    """The assert-test code cannot be used (syntax error, no assert statement)."""


@dataclass(frozen=True)
class Probe:
    """One rewritten assert statement.

    Attributes:
        id: index of the probe (its first argument in the rewritten code).
        kind: "cmp" (one comparison), "isclose" (math.isclose) or "truth" (any other expression).
        op: the comparison operator name for "cmp".
        hidden: {side: value} for literal operands kept out of the sandbox (side 0 = left).
        kwargs: literal keyword arguments of math.isclose.
        required: must run at least once (not nested in a loop, condition, try or match).
        text: the original assert, for logs.
    """

    id: int
    kind: str
    op: str | None
    hidden: dict[int, Any] = field(default_factory=dict)
    kwargs: dict[str, Any] = field(default_factory=dict)
    required: bool = True
    text: str = ""


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING


def _is_isclose(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or len(node.args) != 2:
        return False
    f = node.func
    named = (isinstance(f, ast.Attribute) and f.attr == "isclose" and isinstance(f.value, ast.Name)
             and f.value.id == "math") or (isinstance(f, ast.Name) and f.id == "isclose")
    return named and all(k.arg in ("rel_tol", "abs_tol") and _literal(k.value) is not _MISSING for k in node.keywords)


class _Rewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.probes: list[Probe] = []
        self.depth_conditional = 0

    def generic_visit(self, node: ast.AST) -> ast.AST:
        conditional = isinstance(node, _CONDITIONAL)
        self.depth_conditional += conditional
        try:
            return super().generic_visit(node)
        finally:
            self.depth_conditional -= conditional

    def _probe(self, kind: str, op: str | None, operands: list[ast.expr], hidden: dict[int, Any],
               kwargs: dict[str, Any], node: ast.Assert) -> ast.stmt:
        pid = len(self.probes)
        self.probes.append(Probe(id=pid, kind=kind, op=op, hidden=hidden, kwargs=kwargs,
                                 required=self.depth_conditional == 0, text=ast.unparse(node)[:300]))
        args = [ast.Constant(pid)] + [e for i, e in enumerate(operands) if i not in hidden]
        call = ast.Call(func=ast.Name(PROBE_NAME, ast.Load()), args=args, keywords=[])
        return ast.copy_location(ast.Expr(call), node)

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS:
            op = _OPS[type(test.ops[0])][0]
            operands = [test.left, test.comparators[0]]
            lits = [_literal(e) for e in operands]
            if op in ("is", "is not") and not any(v is None or isinstance(v, bool) for v in lits
                                                  if v is not _MISSING):
                return self._probe("truth", None, [test], {}, {}, node)
            hidden = {i: v for i, v in enumerate(lits) if v is not _MISSING}
            return self._probe("cmp", op, operands, hidden, {}, node)
        if _is_isclose(test):
            operands = list(test.args)
            hidden = {i: v for i, v in enumerate(_literal(e) for e in operands) if v is not _MISSING}
            kwargs = {k.arg: _literal(k.value) for k in test.keywords}
            return self._probe("isclose", None, operands, hidden, kwargs, node)
        return self._probe("truth", None, [test], {}, {}, node)


def compile_assert_tests(code: str) -> tuple[str, list[Probe]]:
    """Rewrite `code`'s assert statements into probes; returns (code for the sandbox, probes)."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise AssertTestError(f"assert tests do not parse: {e}") from None
    rw = _Rewriter()
    tree = ast.fix_missing_locations(rw.visit(tree))
    if not rw.probes:
        raise AssertTestError("assert tests contain no assert statement")
    return ast.unparse(tree), rw.probes


def decode_value(enc: Any, depth: int = 0) -> Any:
    """Inverse of `code_harness.encode_value`; raises ValueError on anything malformed."""
    if depth > 120 or not isinstance(enc, list) or not enc or not isinstance(enc[0], str):
        raise ValueError("malformed encoded value")
    tag = enc[0]
    if tag == "N":
        return None
    if tag == "b":
        return bool(enc[1])
    if tag == "i":
        return int(enc[1], 16)
    if tag == "f":
        return float.fromhex(enc[1])
    if tag == "c":
        return complex(float.fromhex(enc[1]), float.fromhex(enc[2]))
    if tag == "s":
        if not isinstance(enc[1], str):
            raise ValueError("malformed string")
        return enc[1]
    if tag == "y":
        return bytes.fromhex(enc[1])
    if tag in ("l", "t", "S", "F"):
        items = [decode_value(v, depth + 1) for v in enc[1]]
        return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
    if tag == "d":
        return {decode_value(k, depth + 1): decode_value(v, depth + 1) for k, v in enc[1]}
    raise ValueError(f"unknown value tag {tag!r}")


def judge_event(probe: Probe, values: list[Any]) -> tuple[bool, str]:
    """Evaluate one executed assert from its encoded operands: (passed, reason when not)."""
    try:
        sent = iter([decode_value(v) for v in values])
        n = 1 if probe.kind == "truth" else 2
        operands = [probe.hidden[i] if i in probe.hidden else next(sent) for i in range(n)]
        if next(sent, _MISSING) is not _MISSING:
            return False, "unexpected extra operand"
        if probe.kind == "truth":
            ok = bool(operands[0])
        elif probe.kind == "isclose":
            ok = math.isclose(*operands, **probe.kwargs)
        else:
            ok = bool(_OP_BY_NAME[probe.op](operands[0], operands[1]))
    except StopIteration:
        return False, "missing operand"
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        return False, f"cannot evaluate: {type(e).__name__}: {str(e)[:200]}"
    return (True, "") if ok else (False, f"failed: {probe.text[:200]}")
