"""Code rewards: `CodeReward` (reward.py) runs model programs only inside the sandbox (sandbox.py,
sandbox_init.py), with the in-sandbox harness (harness.py), exact assert probes and capped I/O."""

from ring_lightning.rewards.code.reward import CodeReward

__all__ = ["CodeReward"]

CodeReward.__module__ = "ring_lightning.rewards.code"  # short class path in configs, --help and printed configs
