"""Sudoku checked by its rules (every row, column and box holds 1..n once; every given kept), fast.

A puzzle is compiled once (cached by its cells, checked by `check_puzzle`'s rules on the way): its
size, its givens as integer masks (made on the first answer that keeps the rules), and a memo of
verdicts per exact answer text (a prompt's samples often repeat one answer). The answer's cells
become one byte each (value - 1); adding a per-cell offset (unit * n) gives a byte code per (unit,
value) pair, and a unit kind holds every value once exactly when its n*n codes cover 0..n*n-1, which
one `bytes.translate` deletion tests (sizes up to 16; 25 is checked unit by unit). Accepted layouts:
n*n numbers in row order (white space, commas or ``|`` between them, rule lines ignored, or
``[[..], ..]``) and n*n digits in a row; n*n digits and ASCII white space alone (the usual answer)
skip the tokenizing. Nothing is evaluated.
"""

from __future__ import annotations

import functools
import math
import re
from itertools import chain

from ring_lightning.rewards.logic_rules import parse_grid

MAX_SIZE = 25  # the largest n
_KINDS = ("row", "column", "box")
_MEMO_ANSWERS = 16  # verdicts kept per puzzle: the K samples of a prompt often repeat an answer
_MAX_PUZZLES = 4096  # compiled puzzles kept (the cache is emptied when full)
_GIVEN_MASK = bytes([0] + [0xFF] * 255)  # a given -> 0xFF, an empty cell -> 0
_MINUS_ONE = bytes([0]) + bytes(range(255))  # v -> v - 1 (an empty cell stays 0: masked out)
_ASCII_SPACE = b" \t\n\r\x0b\x0c"
_NAMES = {str(v): v for v in range(1, MAX_SIZE + 1)}  # a cell token "1".."25" -> its value


def check_puzzle(puzzle: object, where: str) -> str | None:
    """Why `puzzle` is not an n x n Sudoku (n a square; 0 = empty), or None."""
    if not (isinstance(puzzle, list) and puzzle and all(isinstance(r, list) for r in puzzle)):
        return f"{where}: meta.puzzle must be a list of rows of integers (0 = empty)"
    n = len(puzzle)
    box = math.isqrt(n)
    if box * box != n or n > MAX_SIZE or any(len(r) != n for r in puzzle):
        return f"{where}: meta.puzzle must be n x n with n a square up to {MAX_SIZE} (4, 9, 16, 25), got {n} rows"
    if not all(type(v) is int and 0 <= v <= n for r in puzzle for v in r):
        return f"{where}: meta.puzzle cells must be integers 0..{n}"
    return None


@functools.lru_cache(maxsize=8)
def _tables(n: int) -> tuple:
    """The 3n units' cell indices (rows, columns, boxes); the code groups (copies of the cells, the
    offsets as one integer, the codes a valid grid covers), None above n = 16; the digit table
    ('1'..'n' -> 0..n-1, anything else -> 255), None above n = 9; the cell values 0..n."""
    box, nn = math.isqrt(n), n * n
    unit_of = [[i // n for i in range(nn)], [i % n for i in range(nn)],
               [(i // n // box) * box + i % n // box for i in range(nn)]]
    units = tuple(tuple(i for i in range(nn) if unit_of[k][i] == u) for k in range(3) for u in range(n))
    groups = None
    if nn <= 256:
        per = 3 if 3 * nn <= 256 else 1  # unit kinds sharing one code space of a byte
        groups = tuple((per, int.from_bytes(bytes(j * nn + u * n for j in range(per) for u in unit_of[k0 + j]), "big"),
                        bytes(range(per * nn))) for k0 in range(0, 3, per))
    digits = bytes([255] * 49 + list(range(n)) + [255] * (207 - n)) if n <= 9 else None  # b"1" is 49
    return units, groups, digits, bytes(range(n + 1))


class Sudoku:
    """One checked puzzle (`cells`: its n*n values as bytes, 0 = empty). `verify(answer)` ->
    (correct, reason), memoised per answer text."""

    __slots__ = ("n", "cells", "_mask", "_given", "_verdicts", "_tables")

    def __init__(self, n: int, cells: bytes, tables: tuple | None = None) -> None:
        self.n, self.cells = n, cells
        self._mask = self._given = 0  # set on the first answer that keeps the rules (`_givens_kept`)
        self._verdicts: dict[str, tuple[bool, str]] = {}  # exact answer text -> verdict (bounded)
        self._tables = tables or _tables(n)

    def verify(self, answer: str) -> tuple[bool, str]:
        verdict = self._verdicts.get(answer)
        if verdict is None:
            verdict = self._verify(answer)
            if len(self._verdicts) < _MEMO_ANSWERS:
                self._verdicts[answer] = verdict
        return verdict

    def _verify(self, answer: str) -> tuple[bool, str]:
        n, nn = self.n, self.n * self.n
        if len(answer) < nn:  # every layout spends a character on each cell at least
            return False, f"not a {n}x{n} grid of numbers"
        units, groups, digits, _ = self._tables
        vals = None
        if digits is not None:  # n*n digits 1..n and ASCII white space only: the digits are the cells
            packed = answer.encode().translate(None, _ASCII_SPACE) if answer.isascii() else b""
            if len(packed) == nn:
                vals = packed.translate(digits)
                if 255 in vals:
                    vals = None
        if vals is None:  # another layout, or a cell outside 1..n
            values = self._values(answer)
            if values is None:
                return False, f"not a {n}x{n} grid of numbers"
            if not all(1 <= v <= n for v in values):
                return False, self._unit_reason(values)
            vals = bytes(values).translate(_MINUS_ONE)
        if not _units_hold(vals, units, groups, n):
            return False, self._unit_reason([v + 1 for v in vals])
        if not self._givens_kept(vals):
            i = next(i for i, v in enumerate(self.cells) if v and vals[i] + 1 != v)
            r, c = divmod(i, n)
            return False, f"given at row {r + 1}, column {c + 1} changed ({self.cells[i]} -> {vals[i] + 1})"
        return True, ""

    def _givens_kept(self, vals: bytes) -> bool:
        if not self._mask and any(self.cells):
            self._mask = int.from_bytes(self.cells.translate(_GIVEN_MASK), "big")  # 0xFF at every given
            self._given = int.from_bytes(self.cells.translate(_MINUS_ONE), "big")  # given - 1, a byte a cell
        return int.from_bytes(vals, "big") & self._mask == self._given

    def _values(self, answer: str) -> list[int] | None:
        """The n*n numbers of `answer` in row order (any integers), or None when it is no such grid."""
        nn = self.n * self.n
        tokens = answer.split()
        if len(tokens) != nn:
            tokens = "".join(tokens)  # n*n digits in a row (lines of digits, or digits apart)
            if not (len(tokens) == nn and tokens.isdecimal() and tokens.isascii()):
                tokens = None
        values = None if tokens is None else [_NAMES.get(t, 0) for t in tokens]
        if values is None or 0 in values:  # the general layouts: commas, bars, rule lines, [[..]]
            grid = parse_grid(answer)
            if grid is None or sum(map(len, grid)) != nn:
                stripped = re.sub(r"\s", "", answer)
                if not (re.fullmatch(r"\d+", stripped) and len(stripped) == nn):
                    return None
                grid = [[int(c) for c in stripped]]  # n*n digits in a row (any layout)
            values = list(chain.from_iterable(grid))
        return values

    def _unit_reason(self, values: list[int]) -> str:
        """The first unit (rows, then columns, then boxes) not holding 1..n once each."""
        n = self.n
        full = list(range(1, n + 1))
        u = next(u for u, unit in enumerate(self._tables[0]) if sorted(map(values.__getitem__, unit)) != full)
        return f"{_KINDS[u // n]} {u % n + 1} does not hold 1..{n} once each"


def _units_hold(vals: bytes, units: tuple[tuple[int, ...], ...], groups: tuple | None, n: int) -> bool:
    """Every row, column and box of the cells `vals` (value - 1 each, all in 0..n-1) holds each value once."""
    if groups is None:  # codes beyond a byte: unit by unit
        full = list(range(n))
        return all(sorted(map(vals.__getitem__, unit)) == full for unit in units)
    for copies, offsets, covered in groups:
        codes = int.from_bytes(vals * copies, "big") + offsets  # each byte unit * n + value - 1: no carry
        if covered.translate(None, codes.to_bytes(len(covered), "big")):  # a code missing: a value twice
            return False
    return True


_compiled: dict[bytes, Sudoku] = {}  # puzzle cells -> compiled puzzle (invalid puzzles are not kept)


def sudoku_for(puzzle: object) -> Sudoku | None:
    """The compiled `puzzle`, cached by its cells, or None when it is not a Sudoku (`check_puzzle` says why).

    A cell written ``true`` counts as 1 here (`bytes` takes it); `validate` refuses such rows at load.
    A puzzle of n rows with the cells of one compiled before gets that one (whatever its rows' lengths).
    """
    if not isinstance(puzzle, list) or not puzzle:
        return None
    n = len(puzzle)
    try:
        cells = bytes(sum(puzzle, []))  # refuses rows other than lists and cells other than integers 0..255
    except (TypeError, ValueError):
        return None
    sudoku = _compiled.get(cells) if len(cells) == n * n else None
    if sudoku is None:  # `check_puzzle`'s rules over the flat cells
        if len(cells) != n * n or math.isqrt(n) ** 2 != n or n > MAX_SIZE or set(map(len, puzzle)) != {n}:
            return None
        tables = _tables(n)
        if cells.translate(None, tables[3]):
            return None
        if len(_compiled) >= _MAX_PUZZLES:
            _compiled.clear()
        sudoku = _compiled[cells] = Sudoku(n, cells, tables)
    return sudoku


def verify_sudoku(answer: str, puzzle: list[list[int]]) -> tuple[bool, str]:
    """Every row, column and box holds 1..n once, and every given of `puzzle` is kept."""
    sudoku = sudoku_for(puzzle)
    if sudoku is None:
        raise ValueError(check_puzzle(puzzle, "verify_sudoku") or "verify_sudoku: not a Sudoku puzzle")
    return sudoku.verify(answer)
