"""The whole prepare job through its real entry points: outputs, summary arithmetic, idempotence,
streaming / num_proc / Parquet equivalence, malformed-input errors, and the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ring_lightning.prepare.decontam import BenchmarkSpec, Decontaminator
from ring_lightning.prepare.verify import AnswerVerifier
from ring_lightning.prepare.pipeline import InputSpec, Prepare, build_parser, main
from ring_lightning.rows import PromptRowError
from ring_lightning.data.prompts import load_prompts

ROOT = Path(__file__).resolve().parents[3]
FIX = ROOT / "tests" / "fixtures" / "prepare"
QUICKSTART = ROOT / "configs" / "quickstart" / "prepare.yaml"
KEPT = ["keep-quadratic", "keep-rectangle", "keep-divisors", "keep-whitespace", "keep-near-a", "keep-science-mc",
        "code-ok", "code-second-solution", "code-assert"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    """`python -m ring_lightning.prepare.pipeline -c configs/quickstart/prepare.yaml` in a subprocess."""
    out = tmp_path_factory.mktemp("qs") / "prompts.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ring_lightning.prepare.pipeline", "-c", str(QUICKSTART),
                           "--output", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote 9 of 25 rows to {out}" in proc.stdout
    return out


def test_output_rows_schema_and_annotations(quickstart):
    rows = load_prompts(quickstart)
    assert [r.id for r in rows] == KEPT
    by_id = {r.id: r for r in rows}
    assert by_id["keep-divisors"].meta == {"source": "olympiad", "level": 2}  # existing source kept
    assert by_id["keep-quadratic"].meta["source"] == "raw_math"                 # file stem
    assert by_id["code-ok"].meta["source"] == "code_fixture"                    # inputs[].source
    assert by_id["code-ok"].meta["malformed_tests_dropped"] == 2
    assert by_id["keep-whitespace"].messages[0]["content"] == "What is the sum of the first 100 positive integers?"


def test_removed_rows_record_stage_reason_and_evidence(quickstart):
    removed = {r["id"]: r for r in read_jsonl(quickstart.with_name("prompts.removed.jsonl"))}
    assert len(removed) == 16
    assert (removed["drop-near-b"]["stage"], removed["drop-near-b"]["reason"]) == ("dedup", "near_duplicate")
    assert removed["drop-near-b"]["detail"]["duplicate_of"] == "keep-near-a"
    assert removed["drop-contaminated"]["detail"] == {
        "benchmark": "math500", "benchmark_id": "test/number_theory/1",
        "ngram": "find the number of ordered pairs of positive integers m n such that"}
    assert removed["drop-contaminated"]["where"].endswith("raw_math.jsonl row 15")
    assert removed["drop-unparseable"]["reason"] == "unparseable_answer"
    assert removed["code-wrong-solution"]["reason"] == "reference_solution_fails"
    assert removed["drop-image"]["row"]["id"] == "drop-image"


def test_summary_counts_add_up(quickstart):
    summary = json.loads(quickstart.with_name("prompts.summary.json").read_text())
    assert (summary["rows_in"], summary["rows_out"]) == (25, 9)
    stages = summary["stages"]
    assert [s["stage"] for s in stages] == ["load", "clean", "dedup", "decontam", "verify", "difficulty"]
    for prev, cur in zip(stages, stages[1:]):
        assert cur["in"] == prev["out"]
    for s in stages:
        assert s["in"] == s["out"] + sum(s["removed"].values())
    assert stages[0]["in"] == 25 and stages[-1]["out"] == 9
    assert stages[1]["removed"] == {"image": 2, "invalid_characters": 1, "multiple_choice": 1,
                                    "multiple_subquestions": 1, "no_valid_answer": 1, "true_false_or_yes_no": 2}
    assert stages[2]["removed"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert stages[4]["removed"] == {"no_reference_solution": 1, "no_valid_tests": 1, "reference_solution_fails": 1,
                                    "unparseable_answer": 1}
    assert stages[5]["enabled"] is False and stages[5]["removed"] == {}
    assert [(c["id"], c["benchmark"]) for c in summary["contamination"]] == \
        [("drop-contaminated", "math500"), ("drop-contaminated-short", "math500")]
    assert stages[3]["report"]["benchmarks"]["math500"]["short_items_skipped"] == 1
    assert summary["sources"] == {"code_fixture": {"in": 6, "out": 3}, "olympiad": {"in": 1, "out": 1},
                                  "raw_math": {"in": 18, "out": 5}}


def test_idempotent_on_its_own_output(quickstart, tmp_path):
    cfg = yaml.safe_load(QUICKSTART.read_text())
    cfg["inputs"] = [{"path": str(quickstart)}]
    cfg["output"] = str(tmp_path / "again.jsonl")
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(cfg))
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config's benchmark paths are relative to the repository root
    try:
        assert main(["-c", str(tmp_path / "again.yaml")]) == 0
    finally:
        os.chdir(cwd)
    assert (tmp_path / "again.jsonl").read_bytes() == quickstart.read_bytes()
    summary = json.loads((tmp_path / "again.summary.json").read_text())
    assert all(s["removed"] == {} and s["in"] == s["out"] == 9 for s in summary["stages"])


NO_CHECKS = {"decontam": Decontaminator(enabled=False), "verify": AnswerVerifier(enabled=False)}


def job(tmp_path: Path, output: str, **kwargs) -> Prepare:
    return Prepare(inputs=[InputSpec(path=str(FIX / "raw_math.jsonl"))], output=str(tmp_path / output),
                   decontam=Decontaminator(benchmarks=[BenchmarkSpec(name="math500", path=str(FIX / "bench_math500.jsonl"),
                                                                     id_field="unique_id")]),
                   verify=AnswerVerifier(enabled=False), **kwargs)


def test_streaming_num_proc_and_parquet_agree(tmp_path):
    runs = {"plain": job(tmp_path, "a.jsonl").run(),
            "streaming": job(tmp_path, "b.parquet", streaming=True).run(),
            "num_proc": job(tmp_path, "c.jsonl", num_proc=2, batch_size=4).run()}
    rows = {name: [r.to_dict() for r in load_prompts(tmp_path / f)]
            for name, f in (("plain", "a.jsonl"), ("streaming", "b.parquet"), ("num_proc", "c.jsonl"))}
    assert rows["plain"] == rows["streaming"] == rows["num_proc"]
    assert len(rows["plain"]) == 7  # verify off: the unparseable-answer row stays
    strip = [{k: v for k, v in s.items() if k not in ("seconds", "report")} for s in runs["plain"]["stages"]]
    for other in ("streaming", "num_proc"):
        assert [{k: v for k, v in s.items() if k not in ("seconds", "report")} for s in runs[other]["stages"]] == strip


def test_malformed_row_is_an_error_naming_file_and_row(tmp_path):
    for streaming in (False, True):
        bad = Prepare(inputs=[InputSpec(path=str(FIX / "malformed.jsonl"))], output=str(tmp_path / "x.jsonl"),
                      streaming=streaming, **NO_CHECKS)
        with pytest.raises(PromptRowError, match=r"malformed.jsonl row 1: domain 'math' needs the field 'answer'"):
            bad.run()
        assert not (tmp_path / "x.jsonl").exists()  # no half-written output


def test_malformed_rows_dropped_when_asked(tmp_path):
    summary = Prepare(inputs=[InputSpec(path=str(FIX / "malformed.jsonl"))], output=str(tmp_path / "x.jsonl"),
                      on_malformed="drop", **NO_CHECKS).run()
    assert summary["stages"][0]["removed"] == {"malformed": 1}
    assert [r.id for r in load_prompts(tmp_path / "x.jsonl")] == ["ok-1", "ok-2"]
    (rec,) = read_jsonl(tmp_path / "x.removed.jsonl")
    assert rec["where"].endswith("malformed.jsonl row 1") and "needs the field 'answer'" in rec["detail"]["error"]


def test_duplicate_ids_across_files_and_id_prefix(tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "domain": "math", "prompt": f"What is {i} times 3?",
                                        "answer": str(3 * i)}) + "\n" for i in range(2)))
    inputs = [InputSpec(path=str(data)), InputSpec(path=str(data))]
    with pytest.raises(PromptRowError, match=r"two.jsonl row 0: duplicate id 'p0' \(first at .*two.jsonl row 0\)"):
        Prepare(inputs=inputs, output=str(tmp_path / "x.jsonl"), **NO_CHECKS).run()
    inputs[1] = InputSpec(path=str(data), id_prefix="copy/")
    summary = Prepare(inputs=inputs, output=str(tmp_path / "x.jsonl"), **NO_CHECKS).run()
    assert summary["stages"][2]["removed"] == {"exact_duplicate": 2}  # the prefixed copies are duplicates
    removed = read_jsonl(tmp_path / "x.removed.jsonl")
    assert [(r["id"], r["detail"]["duplicate_of"]) for r in removed] == [("copy/p0", "p0"), ("copy/p1", "p1")]


def test_bad_job_configuration(tmp_path):
    with pytest.raises(ValueError, match="must end in .jsonl or .parquet"):
        Prepare(inputs=[InputSpec(path="a.jsonl")], output=str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="is also an input"):
        Prepare(inputs=[InputSpec(path=str(tmp_path / "x.jsonl"))], output=str(tmp_path / "x.jsonl"))
    with pytest.raises(FileNotFoundError, match="input file not found"):
        Prepare(inputs=[InputSpec(path=str(tmp_path / "nope.jsonl"))], output=str(tmp_path / "x.jsonl"),
                **NO_CHECKS).run()



def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RING_LIGHTNING_DEBUG", raising=False)
    inputs = json.dumps([{"path": str(FIX / "malformed.jsonl")}])
    assert main(["--inputs", inputs, "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "ValueError: decontam is enabled but decontam.benchmarks is empty" in capsys.readouterr().err
    assert main(["--inputs", inputs, "--output", str(tmp_path / "x.jsonl"), "--decontam.enabled", "false",
                 "--verify.enabled", "false"]) == 2
    assert "malformed.jsonl row 1: domain 'math' needs the field 'answer'" in capsys.readouterr().err
    monkeypatch.setenv("RING_LIGHTNING_DEBUG", "1")
    with pytest.raises(PromptRowError):
        main(["--inputs", inputs, "--output", str(tmp_path / "x.jsonl"), "--decontam.enabled", "false"])


def test_help_documents_every_stage_knob():
    text = build_parser().format_help()
    for knob in ("--num_proc", "--streaming", "--clean.image_patterns", "--clean.max_subquestions",
                 "--dedup.threshold", "--dedup.shingle_size", "--decontam.ngram", "--decontam.benchmarks",
                 "--verify.answer_validator", "--verify.solution_runner", "--difficulty.engine", "--difficulty.k",
                 "--difficulty.sampling.temperature", "--difficulty.min_pass_rate"):
        assert knob in text
    assert "Jaccard similarity" in text and "n-gram length in words" in text


def test_engine_by_class_path_in_a_config(tmp_path):
    """difficulty.engine given as class_path/init_args; the default reward router scores the samples."""
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "domain": "math", "prompt": q, "answer": a}) + "\n"
                            for i, (q, a) in enumerate([("What is 5+5?", "10"), ("What is 3+3?", "6")])))
    cfg = {"inputs": [{"path": str(data)}], "output": str(tmp_path / "out.jsonl"), "verify": {"enabled": False},
           "decontam": {"enabled": False},
           "difficulty": {"enabled": True, "k": 4, "engine": {"class_path": "test_prepare_difficulty.FakeEngine"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-c", str(tmp_path / "c.yaml")]) == 0
    rows = load_prompts(tmp_path / "out.jsonl")
    assert [(r.id, r.meta["difficulty"], r.meta["difficulty_k"]) for r in rows] == [("q0", 0.5, 4)]
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["stages"][-1]["removed"] == {"always_solved": 1}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_every_schema_field_round_trips(tmp_path, suffix):
    from ring_lightning.rows import parse_row

    raws = [
        {"id": "sys", "domain": "general", "messages": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "Name a colour."}]},
        {"id": "ins", "domain": "instruction", "prompt": "Describe rain.", "reward": "instruction",
         "instructions": [{"id": "keywords:existence", "kwargs": {"keywords": ["wet"]}}], "meta": {"lang": "en"}},
        {"id": "cod", "domain": "code", "prompt": "Echo the input.", "meta": {"solutions": ["print(input())"]},
         "tests": {"type": "stdio", "cases": [{"input": "a\n", "output": "a\n"}], "timeout_s": 2.0}},
        {"id": "log", "domain": "logic", "prompt": "Solve the puzzle.", "answer": 17, "meta": {"task": "countdown"}},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in raws))
    Prepare(inputs=[InputSpec(path=str(data), source="mixed")], output=str(tmp_path / f"out{suffix}"),
            **NO_CHECKS).run()
    got = [r.to_dict() for r in load_prompts(tmp_path / f"out{suffix}")]
    want = []
    for i, raw in enumerate(raws):
        d = parse_row(raw, f"row {i}").to_dict()
        d["meta"] = {**d["meta"], "source": "mixed"}
        want.append(d)
    assert got == want
