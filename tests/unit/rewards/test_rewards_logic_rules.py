"""Rule-based logic verifiers: Countdown division / number rules, Sudoku by its rules, maze paths, ARC grids."""

from __future__ import annotations

import math

import pytest
from rewards_testlib import make_row

from ring_lightning.rewards.countdown import score_countdown
from ring_lightning.rewards.logic import LogicReward, LogicRowError

REWARD = LogicReward()
# An open 4x4 puzzle with two solutions (only the first row's 1/2 pair is given).
OPEN = [[1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
SOL_A = "1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1"
SOL_B = "1 2 4 3\n4 3 1 2\n2 1 3 4\n3 4 2 1"
MAZE = ["S.#", ".##", "..E"]


def score(meta, answer, reward=REWARD):
    return reward([make_row("logic", answer="ignored", meta=meta)], [f"<answer>{answer}</answer>"])[0]


def test_countdown_exact_division_rejects_a_non_integer_quotient():
    meta = {"task": "countdown", "numbers": [7, 2, 2], "target": 7}
    assert score({**meta, "division": "exact"}, "7 / 2 * 2").reward == 0.0
    assert "division must be exact" in score({**meta, "division": "exact"}, "7 / 2 * 2").info["reason"]
    assert score({**meta, "division": "real"}, "7 / 2 * 2").reward == 1.0
    assert score({**meta, "division": "exact"}, "(7 * 2) / 2").reward == 1.0
    assert score(meta, "7 / 2 * 2").reward == 0.0  # the default (classic game) is exact
    assert score(meta, "7 / 2 * 2", LogicReward(countdown_division="real")).reward == 1.0


def test_countdown_numbers_rules():
    meta = {"task": "countdown", "numbers": [25, 5, 3], "target": 30}
    assert score({**meta, "numbers_rule": "at_most_once"}, "25 + 5").reward == 1.0
    assert score({**meta, "numbers_rule": "exactly_once"}, "25 + 5").reward == 0.0
    assert score({**meta, "numbers_rule": "exactly_once"}, "25 + 5 * 3 - 5 * 3").reward == 0.0
    assert score({**meta, "numbers_rule": "exactly_once"}, "(25 + 5) * 3 / 3").reward == 0.0  # 3 twice
    assert score({**meta, "target": 90, "numbers_rule": "exactly_once"}, "(25 + 5) * 3").reward == 1.0
    assert score(meta, "25 + 5", LogicReward(countdown_numbers="exactly_once")).reward == 0.0
    with pytest.raises(ValueError, match="division"):
        score_countdown("1", [1], 1, True, division="float")


def test_sudoku_valid_alternative_solution_scores_1():
    meta = {"task": "mini_sudoku", "puzzle": OPEN}
    assert score(meta, SOL_A).reward == 1.0
    assert score(meta, SOL_B).reward == 1.0  # not the reference, still valid
    assert score(meta, "[[1,2,3,4],[3,4,1,2],[2,1,4,3],[4,3,2,1]]").reward == 1.0
    assert score(meta, "1234341221434321").reward == 1.0


@pytest.mark.parametrize("answer,why", [
    ("2 1 3 4\n3 4 1 2\n1 2 4 3\n4 3 2 1", "given"),      # valid grid, givens changed
    ("1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 1 2", "column"),      # last row breaks columns
    ("1 2 3 4\n1 2 3 4\n3 4 1 2\n3 4 1 2", "column"),
    ("1 2 3 4\n3 4 1 2\n2 1 4 3", "grid"),                 # 3 rows
    ("1 2 3 4\n2 3 4 1\n3 4 1 2\n4 1 2 3", "box"),         # rows and columns fine, boxes not
])
def test_sudoku_rule_violations_score_0(answer, why):
    res = score({"task": "mini_sudoku", "puzzle": OPEN}, answer)
    assert res.reward == 0.0 and why in res.info["reason"], res.info


def test_maze_path_verifier():
    meta = {"task": "maze_path", "grid": MAZE}
    assert score(meta, "D D R R").reward == 1.0
    assert score(meta, "down, down, right, right").reward == 1.0
    assert score(meta, "DDRR").reward == 1.0
    assert score(meta, "D U D D R R").reward == 1.0  # a detour is allowed by default
    assert score({**meta, "shortest": True}, "D U D D R R").reward == 0.0
    assert score({**meta, "shortest": True}, "DDRR").reward == 1.0
    for bad, why in (("R R D D", "wall"), ("U", "leaves"), ("D D R", "ends at"), ("D D X", "moves")):
        res = score(meta, bad)
        assert res.reward == 0.0 and why in res.info["reason"], (bad, res.info)
    explicit = {"task": "maze_path", "grid": ["..", ".."], "start": [0, 0], "end": [1, 1]}
    assert score(explicit, "R D").reward == 1.0 and score(explicit, "R").reward == 0.0


def test_arc_exact_grid():
    meta = {"task": "arc", "output": [[1, 0], [0, 2]]}
    assert score(meta, "1 0\n0 2").reward == 1.0
    assert score(meta, "[[1, 0], [0, 2]]").reward == 1.0
    assert score(meta, "1 0\n0 3").reward == 0.0
    assert score(meta, "1 0 0\n0 2 0").reward == 0.0
    assert score(meta, "1 0").reward == 0.0


@pytest.mark.parametrize("meta,match", [
    ({"task": "countdown", "numbers": [1], "target": 1, "division": "float"}, "meta.division"),
    ({"task": "countdown", "numbers": [1], "target": 1, "numbers_rule": "twice"}, "meta.numbers_rule"),
    ({"task": "countdown", "numbers": [1], "target": 1, "numbers_rule": "at_most_once", "use_all": True}, "contradicts"),
    ({"task": "sudoku", "puzzle": [[1, 2, 3]]}, "n x n"),
    ({"task": "sudoku", "puzzle": [[0] * 4] * 3 + [[0, 0, 0, 5]]}, "0..4"),
    ({"task": "maze_path", "grid": "S.E"}, "meta.grid"),
    ({"task": "maze_path", "grid": ["...", "..."]}, "start and an end"),
    ({"task": "maze_path", "grid": ["S#", ".E"], "start": [0, 1]}, "wall"),
    ({"task": "arc", "output": [[1, "x"]]}, "meta.output"),
])
def test_invalid_rule_rows(meta, match):
    row = make_row("logic", answer="1", meta=meta)
    with pytest.raises(LogicRowError, match="logic.jsonl row 4: .*" + match):
        REWARD.validate(row, "logic.jsonl row 4")
    assert REWARD([row], ["<answer>1</answer>"])[0].valid is False


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="countdown_division"):
        LogicReward(countdown_division="float")
    with pytest.raises(ValueError, match="countdown_numbers"):
        LogicReward(countdown_numbers="any")


@pytest.mark.parametrize("meta,right,wrong", [
    ({"task": "countdown", "numbers": [25, 5, 3], "target": 90}, "(25 + 5) * 3", "25 * 3"),
    ({"task": "mini_sudoku", "puzzle": OPEN}, SOL_B, SOL_B.replace("1 2 4 3", "2 1 4 3", 1)),
    ({"task": "maze_path", "grid": MAZE}, "DDRR", "RRDD"),
    ({"task": "arc", "output": [[1, 0], [0, 2]]}, "1 0\n0 2", "0 1\n2 0"),
])
def test_rows_without_an_answer_are_validated_and_scored_from_meta(meta, right, wrong):
    row = make_row("logic", meta=meta)  # no `answer` at all: the verifiers read only `meta`
    assert row.answer is None
    REWARD.validate(row, "logic.jsonl row 1")
    out = REWARD([row, row], [f"<answer>{right}</answer>", f"<answer>{wrong}</answer>"])
    assert [r.reward for r in out] == [1.0, 0.0] and all(r.valid for r in out), [r.info for r in out]


def test_a_row_without_an_answer_still_needs_its_verifier_fields():
    row = make_row("logic", meta={"task": "mini_sudoku"})
    with pytest.raises(LogicRowError, match="logic.jsonl row 1: meta.puzzle"):
        REWARD.validate(row, "logic.jsonl row 1")
    assert REWARD([row], ["<answer>1</answer>"])[0].valid is False


@pytest.mark.parametrize("answer", [
    "1 2 4 3 4 3 1 2 2 1 3 4 3 4 2 1",                    # n*n numbers on one line
    "1243\n4312\n2134\n3421",                              # n lines of n digits (also for 4x4)
    "1, 2, 4, 3\n4, 3, 1, 2\n2, 1, 3, 4\n3, 4, 2, 1",      # commas
    "1 2 | 4 3\n4 3 | 1 2\n----+----\n2 1 | 3 4\n3 4 | 2 1",  # box rules
    "1\u00a02\u00a04\u00a03\r\n4 3 1 2\r\n2 1 3 4\r\n3\u20034\u20032\u20031",  # non-ASCII white space, CRLF
])
def test_sudoku_layouts_of_a_valid_solution_score_1(answer):
    assert score({"task": "mini_sudoku", "puzzle": OPEN}, answer).reward == 1.0


@pytest.mark.parametrize("answer,why", [
    ("1 2 4 3 4 3 1 2 2 1 3 4 3 4 2", "grid"),             # 15 numbers
    ("1 2 4 3\n4 3 1 2\n2 1 3 4\n3 4 2 01x", "grid"),      # not a number
    ("1 2 4 3\n4 3 1 2\n2 1 3 4\n3 4 2 5", "row 4"),       # 5 in a 4x4
    ("1 2 4 3\n4 3 1 2\n2 1 3 4\n3 4 2 0", "row 4"),       # an empty cell left
])
def test_sudoku_near_miss_layouts_score_0(answer, why):
    res = score({"task": "mini_sudoku", "puzzle": OPEN}, answer)
    assert res.reward == 0.0 and why in res.info["reason"], res.info


def pattern_solution(n):
    box = math.isqrt(n)
    return [[(box * (r % box) + r // box + c) % n + 1 for c in range(n)] for r in range(n)]


@pytest.mark.parametrize("n", [4, 9, 16, 25])  # one-byte codes for all units / per unit kind / unit by unit
def test_sudoku_rules_at_every_size(n):
    sol = pattern_solution(n)
    meta = {"task": "sudoku", "puzzle": [[v if (r + c) % 3 == 0 else 0 for c, v in enumerate(row)]
                                         for r, row in enumerate(sol)]}
    text = lambda grid: "\n".join(" ".join(map(str, row)) for row in grid)  # noqa: E731
    assert score(meta, text(sol)).reward == 1.0
    swapped = [sol[0][1::-1] + sol[0][2:]] + sol[1:]  # row 1 still 1..n, columns 1 and 2 not
    shifted = sol[1:] + sol[:1]  # rows and columns still 1..n, box 1 not
    relabelled = [[v % n + 1 for v in row] for row in sol]  # valid, but the given 1 at row 1, column 1 is 2
    outside = sol[:-1] + [sol[-1][:-1] + [n + 1]]
    for grid, why in ((swapped, "column 1 does"), (shifted, "box 1 does"), (outside, f"row {n} does"),
                      (relabelled, "given at row 1, column 1 changed (1 -> 2)")):
        res = score(meta, text(grid))
        assert res.reward == 0.0 and why in res.info["reason"], (why, res.info)


def test_sudoku_verdicts_follow_the_puzzle_not_a_cached_twin():
    open_a = {"task": "mini_sudoku", "puzzle": [row[:] for row in OPEN]}
    assert score(open_a, SOL_B).reward == 1.0
    given_4 = {"task": "mini_sudoku", "puzzle": [[1, 2, 3, 0]] + [[0] * 4] * 3}  # SOL_B has 4 there
    res = score(given_4, SOL_B)
    assert res.reward == 0.0 and "given at row 1, column 3 changed (3 -> 4)" in res.info["reason"], res.info
    assert score(open_a, SOL_B).reward == 1.0  # the memoised verdict of the first puzzle is still its own
    open_a["puzzle"][0][2] = 3  # changed in place: compiled anew from its cells
    assert score(open_a, SOL_B).reward == 0.0


def test_a_twin_with_the_same_cells_does_not_change_validity():
    tuple_rows = {"task": "mini_sudoku", "puzzle": [tuple(row) for row in OPEN]}  # not a list of lists
    assert score(tuple_rows, SOL_B).valid is False
    assert score({"task": "mini_sudoku", "puzzle": [row[:] for row in OPEN]}, SOL_B).reward == 1.0


def test_every_puzzle_validate_accepts_is_scored_by_the_rules():
    class Rows(list):
        pass

    for puzzle in (Rows([Rows(r) for r in OPEN]), [[0]], [[0] * 25 for _ in range(25)]):
        row = make_row("logic", meta={"task": "sudoku", "puzzle": puzzle})
        REWARD.validate(row, "x")
        res = REWARD([row], ["<answer>1</answer>"])[0]
        assert res.valid and res.reward == (1.0 if len(puzzle) == 1 else 0.0), res.info
    with pytest.raises(LogicRowError, match="up to 25"):
        REWARD.validate(make_row("logic", meta={"task": "sudoku", "puzzle": [[0] * 36] * 36}), "x")
