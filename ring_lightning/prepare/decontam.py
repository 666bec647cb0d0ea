"""Decontamination of RL prompts against public benchmarks by word n-gram overlap.

Ring-lite (arXiv 2506.14731, RL data curation) removes training problems that overlap the
evaluation benchmarks (AIME, GPQA-Diamond, MATH-500, LiveCodeBench, ...) by n-gram matching, without
fixing n or the tokenisation. We follow the common 13-gram rule (GPT-3 / OLMo style): lower-cased
`\\w+` word tokens, so LaTeX delimiters, punctuation and spacing do not hide a copy; a training row
is contaminated if it shares ANY n-gram with ANY benchmark item.

Short benchmark items (fewer than `ngram` words, e.g. "Compute $\\dbinom{8}{4}$.") have no n-gram;
our choice: an item with at least `min_ngram` words is matched as a whole (the row must contain
its full word sequence); shorter items are not checked and counted in the summary
(`short_items_skipped`), since matching 3-word sequences would flag unrelated problems.

Benchmarks are local JSONL / JSON / Parquet files (no downloads); the text field is configurable.
Each removed row records the benchmark, the benchmark item id and the n-gram it hit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ring_lightning.prepare.rows import MARK_COLUMNS, Removal, RowMarker, StageRunner, user_text, words
from ring_lightning.data.prompts import iter_raw_rows


_NO_BENCHMARKS = ("decontam is enabled but decontam.benchmarks is empty: list the benchmark files "
                  "(name, path, field) or set decontam.enabled: false")


@dataclass
class BenchmarkSpec:
    """A benchmark to decontaminate against.

    Args:
        name: the benchmark's name in removal records and the summary (e.g. "math500").
        path: local .jsonl / .json / .parquet file (or a `datasets` directory).
        field: the item field holding the problem text.
        id_field: the item field holding its id; default: the row number in the file.
    """

    name: str
    path: str
    field: str = "problem"
    id_field: str | None = None


class Decontaminator:
    """The decontamination stage.

    Args:
        enabled: run this stage (needs at least one benchmark).
        benchmarks: the benchmark files to check against.
        ngram: n-gram length in words; a row sharing one n-gram with a benchmark item is removed.
        min_ngram: benchmark items shorter than `ngram` words but at least this long are matched
            as a whole word sequence; shorter ones are skipped (and counted in the summary).
    """

    name = "decontam"

    def __init__(self, enabled: bool = True, benchmarks: list[BenchmarkSpec] = [],  # noqa: B006
                 ngram: int = 13, min_ngram: int = 8):
        if ngram < 1 or not 1 <= min_ngram <= ngram:
            raise ValueError(f"decontam needs 1 <= min_ngram <= ngram, got min_ngram={min_ngram}, ngram={ngram}")
        if enabled and not benchmarks:
            raise ValueError(_NO_BENCHMARKS)
        self.enabled = enabled
        self.benchmarks = list(benchmarks)
        self.ngram = ngram
        self.min_ngram = min_ngram
        # gram length -> {(w1, ..., wn): (benchmark name, item id)}; built by `setup`.
        self.index: dict[int, dict[tuple[str, ...], tuple[str, str]]] = {}
        self.stats: dict[str, dict[str, int]] = {}

    def setup(self) -> None:
        """Read every benchmark and build the n-gram index (once, before the rows are mapped)."""
        if not self.benchmarks:
            raise ValueError(_NO_BENCHMARKS)
        self.index, self.stats = {}, {}
        names = Counter(b.name for b in self.benchmarks)
        if any(c > 1 for c in names.values()):
            raise ValueError(f"decontam.benchmarks: duplicate names {[n for n, c in names.items() if c > 1]}")
        for spec in self.benchmarks:
            if not Path(spec.path).exists():
                raise FileNotFoundError(f"decontam benchmark {spec.name!r}: file not found: {spec.path}")
            stat = {"items": 0, "ngrams": 0, "short_items_matched_whole": 0, "short_items_skipped": 0}
            for i, raw in tqdm(iter_raw_rows(spec.path), desc=f"decontam: index {spec.name}", unit=" items"):
                text = raw.get(spec.field) if isinstance(raw, dict) else None
                if not isinstance(text, str):
                    keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
                    raise ValueError(f"{spec.path} row {i}: benchmark {spec.name!r} needs a string field "
                                     f"{spec.field!r} (decontam.benchmarks[].field); the row has {keys}")
                item_id = str(raw.get(spec.id_field, i)) if spec.id_field else str(i)
                stat["items"] += 1
                toks = tuple(words(text))
                if len(toks) >= self.ngram:
                    table = self.index.setdefault(self.ngram, {})
                    for j in range(len(toks) - self.ngram + 1):
                        table.setdefault(toks[j:j + self.ngram], (spec.name, item_id))
                        stat["ngrams"] += 1
                elif len(toks) >= self.min_ngram:
                    self.index.setdefault(len(toks), {}).setdefault(toks, (spec.name, item_id))
                    stat["short_items_matched_whole"] += 1
                else:
                    stat["short_items_skipped"] += 1
            self.stats[spec.name] = stat

    def apply(self, ds, runner: StageRunner):
        """Build the index, then mark contaminated rows (parallel map)."""
        self.setup()
        columns = ("messages", *MARK_COLUMNS)
        return runner.map(ds, RowMarker(self.name, self, columns), desc=self.name, input_columns=list(columns))

    def report(self) -> dict[str, Any]:
        """Per-benchmark index statistics for the summary."""
        return {"ngram": self.ngram, "min_ngram": self.min_ngram, "benchmarks": self.stats}

    def close(self) -> None:
        """Nothing to release."""

    def __call__(self, row: dict[str, Any]) -> Removal | None:
        """Removal("contaminated", {benchmark, benchmark_id, ngram}) for the first hit, else None."""
        toks = tuple(words(user_text(row)))
        for n, table in self.index.items():
            for j in range(len(toks) - n + 1):
                hit = table.get(toks[j:j + n])  # tuple slices: no string joins on the hot path
                if hit is not None:
                    return Removal("contaminated", {"benchmark": hit[0], "benchmark_id": hit[1],
                                                    "ngram": " ".join(toks[j:j + n])})
        return None
