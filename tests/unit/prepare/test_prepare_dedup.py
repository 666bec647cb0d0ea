"""Dedup stage: exact (normalised hash) and near-duplicate (MinHash LSH) removal, first copy kept."""

from __future__ import annotations

import json

import datasets
import pytest

from ring_lightning.prepare.dedup import Deduplicator, normalize, shingle_hashes
from ring_lightning.prepare.rows import FEATURES, StageRunner, to_internal

FARM = ("A farmer has a rectangular field whose length is three times its width. He walks once around "
        "the whole boundary of the field and covers a total distance of 480 meters. A fence post is placed "
        "every 4 meters along the boundary, starting at one corner. How many fence posts are needed in total?")


def run_dedup(prompts: list[str], streaming: bool = False, **kwargs) -> list[dict]:
    rows = [to_internal({"id": f"r{i}", "domain": "math", "prompt": p, "answer": "1"}, f"t row {i}",
                        source=None, default_source="t") for i, p in enumerate(prompts)]
    if streaming:
        ds = datasets.IterableDataset.from_generator(lambda: iter(rows), features=FEATURES)
    else:
        ds = datasets.Dataset.from_list(rows, features=FEATURES)
    out = Deduplicator(**kwargs).apply(ds, StageRunner(batch_size=2))
    return list(out)


def test_exact_duplicates_up_to_case_and_spacing():
    out = run_dedup(["How many divisors does 360 have?", "A different question about 17?",
                     "  how many DIVISORS   does 360 have? "])
    assert [r["_reason"] for r in out] == ["", "", "exact_duplicate"]
    assert json.loads(out[2]["_detail"]) == {"duplicate_of": "r0"}


def test_near_duplicate_pair_caught_by_minhash():
    near = FARM.replace("A farmer has", "A farmer owns")
    out = run_dedup([FARM, "What is the sum of the first 100 positive integers?", near])
    assert [r["_reason"] for r in out] == ["", "", "near_duplicate"]
    detail = json.loads(out[2]["_detail"])
    assert detail["duplicate_of"] == "r0"
    assert 0.8 <= detail["jaccard"] < 1.0


def test_threshold_and_switches():
    near = FARM.replace("A farmer has", "A farmer owns")
    assert [r["_reason"] for r in run_dedup([FARM, near], threshold=0.95)] == ["", ""]
    assert [r["_reason"] for r in run_dedup([FARM, near], near=False)] == ["", ""]
    assert [r["_reason"] for r in run_dedup([FARM, FARM.upper()], exact=False)] == ["", "near_duplicate"]


def test_math_symbols_keep_different_short_problems_apart():
    out = run_dedup(["Solve x+1=2.", "Solve x-1=2.", "Solve x+1=3."])
    assert [r["_reason"] for r in out] == ["", "", ""]


def test_rows_removed_earlier_are_not_compared():
    rows = run_dedup([FARM, FARM])
    assert [r["_reason"] for r in rows] == ["", "exact_duplicate"]
    # a removed row passes through untouched and is not an anchor for later rows
    base = [to_internal({"id": "a", "domain": "math", "prompt": FARM, "answer": "1"}, "t row 0",
                        source=None, default_source="t"),
            to_internal({"id": "b", "domain": "math", "prompt": FARM, "answer": "1"}, "t row 1",
                        source=None, default_source="t")]
    base[0].update(_stage="clean", _reason="image", _detail="{}")
    out = list(Deduplicator().apply(datasets.Dataset.from_list(base, features=FEATURES), StageRunner()))
    assert [(r["_stage"], r["_reason"]) for r in out] == [("clean", "image"), ("", "")]


def test_streaming_gives_the_same_decisions():
    prompts = [FARM, "Q one about 5?", FARM.replace("has", "owns"), "q ONE about 5?"]
    assert [r["_reason"] for r in run_dedup(prompts, streaming=True)] == \
        [r["_reason"] for r in run_dedup(prompts)] == ["", "", "near_duplicate", "exact_duplicate"]


def test_shingles_and_normalize():
    assert normalize("  Ａ  b\tC ") == "a b c"
    assert len(shingle_hashes("a b c d e", 3)) == 3
    assert len(shingle_hashes("a b", 3)) == 1
    assert (shingle_hashes("x + 1", 3) != shingle_hashes("x - 1", 3)).all()


def test_bad_threshold():
    with pytest.raises(ValueError, match=r"dedup.threshold must be in \(0, 1\]"):
        Deduplicator(threshold=1.5)
    with pytest.raises(ValueError, match="threshold=0.99 with num_perm=128 is not a valid LSH setting"):
        Deduplicator(threshold=0.99)
