"""Long-CoT SFT data: `SFTDataModule` (datamodule.py), conversation rows and assistant masks
(rows.py), sequence packing with per-document attention (packing.py)."""

from ring_lightning.data.sft.datamodule import SFTDataModule

__all__ = ["SFTDataModule"]

SFTDataModule.__module__ = "ring_lightning.data.sft"  # short class path in configs, --help and printed configs
