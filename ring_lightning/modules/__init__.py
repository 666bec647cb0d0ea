"""LightningModules: `SFTModule` (sft.py, long-CoT SFT) and `RLModule` (rl.py, RL with an injected
objective; `modules/c3po.py` keeps its old name `C3POModule` as an alias)."""
