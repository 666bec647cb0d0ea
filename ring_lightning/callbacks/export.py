"""Export a Lightning checkpoint of the SFT stage as an HF-format directory (the RL stage's input).

Ring-lite (arXiv 2506.14731) starts RL from a chosen distillation (SFT) checkpoint; RL here loads
its policy with `ring_lightning.models.loading.load_policy(dir)` and its vLLM engine from the same
directory, so the export is a plain `save_pretrained` directory: config.json, safetensors weights
(transformers >= 5 writes MoE experts under the per-expert names vLLM's loaders expect, see
FINDINGS), generation_config.json and the tokenizer files; a BailingMoe export also carries its model
code and `auto_map`, so it loads without ring_lightning (docs/exports.md).

Choices and details: docs/design.md#callbacks-export.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from ring_lightning.checkpointing import fsync_tree, publish

DEFAULT_MODULE = "ring_lightning.modules.sft.SFTModule"


def resolve_class(module_cls: type[LightningModule] | str) -> type[LightningModule]:
    """A LightningModule class from itself or a dotted path ("pkg.mod.Class")."""
    if isinstance(module_cls, type):
        cls = module_cls
    else:
        mod_name, _, name = str(module_cls).rpartition(".")
        if not mod_name:
            raise ValueError(f"module_cls {module_cls!r} must be a dotted path like 'ring_lightning.modules.sft.SFTModule'")
        try:
            cls = getattr(importlib.import_module(mod_name), name)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"cannot import module_cls {module_cls!r}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
        raise TypeError(f"module_cls {module_cls!r} is not a LightningModule subclass")
    return cls


def load_checkpoint_dict(ckpt_path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint file, or consolidate a distributed checkpoint directory, on CPU."""
    path = Path(ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        ckpt = _load_distributed_checkpoint(path)
        if "state_dict" not in ckpt and "model" in ckpt:  # Fabric-style key for the module weights
            ckpt["state_dict"] = ckpt.pop("model")
    else:
        # Lightning checkpoints hold hparams objects besides tensors: full unpickling, trusted file.
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    if "state_dict" not in ckpt:
        raise KeyError(f"{path}: not a Lightning checkpoint (no 'state_dict'; keys: {sorted(ckpt)[:10]})")
    return ckpt


def module_from_checkpoint(ckpt_path: str | Path, module_cls: type[LightningModule] | str = DEFAULT_MODULE
                           ) -> LightningModule:
    """Rebuild `module_cls` from the checkpoint's hyper-parameters and load its weights (strict), on CPU."""
    from lightning.pytorch.core.saving import _load_state

    cls = resolve_class(module_cls)
    ckpt = load_checkpoint_dict(ckpt_path)
    if not ckpt.get(cls.CHECKPOINT_HYPER_PARAMS_KEY):
        raise KeyError(f"{ckpt_path}: the checkpoint has no saved hyper-parameters, so {cls.__name__} cannot be "
                       f"rebuilt; call self.save_hyperparameters() in {cls.__name__}.__init__")
    module = _load_state(cls, ckpt, strict=True)
    module.eval()
    return module


def save_hf(module: LightningModule, out_dir: str | Path) -> None:
    """Write `module`'s policy + tokenizer as an HF directory (module.export_hf when it exists)."""
    if callable(getattr(module, "export_hf", None)):
        module.export_hf(str(out_dir))
        return
    policy, tokenizer = getattr(module, "policy", None), getattr(module, "tokenizer", None)
    if policy is None or tokenizer is None:
        raise AttributeError(f"export needs {type(module).__name__}.export_hf(dir) or .policy and .tokenizer")
    policy.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def replaceable_export(out: Path) -> bool:
    """An existing `out` that an export may replace: an earlier HF export (with a config.json) or an
    empty directory; anything else is never deleted."""
    return out.is_dir() and ((out / "config.json").is_file() or not any(out.iterdir()))


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path,
                      module_cls: type[LightningModule] | str = DEFAULT_MODULE, overwrite: bool = False) -> Path:
    """Export a Lightning checkpoint (file or distributed dir) to an HF directory; returns `out_dir`.

    Args:
        ckpt_path: the Lightning checkpoint.
        out_dir: the HF directory to create.
        module_cls: the LightningModule class (or its dotted path) that wrote the checkpoint.
        overwrite: replace an existing `out_dir` (only an empty one or an earlier HF export, one
            with a config.json; anything else is never deleted).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"export directory {out} exists; pass overwrite=True or choose another directory")
    if out.exists() and not replaceable_export(out):
        raise FileExistsError(f"refusing to replace {out}: it is not an empty directory or an HF model directory "
                              "(no config.json); choose another export directory")
    module = module_from_checkpoint(ckpt_path, module_cls)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_hf(module, tmp)
    if not (tmp / "config.json").exists():
        raise RuntimeError(f"export of {ckpt_path} wrote no config.json in {tmp}; "
                           f"{type(module).__name__}.export_hf must call save_pretrained")
    fsync_tree(tmp)
    publish(tmp, out)
    return out
