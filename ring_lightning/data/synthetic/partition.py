"""The fixed train / probe / eval partition of the quickstart's synthetic tasks, by structure.

A held-out question must test the skill, not recall: the issue that introduced this file measured
79 of 80 held-out sums being permutations of training sums. So the partition is decided by each
problem's *structure key*, never by its wording:

* addition (``a + b + c``): the sorted operands — no held-out sum is a permutation of a training sum;
* countdown: the sorted numbers — no held-out puzzle reuses a training puzzle's numbers;
* instruction pairs: the pair of constraint families — held-out prompts combine families that no
  training prompt combines (`instruction_pairs.HELDOUT_PAIRS`), each family itself seen in training;
  a control prompt (no constraint) by its question text;
* the single-constraint instruction task (older): the question text.

A key's bucket is CRC-32 of ``"<kind>:<key>"`` mod 100: below `EVAL_PERCENT` the evaluation part,
then `PROBE_PERCENT` the probe part (EntropyMonitor samples it during SFT; never evaluated), the
rest train. Instruction pairs: a held-out pair goes to eval or probe (by the same CRC), a training
pair to train. Numbers on the 729 ordered sums: 214 eval, 63 probe, 452 train.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Literal

from ring_lightning.data.synthetic.instruction_pairs import HELDOUT_PAIRS

Side = Literal["train", "probe", "eval"]
EVAL_PERCENT = 35
PROBE_PERCENT = 10


def structure_key(kind: str, question: str, meta: Mapping[str, Any]) -> str:
    """What decides the side of a problem (module docstring)."""
    if kind == "addition":
        return "+".join(str(t) for t in sorted(int(x) for x in meta["expression"].split(" + ")))
    if kind in ("countdown", "countdown_small"):
        return ",".join(str(n) for n in sorted(meta["numbers"]))
    if kind == "instruction_pairs":
        return "|".join(sorted(meta["families"]))
    return question


def _bucket(kind: str, key: str) -> Side:
    b = zlib.crc32(f"{kind}:{key}".encode("utf-8")) % 100
    return "eval" if b < EVAL_PERCENT else "probe" if b < EVAL_PERCENT + PROBE_PERCENT else "train"


def side_of(kind: str, question: str, meta: Mapping[str, Any]) -> Side:
    """"train", "probe" or "eval": the side of one generated problem."""
    if kind == "instruction_pairs":
        if not meta["families"]:  # a control prompt: by its text, like any other question
            return _bucket(kind, question)
        if tuple(sorted(meta["families"])) not in HELDOUT_PAIRS:
            return "train"
        return "probe" if _bucket(kind, question) == "probe" else "eval"
    return _bucket(kind, structure_key(kind, question, meta))
