"""Rule-based verifiers for grid logic answers: a maze path, an exact grid (Sudoku: `sudoku.py`).

Each checks the answer against the puzzle's rules, not against a reference solution, so a valid
alternative solution of an open puzzle scores 1. Answers are parsed as text (digits and move
letters); nothing is evaluated. Verifiers return (correct, reason); the reason is "" when correct.
"""

from __future__ import annotations

import re
from collections import deque

MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
_WORDS = {"UP": "U", "DOWN": "D", "LEFT": "L", "RIGHT": "R"}


def parse_grid(text: str) -> list[list[int]] | None:
    """Rows of integers, one row a line (cells split by spaces, commas or ``|``), or a JSON-like
    ``[[1, 2], [3, 4]]``; None when it is not such a grid."""
    s = text.strip().strip("`").strip()
    if s.startswith("[["):
        rows = re.findall(r"\[([^\[\]]*)\]", s)
    else:
        rows = [line for line in s.splitlines() if line.strip(" \t-+|=")]  # drop blank and rule lines
    grid = []
    for row in rows:
        cells = row.replace(",", " ").replace("|", " ").split()
        if not cells or not all(c.lstrip("-").isdecimal() and c.isascii() and len(c) <= 4 for c in cells):
            return None
        grid.append([int(c) for c in cells])
    return grid or None


def parse_moves(answer: str) -> list[str] | None:
    """``U D L R`` / ``UDLR`` / ``up, left`` -> ["U", "D", ...]; None when anything else is there."""
    s = answer.strip().upper()
    for word, letter in _WORDS.items():
        s = re.sub(rf"\b{word}\b", letter, s)
    s = re.sub(r"[\s,;\->→]+", "", s)
    if not s or not re.fullmatch(r"[UDLR]+", s):
        return None
    return list(s)


def maze_cells(grid: list[str], start: list[int] | None, end: list[int] | None, wall: str
               ) -> tuple[tuple[int, int], tuple[int, int]]:
    """The start and end cells: given as [row, col], else the grid's ``S`` and ``E``."""
    found = {ch: (r, c) for r, line in enumerate(grid) for c, ch in enumerate(line) if ch in "SE"}
    s = tuple(start) if start is not None else found.get("S")
    e = tuple(end) if end is not None else found.get("E")
    if s is None or e is None:
        raise ValueError("the maze needs a start and an end (meta.start / meta.end or 'S' / 'E' cells)")
    for name, (r, c) in (("start", s), ("end", e)):
        if not (0 <= r < len(grid) and 0 <= c < len(grid[r])) or grid[r][c] == wall:
            raise ValueError(f"the maze {name} {[r, c]} is outside the grid or a wall")
    return s, e


def shortest_path_length(grid: list[str], start: tuple[int, int], end: tuple[int, int], wall: str) -> int | None:
    seen, todo = {start: 0}, deque([start])
    while todo:
        cell = todo.popleft()
        if cell == end:
            return seen[cell]
        for dr, dc in MOVES.values():
            r, c = cell[0] + dr, cell[1] + dc
            if 0 <= r < len(grid) and 0 <= c < len(grid[r]) and grid[r][c] != wall and (r, c) not in seen:
                seen[(r, c)] = seen[cell] + 1
                todo.append((r, c))
    return None


def verify_maze_path(answer: str, grid: list[str], start: tuple[int, int], end: tuple[int, int],
                     wall: str = "#", shortest: bool = False) -> tuple[bool, str]:
    """The moves lead from `start` to `end` through open cells, never off the grid (and, with
    `shortest`, in as few moves as possible)."""
    moves = parse_moves(answer)
    if moves is None:
        return False, "not a sequence of moves U / D / L / R"
    r, c = start
    for i, m in enumerate(moves):
        r, c = r + MOVES[m][0], c + MOVES[m][1]
        if not (0 <= r < len(grid) and 0 <= c < len(grid[r])):
            return False, f"move {i + 1} ({m}) leaves the maze"
        if grid[r][c] == wall:
            return False, f"move {i + 1} ({m}) walks into a wall at row {r}, column {c}"
    if (r, c) != tuple(end):
        return False, f"the path ends at {[r, c]}, not at the end {list(end)}"
    if shortest:
        best = shortest_path_length(grid, tuple(start), tuple(end), wall)
        if best is not None and len(moves) != best:
            return False, f"{len(moves)} moves; the shortest path has {best}"
    return True, ""


def verify_grid(answer: str, expected: list[list[int]]) -> tuple[bool, str]:
    """ARC: the answer grid equals `expected` exactly (shape and every cell)."""
    grid = parse_grid(answer)
    if grid is None:
        return False, "not a grid of numbers"
    if [len(r) for r in grid] != [len(r) for r in expected]:
        return False, f"shape {len(grid)}x{len(grid[0])} differs from {len(expected)}x{len(expected[0])}"
    if grid != expected:
        return False, "cells differ"
    return True, ""
