"""RNG states in checkpoints, for exact resume after a crash.

Lightning's trainer checkpoints hold model, optimizer, scheduler, loop and callback states but not
the random number generators. A resumed RL or SFT run that re-seeds from scratch samples different
dropout masks / prompt orders / engine seeds than the uninterrupted run would have. Both modules
store these states under `checkpoint["ring_lightning_rng"]` and restore them on load, per rank (each
rank saves its own states in its own checkpoint shard; with a single consolidated file the states of
rank 0 are restored everywhere — documented limitation).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

KEY = "ring_lightning_rng"


def collect_rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA when initialised) generator states.

    NumPy's key array is stored as an int64 tensor: Lightning resumes with
    `torch.load(weights_only=True)`, which refuses NumPy arrays.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {"python": random.getstate(),
                              "numpy": (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss),
                                        float(cached)),
                              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any] | None) -> bool:
    """Restore what `collect_rng_states` captured; False when `states` is None (old checkpoint)."""
    if not states:
        return False
    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    if isinstance(keys, torch.Tensor):
        keys = keys.numpy().astype("uint32")
    np.random.set_state((name, keys, pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    return True
