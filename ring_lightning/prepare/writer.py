"""Writers for the prepare pipeline's outputs: the prompt set (JSONL / Parquet) and removed rows.

Kept rows are written with `PromptRow.to_dict` after a final `parse_row` validation, so the file
re-loads with `prompts.load_prompts`. In Parquet the per-row objects (`tests`, `instructions`,
`meta`) are JSON strings, because their keys differ between rows and Arrow needs one struct type
per column; `parse_row` decodes them. Files are written to `<name>.tmp` and renamed on success, so
a failed run never leaves a half-written output that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ring_lightning.prepare.rows import output_dict

PARQUET_SCHEMA = pa.schema([
    ("id", pa.string()), ("domain", pa.string()),
    ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ("answer", pa.string()), ("tests", pa.string()), ("instructions", pa.string()),
    ("reward", pa.string()), ("meta", pa.string()),
])


class RowWriter:
    """Context manager writing internal rows to `path` (.jsonl or .parquet).

    Args:
        path: destination file.
        removed: write removal records `{"stage", "reason", "detail", "where", "id", "row"}`
            (JSONL only) instead of prompt rows.
        buffer_rows: Parquet rows per row group.
    """

    def __init__(self, path: str | Path, removed: bool = False, buffer_rows: int = 4096):
        self.path = Path(path)
        self.removed = removed
        self.parquet = self.path.suffix == ".parquet"
        if removed and self.parquet:
            raise ValueError(f"removed-rows file {self.path} must be .jsonl")
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.buffer_rows = buffer_rows
        self._buf: list[dict[str, Any]] = []
        self._file = None
        self._pq: pq.ParquetWriter | None = None

    def __enter__(self) -> RowWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.parquet:
            self._pq = pq.ParquetWriter(str(self.tmp), PARQUET_SCHEMA)
        else:
            self._file = self.tmp.open("w", encoding="utf-8")
        return self

    def write(self, row: dict[str, Any]) -> None:
        if self.removed:
            record = {"stage": row["_stage"], "reason": row["_reason"],
                      "detail": json.loads(row["_detail"]) if row["_detail"] else {},
                      "where": row["_where"], "id": row["id"],
                      "row": output_dict(row) if row["_stage"] != "load" else None}
            self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            return
        d = output_dict(row)
        if not self.parquet:
            self._file.write(json.dumps(d, ensure_ascii=False) + "\n")
            return
        for key in ("tests", "instructions", "meta"):
            if key in d:
                d[key] = json.dumps(d[key], ensure_ascii=False)
        self._buf.append(d)
        if len(self._buf) >= self.buffer_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._pq.write_table(pa.Table.from_pylist(self._buf, schema=PARQUET_SCHEMA))
            self._buf = []

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pq is not None:
            if exc_type is None:
                self._flush()
            self._pq.close()
        if self._file is not None:
            self._file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
