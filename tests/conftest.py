"""Test-wide settings: no network, in-process vLLM with a small KV cache, quiet tokenizers."""

import os

# Must be set before vllm is imported anywhere in the test process.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _real_torch_set_num_threads():
    """vLLM's CPU worker replaces `torch.set_num_threads` process-wide with a no-op; a test module that
    starts vLLM directly would leak that into later modules. Restore the real function around each."""
    torch.set_num_threads = torch._C.set_num_threads
    yield
    torch.set_num_threads = torch._C.set_num_threads
