"""Model code (plain nn.Module / HF PreTrainedModel, no Lightning).

Importing this package registers the native BailingMoe (Ling / Ring) architecture with transformers'
Auto classes, so `AutoConfig` / `AutoModelForCausalLM` (and `load_policy`) handle
`model_type: "bailing_moe"` checkpoints and presets.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ring_lightning.models.bailing_moe import BailingMoeConfig, BailingMoeForCausalLM, BailingMoeModel

AutoConfig.register(BailingMoeConfig.model_type, BailingMoeConfig, exist_ok=True)
AutoModel.register(BailingMoeConfig, BailingMoeModel, exist_ok=True)
AutoModelForCausalLM.register(BailingMoeConfig, BailingMoeForCausalLM, exist_ok=True)

__all__ = ["BailingMoeConfig", "BailingMoeForCausalLM", "BailingMoeModel"]
