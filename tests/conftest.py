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


def pytest_addoption(parser):
    parser.addoption("--all", action="store_true", default=False,
                     help="also run the slow end-to-end (tests/integration) and vLLM tests; the README's test "
                          "command and .ci/run pass it, a plain `pytest` runs the fast unit tests only")


_VLLM_SOURCES: dict = {}


def _uses_vllm(path) -> bool:
    """A test module that builds the embedded vLLM engine (by name in its source)."""
    if path not in _VLLM_SOURCES:
        text = path.read_text(encoding="utf-8")
        _VLLM_SOURCES[path] = "VLLMEngine" in text or "import vllm" in text or "vllm_engine" in text
    return _VLLM_SOURCES[path]


def pytest_collection_modifyitems(config, items):
    """Mark tests/integration as `slow` and vLLM-engine modules as `vllm`; without --all (or an explicit
    -m) deselect both, so a plain `pytest` is the fast unit suite."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.slow)
        if _uses_vllm(item.path):
            item.add_marker(pytest.mark.vllm)
    if config.getoption("--all") or config.getoption("markexpr"):
        return
    keep = [i for i in items if not (i.get_closest_marker("slow") or i.get_closest_marker("vllm"))]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def tiny_sft_export(tmp_path_factory):
    """The one tiny SFT export the RL tests start from, written by `SFTModule.export_hf` (the RL stage's
    documented input: bailing-tiny, seed 0) with an SFT token count of 200 in `ring_lightning_meta.json`.
    Read-only: tests write their own exports elsewhere."""
    import json

    from ring_lightning.modules.sft import SFTModule

    out = tmp_path_factory.mktemp("tiny_sft_export")
    module = SFTModule(model="bailing-tiny", seed=0)
    module.configure_model()
    module.export_hf(out)
    meta = out / "ring_lightning_meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "sft_tokens_seen": 900, "sft_loss_tokens_seen": 200}))
    return out
