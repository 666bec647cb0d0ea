"""Rule-based logic verifiers: Countdown division / number rules, Sudoku by its rules, maze paths, ARC grids."""

from __future__ import annotations

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
