"""Load a policy (+ tokenizer) from a named preset or a local HF-format directory.

`load_policy("bailing-tiny")` builds a randomly initialised tiny model from a preset config (no
download); `load_policy("/path/to/checkpoint")` loads any HF causal LM saved with `save_pretrained`
(this project's BailingMoe, Qwen3-MoE, OLMoE, Mixtral, dense Qwen3, ...).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from ring_lightning.models.presets import PRESETS

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def shipped_tokenizer_dir() -> Path:
    """Directory of the small byte-level BPE tokenizer shipped in the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "tokenizer"


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (default: the shipped one)."""
    path = Path(path) if path is not None else shipped_tokenizer_dir()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_config(model: str | Path, **overrides) -> PretrainedConfig:
    """The model config for a preset name or a local checkpoint directory, with field overrides."""
    import ring_lightning.models  # noqa: F401  (registers bailing_moe with the Auto classes)

    name = str(model)
    if name in PRESETS:
        spec = dict(PRESETS[name])
        model_type = spec.pop("model_type")
        spec.update(overrides)
        return AutoConfig.for_model(model_type, **spec)
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {name!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a local checkpoint directory"
        )
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model directory {path} has no config.json (expected an HF-format checkpoint)")
    return AutoConfig.from_pretrained(str(path), local_files_only=True, **overrides)


def load_policy(
    model: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    tokenizer: str | Path | None = None,
    seed: int | None = None,
    **overrides,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build or load a causal LM and its tokenizer.

    Args:
        model: a preset name (see `presets.PRESETS`) or a local HF-format directory.
        dtype: parameter dtype.
        tokenizer: tokenizer directory; default: the checkpoint's own, else the shipped one.
        seed: seed for the random init of a preset (ignored for checkpoints).
        overrides: config fields to override.
    """
    torch_dtype = to_dtype(dtype)
    config = build_config(model, **overrides)
    path = Path(str(model))
    if str(model) in PRESETS:
        if seed is not None:
            torch.manual_seed(seed)
        policy = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        tok_dir = tokenizer
    else:
        policy = AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=torch_dtype,
                                                      local_files_only=True)
        has_tok = (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()
        tok_dir = tokenizer if tokenizer is not None else (path if has_tok else None)
    return policy, load_tokenizer(tok_dir)
