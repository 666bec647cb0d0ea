"""What the pipeline reads from, and fixes in, a finished stage's outputs (see `pipeline.py`).

Ring-lite (arXiv 2506.14731, §3) passes each stage's model to the next (SFT -> reasoning RL ->
general RL); here that model is an HF export of the stage's checkpoint. These helpers choose the
checkpoint, read the SFT token count it carries (the token-efficiency denominator) and make the
export ready for inference. Choices: the RL checkpoint of the highest global step is exported (the
periodic `last.ckpt` misses the final steps when max_steps is not a multiple of its interval);
checkpoints are read with `weights_only=False` because they are this pipeline's own files, and only
their metadata is read (a memory-mapped file or a distributed checkpoint's `meta.pt`): a Ring-lite
checkpoint holds tens of GB of weights and optimizer state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def enable_kv_cache(export: Path) -> None:
    """Set `use_cache: true` in the export's config.json / generation_config.json.

    The RL module trains with `use_cache=False` and that flag is saved with the weights; transformers'
    `generate` then samples without a KV cache (measured: 17x slower on the quickstart model), in the
    next stage's HF-engine rollouts and in the held-out evaluation. The export is for inference."""
    for name in ("config.json", "generation_config.json"):
        path = export / name
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text())
        if cfg.get("use_cache") is False:
            cfg["use_cache"] = True
            tmp = path.with_name(f".tmp-{name}")
            tmp.write_text(json.dumps(cfg, indent=2) + "\n")
            os.replace(tmp, path)


def fresh_export(export: Path, started: float) -> bool:
    """An HF directory the stage wrote itself during this attempt."""
    cfg = export / "config.json"
    return cfg.is_file() and cfg.stat().st_mtime >= started - 1.0


def latest_checkpoint(paths: list[Path]) -> str:
    """The existing checkpoint (file, or FSDP2 distributed checkpoint directory) with the highest global
    step (the periodic `last.ckpt` misses the final steps when max_steps is not a multiple of its
    interval; `end/last.ckpt` is written at fit end). Only metadata is read (`checkpoint_metadata`)."""
    from ring_lightning.checkpointing import checkpoint_metadata, is_distributed_checkpoint

    found = [p for p in paths if p.is_file() or is_distributed_checkpoint(p)]
    if not found:
        return str(paths[-1])
    steps = {p: checkpoint_metadata(p).get("global_step", -1) for p in found}
    return str(max(found, key=lambda p: steps[p]))


def ckpt_sft_tokens(ckpt: str) -> int | None:
    """The SFT token count an RL checkpoint carries (RLModule's `c3po.sft_tokens`)."""
    from ring_lightning.checkpointing import checkpoint_metadata

    value = (checkpoint_metadata(ckpt).get("c3po") or {}).get("sft_tokens")
    return int(value) if value else None
