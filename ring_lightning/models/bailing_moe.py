"""BailingMoe (Ling / Ring architecture): the library's import path for the model classes.

The code lives in `remote_code/` (configuration_bailing_moe.py, modeling_bailing_moe.py,
routing_bailing_moe.py), standalone files that every export carries, so an export loads with
`trust_remote_code=True` where ring_lightning is not installed and runs the very code trained here.

Choices and details: docs/design.md#models-bailing-moe.
"""

from ring_lightning.models.remote_code.configuration_bailing_moe import MOE_IMPLEMENTATIONS, BailingMoeConfig
from ring_lightning.models.remote_code.modeling_bailing_moe import (BailingMoeAttention, BailingMoeCausalLMOutput,
                                                                    BailingMoeDecoderLayer, BailingMoeForCausalLM,
                                                                    BailingMoeGate, BailingMoeMLP, BailingMoeModel,
                                                                    BailingMoePreTrainedModel, BailingMoeRMSNorm,
                                                                    BailingMoeRotaryEmbedding,
                                                                    BailingMoeSparseMoeBlock)
from ring_lightning.models.remote_code.routing_bailing_moe import EXPERT_IMPLEMENTATIONS

__all__ = ["BailingMoeConfig", "BailingMoeModel", "BailingMoeForCausalLM", "BailingMoeCausalLMOutput",
           "BailingMoeAttention", "BailingMoeDecoderLayer", "BailingMoeGate", "BailingMoeMLP",
           "BailingMoePreTrainedModel", "BailingMoeRMSNorm", "BailingMoeRotaryEmbedding", "BailingMoeSparseMoeBlock",
           "EXPERT_IMPLEMENTATIONS", "MOE_IMPLEMENTATIONS"]
