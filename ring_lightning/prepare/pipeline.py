"""`python -m ring_lightning prepare -c prepare.yaml`: turn raw problem files into an RL prompt set.

Ring-lite (arXiv 2506.14731, RL data curation) builds its reasoning-RL set in this order, and so
do we; every stage can be switched off and configured: docs/design.md#prepare-pipeline.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import pyarrow as pa
from jsonargparse import ActionConfigFile, ArgumentParser
from tqdm.auto import tqdm

from ring_lightning.prepare.clean import Cleaner
from ring_lightning.prepare.decontam import Decontaminator
from ring_lightning.prepare.dedup import Deduplicator
from ring_lightning.prepare.difficulty import DifficultyFilter
from ring_lightning.prepare.rows import FEATURES, StageRunner, is_kept, to_internal, unbatch
from ring_lightning.prepare.verify import AnswerVerifier
from ring_lightning.prepare.writer import RowWriter
from ring_lightning.rows import PromptRowError
from ring_lightning.data.prompts import iter_raw_rows

log = logging.getLogger(__name__)
STAGES = ("clean", "dedup", "decontam", "verify", "difficulty")


@dataclass
class InputSpec:
    """One input file of raw problems.

    Args:
        path: .jsonl / .json / .parquet file or a local `datasets` directory.
        source: `meta.source` for its rows; default: the row's own `meta.source`, else the file stem.
        id_prefix: prepended to row ids that do not already start with it (makes ids from several
            files unique; re-running on the output leaves them unchanged).
        domain: domain for rows that have none.
    """

    path: str
    source: str | None = None
    id_prefix: str = ""
    domain: str | None = None


class Prepare:
    """The prepare job: load -> clean -> dedup -> decontam -> verify -> difficulty -> write.

    Args:
        inputs: raw problem files, read in order (the first copy of a duplicate is kept).
        output: output file: `.jsonl` or `.parquet` (RL prompt schema).
        removed_output: JSONL of removed rows with stage, reason and evidence;
            default: `<output stem>.removed.jsonl` beside the output.
        summary_output: summary JSON; default: `<output stem>.summary.json` beside the output.
        streaming: evaluate lazily in one pass (`IterableDataset`); `num_proc` is then not used.
        num_proc: worker processes for the parallel stages (clean, dedup signatures, decontam) on a
            non-streaming dataset (verify and difficulty parallelise in their rewards / engine).
        batch_size: rows per map batch.
        work_dir: where the non-streaming dataset's Arrow files live during the run (a temporary
            directory inside it, deleted at the end); default: the system temp directory.
        on_malformed: "error" stops at the first row that breaks the schema (or repeats an id),
            naming file and row; "drop" removes it with reason "malformed" / "duplicate_id".
        clean: the cleaning stage.
        dedup: the deduplication stage.
        decontam: the decontamination stage.
        verify: the answer-verification stage.
        difficulty: the difficulty (pass-rate) stage.
    """

    def __init__(self, inputs: list[InputSpec], output: str, removed_output: str | None = None,
                 summary_output: str | None = None, streaming: bool = False, num_proc: int = 1,
                 batch_size: int = 256, work_dir: str | None = None,
                 on_malformed: Literal["error", "drop"] = "error", clean: Cleaner | None = None,
                 dedup: Deduplicator | None = None, decontam: Decontaminator | None = None,
                 verify: AnswerVerifier | None = None, difficulty: DifficultyFilter | None = None):
        if not inputs:
            raise ValueError("prepare: `inputs` is empty; list at least one input file")
        out = Path(output)
        if out.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"prepare: output {output!r} must end in .jsonl or .parquet")
        for spec in inputs:
            if Path(spec.path).resolve() == out.resolve():
                raise ValueError(f"prepare: output {output} is also an input; write to a new file")
        if num_proc < 1 or batch_size < 1:
            raise ValueError(f"prepare: num_proc and batch_size must be >= 1, got {num_proc}, {batch_size}")
        self.inputs = list(inputs)
        self.output = out
        self.removed_output = Path(removed_output) if removed_output else out.with_name(f"{out.stem}.removed.jsonl")
        self.summary_output = Path(summary_output) if summary_output else out.with_name(f"{out.stem}.summary.json")
        self.streaming = streaming
        self.num_proc = num_proc
        self.batch_size = batch_size
        self.work_dir = work_dir
        self.on_malformed = on_malformed
        self.stages = {"clean": clean if clean is not None else Cleaner(),
                       "dedup": dedup if dedup is not None else Deduplicator(),
                       "decontam": decontam if decontam is not None else Decontaminator(),
                       "verify": verify if verify is not None else AnswerVerifier(),
                       "difficulty": difficulty if difficulty is not None else DifficultyFilter()}

    # -- loading ---------------------------------------------------------------------------
    def _rows(self):
        """Yield every input row flattened into the pipeline schema (plus marked malformed rows)."""
        seen: dict[str, str] = {}
        for spec in self.inputs:
            if not Path(spec.path).exists():
                raise FileNotFoundError(f"prepare: input file not found: {spec.path} (inputs[].path)")
            stem = Path(spec.path).name.split(".")[0]
            for i, raw in tqdm(_iter_raw(spec.path), desc=f"load {spec.path}", unit=" rows"):
                where = f"{spec.path} row {i}"
                try:
                    row = to_internal(raw, where, source=spec.source, default_source=stem,
                                      id_prefix=spec.id_prefix, default_domain=spec.domain)
                    if row["id"] in seen:
                        raise PromptRowError(f"{where}: duplicate id {row['id']!r} (first at {seen[row['id']]}); "
                                             "give the inputs an id_prefix or fix the ids")
                except PromptRowError as e:
                    if self.on_malformed == "error":
                        raise
                    reason = "duplicate_id" if "duplicate id" in str(e) else "malformed"
                    yield _malformed(raw, where, reason, str(e))
                    continue
                seen[row["id"]] = where
                yield row

    def _load(self, tmp: str) -> datasets.Dataset | datasets.IterableDataset:
        """The rows as a lazy `IterableDataset` (streaming) or a memory-mapped Arrow `Dataset`.

        The non-streaming dataset is written in record batches straight to an Arrow file in `tmp`
        (much faster than `Dataset.from_generator`, which encodes row by row).
        """
        if self.streaming:
            return datasets.IterableDataset.from_generator(self._rows, features=FEATURES)
        schema = FEATURES.arrow_schema
        path = Path(tmp) / "load.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for chunk in _chunks(self._rows(), 8192):
                writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema=schema))
        return datasets.Dataset.from_file(str(path))

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run every enabled stage, write output, removed rows and summary; return the summary."""
        start = time.perf_counter()
        if self.streaming and self.num_proc > 1:
            log.warning("prepare: streaming=true evaluates in one process; num_proc=%d is not used", self.num_proc)
        runner = StageRunner(num_proc=self.num_proc, batch_size=self.batch_size)
        seconds: dict[str, float] = {}  # per stage; only meaningful when not streaming (maps are eager)
        with tempfile.TemporaryDirectory(prefix="ring_prepare_", dir=self.work_dir) as tmp:
            ds = self._load(tmp)
            seconds["load"] = time.perf_counter() - start
            for name in STAGES:
                stage = self.stages[name]
                if stage.enabled:
                    t0 = time.perf_counter()
                    ds = stage.apply(ds, runner)
                    seconds[name] = time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                counts = self._write(ds)
            finally:
                for name in STAGES:
                    if self.stages[name].enabled:
                        self.stages[name].close()
            seconds["write"] = time.perf_counter() - t0
        summary = self._summary(counts, time.perf_counter() - start, {} if self.streaming else seconds)
        self.summary_output.parent.mkdir(parents=True, exist_ok=True)
        self.summary_output.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary

    def _write(self, ds) -> dict[str, Any]:
        """The single final pass: kept rows to the output, removed rows to the removed file."""
        total, kept = 0, 0
        removed: Counter = Counter()
        sources: dict[str, Counter] = {}
        contamination: list[dict[str, Any]] = []
        rows = ds if self.streaming else ds.iter(batch_size=self.batch_size)
        with RowWriter(self.output) as out, RowWriter(self.removed_output, removed=True) as rem:
            for item in tqdm(rows, desc="write", unit=" rows" if self.streaming else " batches"):
                for row in ([item] if self.streaming else unbatch(item)):
                    total += 1
                    src = _source(row)
                    sources.setdefault(src, Counter())["in"] += 1
                    if is_kept(row):
                        kept += 1
                        sources[src]["out"] += 1
                        out.write(row)
                        continue
                    removed[(row["_stage"], row["_reason"])] += 1
                    rem.write(row)
                    if row["_reason"] == "contaminated":
                        contamination.append({"id": row["id"], "where": row["_where"], **json.loads(row["_detail"])})
        return {"total": total, "kept": kept, "removed": removed, "sources": sources, "contamination": contamination}

    def _summary(self, counts: dict[str, Any], seconds: float, stage_seconds: dict[str, float]) -> dict[str, Any]:
        stages, n = [], counts["total"]
        for name in ("load", *STAGES):
            reasons = {r: c for (s, r), c in sorted(counts["removed"].items()) if s == name}
            stage = self.stages.get(name)
            entry = {"stage": name, "enabled": True if stage is None else stage.enabled,
                     "in": n, "out": n - sum(reasons.values()), "removed": reasons}
            if stage is not None and stage.enabled:
                entry["report"] = stage.report()
            if name in stage_seconds:
                entry["seconds"] = round(stage_seconds[name], 3)
            stages.append(entry)
            n = entry["out"]
        if n != counts["kept"]:
            raise RuntimeError(f"prepare: internal count mismatch: stages leave {n} rows, wrote {counts['kept']}")
        return {
            "inputs": [spec.path for spec in self.inputs], "output": str(self.output),
            "removed_output": str(self.removed_output), "rows_in": counts["total"], "rows_out": counts["kept"],
            "stages": stages,
            "sources": {s: {"in": c["in"], "out": c["out"]} for s, c in sorted(counts["sources"].items())},
            "contamination": counts["contamination"],
            "seconds": round(seconds, 3),
            "write_seconds": round(stage_seconds["write"], 3) if "write" in stage_seconds else None,
            "rows_per_second": round(counts["total"] / seconds, 1) if seconds > 0 else None,
        }


def _iter_raw(path: str):
    try:
        yield from iter_raw_rows(path)
    except ValueError as e:  # unsupported file type, invalid JSON: already names the file (and row)
        raise PromptRowError(str(e)) from None


def _chunks(rows, size: int):
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _malformed(raw: Any, where: str, reason: str, error: str) -> dict[str, Any]:
    raw_id = raw.get("id") if isinstance(raw, dict) else None
    detail = json.dumps({"error": error, "raw": raw}, ensure_ascii=False, default=str)
    return {"id": "" if raw_id is None else str(raw_id), "domain": "", "messages": [], "answer": None,
            "tests": None, "instructions": None, "reward": None, "meta": "{}", "_where": where,
            "_stage": "load", "_reason": reason, "_detail": detail}


def _source(row: dict[str, Any]) -> str:
    return json.loads(row["meta"]).get("source", "") if row["meta"] else ""


# -- command line ------------------------------------------------------------------------------
def build_parser() -> ArgumentParser:
    """The `prepare` parser: the job's knobs at the top level, one group per stage."""
    parser = ArgumentParser(prog="ring_lightning prepare", parser_mode="omegaconf",
                            description="Prepare an RL prompt set: clean, deduplicate, decontaminate, verify "
                                        "answers and filter by difficulty (Ring-lite, arXiv 2506.14731).")
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config file.")
    parser.add_class_arguments(Prepare, None, skip=set(STAGES), instantiate=False)
    parser.add_class_arguments(Cleaner, "clean")
    parser.add_class_arguments(Deduplicator, "dedup")
    parser.add_class_arguments(Decontaminator, "decontam")
    parser.add_class_arguments(AnswerVerifier, "verify")
    parser.add_class_arguments(DifficultyFilter, "difficulty")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m ring_lightning prepare` (argv: the arguments after "prepare").

    Returns 0 on success; on a configuration or data error prints one line naming the problem
    (file, row, key) and returns 2 (`RING_LIGHTNING_DEBUG=1` re-raises with the traceback).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # class paths resolve from the working directory, as with -m
    parser = build_parser()
    cfg = parser.parse_args(sys.argv[1:] if argv is None else argv)
    engine = None
    try:
        init = parser.instantiate(cfg)
        engine = init.difficulty.engine
        params = [p for p in inspect.signature(Prepare).parameters if p not in STAGES]
        job = Prepare(**{p: init[p] for p in params}, **{name: init[name] for name in STAGES})
        summary = job.run()
    except (PromptRowError, ValueError, TypeError, FileNotFoundError, ImportError) as e:
        if os.environ.get("RING_LIGHTNING_DEBUG"):
            raise
        sys.stderr.write(f"ring_lightning prepare: error: {type(e).__name__}: {e}\n"
                         "(RING_LIGHTNING_DEBUG=1 shows the traceback)\n")
        return 2
    finally:
        if engine is not None:
            engine.close()
    for stage in summary["stages"]:
        flag = "" if stage["enabled"] else " (off)"
        print(f"{stage['stage']:>10}{flag}: in {stage['in']:>8}  out {stage['out']:>8}  removed {stage['removed']}")
    print(f"wrote {summary['rows_out']} of {summary['rows_in']} rows to {summary['output']} "
          f"({summary['rows_per_second']} rows/s); summary: {job.summary_output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
