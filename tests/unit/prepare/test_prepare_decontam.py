"""Decontamination stage: n-gram overlap with local benchmark files, with the hit recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ring_lightning.prepare.decontam import BenchmarkSpec, Decontaminator
from ring_lightning.prepare.rows import to_internal

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "prepare"
MATH500 = BenchmarkSpec(name="math500", path=str(FIXTURES / "bench_math500.jsonl"), field="problem",
                        id_field="unique_id")


def row(prompt: str) -> dict:
    return to_internal({"id": "r", "domain": "math", "prompt": prompt, "answer": "1"}, "t row 0",
                       source=None, default_source="t")


def decontam(**kwargs) -> Decontaminator:
    d = Decontaminator(**{"benchmarks": [MATH500], **kwargs})
    d.setup()
    return d


def test_exact_13gram_hit_is_recorded():
    d = decontam()
    # LaTeX delimiters, braces and case differ from the benchmark text; the words are the same.
    removal = d(row("Find the number of ordered pairs of positive integers $(m,n)$ such that $m^2 n = 20^{20}$."))
    assert removal.reason == "contaminated"
    assert removal.detail == {"benchmark": "math500", "benchmark_id": "test/number_theory/1",
                              "ngram": "find the number of ordered pairs of positive integers m n such that"}


def test_twelve_shared_words_are_not_enough():
    d = decontam()
    # the first 12 words of the benchmark item, then different words
    assert d(row("Find the number of ordered pairs of positive integers (m, n) whose product is 20.")) is None


def test_ngram_size_is_configurable():
    d = decontam(ngram=5, min_ngram=5)
    removal = d(row("We count ordered pairs of positive integers in this unrelated problem."))
    assert removal.detail["ngram"] == "ordered pairs of positive integers"


def test_short_items_matched_whole_or_skipped():
    d = decontam()
    assert d.stats["math500"] == {"items": 3, "ngrams": 6, "short_items_matched_whole": 1, "short_items_skipped": 1}
    hit = d(row("First: what is the smallest prime factor of 1001 times 13? Then add 2."))
    assert hit.detail["benchmark_id"] == "test/number_theory/2"
    assert hit.detail["ngram"] == "what is the smallest prime factor of 1001 times 13"
    # the 4-word item "Compute $\dbinom{8}{4}$." is too short to check (min_ngram=8)
    assert d(row("Compute $\\dbinom{8}{4}$.")) is None
    assert decontam(min_ngram=4)(row("Compute $\\dbinom{8}{4}$.")).reason == "contaminated"


def test_parquet_benchmark_with_custom_field(tmp_path):
    path = tmp_path / "gpqa.parquet"
    pq.write_table(pa.Table.from_pylist([{"Question": "Which particle mediates the strong interaction between "
                                                      "quarks inside a proton according to QCD?", "Record ID": "rec7"}]),
                   path)
    d = decontam(benchmarks=[BenchmarkSpec(name="gpqa", path=str(path), field="Question", id_field="Record ID")])
    removal = d(row("Question: which particle mediates the strong interaction between quarks inside a proton "
                    "according to QCD? Explain."))
    assert (removal.detail["benchmark"], removal.detail["benchmark_id"]) == ("gpqa", "rec7")


def test_missing_field_names_file_row_and_field(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text(json.dumps({"problem": "fine problem text here"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match=rf"{path} row 1: benchmark 'aime' needs a string field 'problem'.*\['question'\]"):
        decontam(benchmarks=[BenchmarkSpec(name="aime", path=str(path))])


def test_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="decontam.benchmarks is empty"):
        Decontaminator(benchmarks=[])
    with pytest.raises(ValueError, match="decontam.benchmarks is empty"):
        Decontaminator(enabled=False).setup()
    with pytest.raises(FileNotFoundError, match="benchmark 'x': file not found"):
        Decontaminator(benchmarks=[BenchmarkSpec(name="x", path=str(tmp_path / "nope.jsonl"))]).setup()
    with pytest.raises(ValueError, match="min_ngram <= ngram"):
        Decontaminator(ngram=5, min_ngram=8)
