"""The RL stage's HF export and the SFT token count it starts from.

Ring-lite (arXiv 2506.14731, §3–4) chains stages: long-CoT SFT, reasoning RL, general RL; each stage
starts from the previous one's weights. We pass the policy on as an HF-format directory (what
`load_policy` and vLLM load; for BailingMoe with its model code and `auto_map`, docs/exports.md)
plus `ring_lightning_meta.json` with the token counters the token-efficiency callback reads (the
report tracks SFT vs RL token budgets; the file is ours).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

META_FILE = "ring_lightning_meta.json"


SFT_TOKEN_KEYS = ("sft_loss_tokens_seen", "sft_tokens", "sft_tokens_seen")  # preferred first


def sft_token_count(data: dict[str, Any], where: str) -> tuple[Any, str | None]:
    """(value, key) of the SFT token count in a meta / checkpoint dict: the trained (loss) tokens, which
    is what RL's numerator counts. An older record with only `sft_tokens_seen` (prompts included)
    is read with a warning: its token efficiency is understated."""
    for key in SFT_TOKEN_KEYS:
        if key in data:
            if key == "sft_tokens_seen":
                import warnings

                warnings.warn(f"{where} has only 'sft_tokens_seen' (every SFT token, prompts included), no "
                              "'sft_loss_tokens_seen': token efficiency uses it as the denominator and is understated; "
                              "re-export the SFT checkpoint to record the loss tokens", UserWarning, stacklevel=3)
            return data[key], key
    return None, None


def read_sft_tokens(path: Path) -> int:
    """SFT (loss) tokens recorded by the SFT export (`ring_lightning_meta.json`), 0 when absent."""
    meta = path / META_FILE
    if not meta.is_file():
        return 0
    try:
        data = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta}: invalid JSON ({e}); re-export the SFT checkpoint or delete the file") from None
    value, key = sft_token_count(data, str(meta))
    if value is None:
        return 0
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{meta}: {key!r} must be a number, got {value!r}")
    return int(value)


def export_policy(module: Any, directory: str | Path, dtype: str | None = None) -> Path | None:
    """Write `module.policy` as an HF checkpoint (weights, config, tokenizer) plus `META_FILE` (SFT and
    RL token counts). Collective under FSDP2; rank 0 writes and returns the directory (None elsewhere).

    Args:
        module: a built RLModule (policy, tokenizer, token counters).
        directory: output directory (created).
        dtype: dtype of the saved weights; None = the parameter dtype.
    """
    from transformers import AutoModelForCausalLM

    from ring_lightning.models.loading import to_dtype
    from ring_lightning.models.sharding import gather_full_state_dict

    if module.policy is None:
        raise RuntimeError("export_hf: the policy is not built yet (configure_model has not run)")
    state = gather_full_state_dict(module.policy)
    trainer = module._trainer
    out = None
    if (trainer.global_rank if trainer is not None else 0) == 0:
        cpu = AutoModelForCausalLM.from_config(module.policy.config, dtype=to_dtype(dtype) if dtype else None)
        cpu.load_state_dict(state, strict=True)
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        cpu.to(to_dtype(dtype) if dtype else cpu.dtype).save_pretrained(str(out))
        module.tokenizer.save_pretrained(str(out))
        tmp = out / f".tmp-{META_FILE}"  # never a half-written meta file
        tmp.write_text(json.dumps({"sft_loss_tokens_seen": module.sft_tokens, "rl_tokens_trained": module.rl_tokens_trained,
                                   "rl_tokens_generated": module.rl_tokens_generated}) + "\n")
        os.replace(tmp, out / META_FILE)
    if trainer is not None:
        trainer.strategy.barrier("c3po_export_hf")
    return out
