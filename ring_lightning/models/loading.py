"""Load a policy (+ tokenizer) from a named preset or a local HF-format directory.

`load_policy("bailing-tiny")` builds a randomly initialised tiny model from a preset config (no
download); `load_policy("/path/to/checkpoint")` loads any HF causal LM saved with `save_pretrained`
(this project's BailingMoe, Qwen3-MoE, OLMoE, Mixtral, dense Qwen3, ...).

Bad inputs are errors that name the path and the fix: a path that is neither a preset nor a directory,
a directory without config.json or weights, an unreadable config / weights / tokenizer
(`ModelLoadError`), and a tokenizer with more tokens than the model's vocabulary. float64 models use
transformers' eager MoE expert loop (its grouped_mm kernel has no float64 path).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from ring_lightning.models.presets import PRESETS

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}
CHECKPOINT_HINT = "expected a directory written by save_pretrained / export_hf"


class ModelLoadError(ValueError):
    """A model or tokenizer directory exists but cannot be loaded; the message names the path and the fix."""


def shipped_tokenizer_dir() -> Path:
    """Directory of the small byte-level BPE tokenizer shipped in the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "tokenizer"


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def checkpoint_tokenizer(model: str | Path) -> Path | None:
    """`model` when it is a directory holding a tokenizer (tokenizer.json / tokenizer_config.json), else None
    (a preset name, or a checkpoint without one: the shipped tokenizer is used)."""
    path = Path(str(model))
    if path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return path
    return None


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (default: the shipped one)."""
    path = Path(path) if path is not None else shipped_tokenizer_dir()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer directory not found: {path}; pass a directory with tokenizer.json / "
                                "tokenizer_config.json (e.g. the model checkpoint), or null for the shipped one")
    if not path.is_dir():
        raise ModelLoadError(f"tokenizer path {path} is a file; pass its directory (with tokenizer.json / "
                             "tokenizer_config.json, as written by save_pretrained)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises OSError / ValueError / JSONDecodeError / tokenizers errors
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise ModelLoadError(
            f"tokenizer directory {path} cannot be loaded ({type(e).__name__}: {_first_line(e)}); it holds {found}. "
            "It needs tokenizer.json and tokenizer_config.json as written by tokenizer.save_pretrained; "
            "re-save the tokenizer or point `tokenizer` at another directory") from e
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
        what = "a file" if path.exists() else "not found"
        raise FileNotFoundError(
            f"model {name!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a local checkpoint directory "
            f"({what}); pass a preset name or a checkpoint directory ({CHECKPOINT_HINT})"
        )
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model directory {path} has no config.json ({CHECKPOINT_HINT}, "
                                "or an SFT/RL export directory)")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True, **overrides)
    except Exception as e:  # invalid JSON, unknown or missing model_type, bad field values
        raise ModelLoadError(f"{path / 'config.json'} cannot be read as a model config ({type(e).__name__}: "
                             f"{_first_line(e)}); fix or re-export the checkpoint") from e


def _first_line(exc: BaseException, limit: int = 300) -> str:
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[:limit] + "..."


def _check_vocab(tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig, model: str, tok_dir) -> None:
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        which = f"tokenizer {tok_dir}" if tok_dir is not None else "the shipped tokenizer (the checkpoint has none)"
        raise ModelLoadError(
            f"{which} has {len(tokenizer)} tokens but model {model} has vocab_size={vocab}: token ids past the "
            "embedding table would crash training. Use the model's own tokenizer (`tokenizer`), or a model "
            "with a large enough vocab_size")


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
    # transformers' default MoE kernel (grouped_mm) has no float64 path; its eager loop does
    kwargs = {"experts_implementation": "eager"} if torch_dtype == torch.float64 else {}
    if str(model) in PRESETS:
        if seed is not None:
            torch.manual_seed(seed)
        policy = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, **kwargs)
        tok_dir = tokenizer
    else:
        weights = [p.name for p in path.iterdir() if p.name.endswith((".safetensors", ".bin", ".index.json"))]
        if not weights:
            raise FileNotFoundError(f"model directory {path} has a config.json but no weights (model.safetensors or "
                                    f"pytorch_model.bin); {CHECKPOINT_HINT}, or pass a preset name")
        try:
            policy = AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=torch_dtype,
                                                          local_files_only=True, **kwargs)
        except Exception as e:  # truncated / corrupt weights, shapes that do not match the config, ...
            raise ModelLoadError(f"model weights in {path} cannot be loaded ({type(e).__name__}: {_first_line(e)}); "
                                 f"files: {', '.join(sorted(weights))}. Re-export the checkpoint (a file may be "
                                 "truncated) or check that config.json matches the weights") from e
        tok_dir = tokenizer if tokenizer is not None else checkpoint_tokenizer(path)
    tok = load_tokenizer(tok_dir)
    _check_vocab(tok, config, str(model), tok_dir)
    return policy, tok


def tokenizer_differences(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> list[str]:
    """How two tokenizers differ in what changes token ids or templates (empty = interchangeable):
    vocabulary (size and token -> id map), special tokens (eos / pad / bos / unk and the added
    special tokens, by id) and chat template."""
    diffs: list[str] = []
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        moved = sum(1 for t, i in va.items() if vb.get(t) != i)
        diffs.append(f"vocabulary ({len(va)} vs {len(vb)} tokens, {moved} with another or no id)")
    for role in ("eos", "pad", "bos", "unk"):
        ta, tb = getattr(a, f"{role}_token", None), getattr(b, f"{role}_token", None)
        ia, ib = getattr(a, f"{role}_token_id", None), getattr(b, f"{role}_token_id", None)
        if (ta, ia) != (tb, ib):
            diffs.append(f"{role} token ({ta!r} id {ia} vs {tb!r} id {ib})")
    sa, sb = sorted(a.all_special_tokens), sorted(b.all_special_tokens)
    if sa != sb:
        diffs.append(f"special tokens ({sorted(set(sa) - set(sb))[:4]} vs {sorted(set(sb) - set(sa))[:4]})")
    if getattr(a, "chat_template", None) != getattr(b, "chat_template", None):
        diffs.append("chat template")
    return diffs
