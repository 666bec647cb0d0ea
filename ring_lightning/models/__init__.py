"""Model code (plain nn.Module / HF PreTrainedModel, no Lightning).

Importing this package registers the native BailingMoe (Ling / Ring) architecture with transformers'
Auto classes, so `AutoConfig` / `AutoModelForCausalLM` (and `load_policy`) handle
`model_type: "bailing_moe"` checkpoints and presets, and marks its classes as custom code
(`register_for_auto_class`): `save_pretrained` then copies `remote_code/*.py` next to the weights and
writes `auto_map`, so an export loads elsewhere with `trust_remote_code=True` (docs/exports.md).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ring_lightning.models.bailing_moe import BailingMoeConfig, BailingMoeForCausalLM, BailingMoeModel

AutoConfig.register(BailingMoeConfig.model_type, BailingMoeConfig, exist_ok=True)
AutoModel.register(BailingMoeConfig, BailingMoeModel, exist_ok=True)
AutoModelForCausalLM.register(BailingMoeConfig, BailingMoeForCausalLM, exist_ok=True)
BailingMoeConfig.register_for_auto_class("AutoConfig")
BailingMoeModel.register_for_auto_class("AutoModel")
BailingMoeForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["BailingMoeConfig", "BailingMoeForCausalLM", "BailingMoeModel"]
