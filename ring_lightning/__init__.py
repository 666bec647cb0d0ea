"""ring_lightning: the Ring-lite-2507 recipe (long-CoT SFT + C3PO RL for MoE LLMs) on PyTorch Lightning."""

__version__ = "0.1.0"
