"""The GPU path's steps that a CPU can check (docs/gpu_path.md): one engine per rank placed by
external_launcher on the rank's own device, weights woken before the KV cache, a level-2 sleep never
sampled from before a sync, and the weight sync from a 2-rank gloo FSDP2 policy (models/sharding.py):
full tensors with checkpoint names, per-expert names, bf16 gathered (cast before the all-gather), one
decoder layer materialised at a time, never the whole model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ring_lightning.rollout.engine import EngineError
from ring_lightning.rollout.vllm_placement import SleepState, engine_env, executor_backend

REPO = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------ placement


def test_executor_backend_per_rank():
    assert executor_backend(None, 1, 1, on_cuda=True) is None  # one process: vLLM's own choice
    assert executor_backend("uni", 1, 1, on_cuda=True) == "uni"
    assert executor_backend(None, 1, 8, on_cuda=True) == "external_launcher"  # device from LOCAL_RANK
    assert executor_backend("external_launcher", 1, 8, on_cuda=True) == "external_launcher"
    assert executor_backend(None, 1, 2, on_cuda=False) is None  # vLLM-CPU: one engine per rank as is
    with pytest.raises(ValueError, match="would start every rank's engine on cuda:0"):
        executor_backend("uni", 1, 8, on_cuda=True)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 under a trainer of 8 ranks"):
        executor_backend(None, 2, 8, on_cuda=True)


def test_engine_env_is_the_trainers_rank_and_device_only_while_the_engine_starts(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")  # e.g. Lightning's, with one visible GPU per process
    monkeypatch.delenv("RANK", raising=False)
    with engine_env("external_launcher", rank=13, cuda_device=0):
        assert (os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("13", "0")
    assert os.environ["LOCAL_RANK"] == "5" and "RANK" not in os.environ
    with engine_env(None, rank=13, cuda_device=0):
        assert os.environ["LOCAL_RANK"] == "5" and "RANK" not in os.environ


# ------------------------------------------------------------------ sleep / wake


class FakeLLM:
    """Records vLLM's sleep API calls; `fully_awake` is what `wake_up(tags=["kv_cache"])` returns."""

    def __init__(self, fully_awake: bool = True):
        self.calls: list[str] = []
        self.fully_awake = fully_awake

    def sleep(self, level):
        self.calls.append(f"sleep:{level}")

    def wake_up(self, tags=None):
        self.calls.append(f"wake:{','.join(tags)}")
        return self.fully_awake if tags == ["kv_cache"] else False


def test_weights_wake_before_the_kv_cache_and_only_once():
    llm = FakeLLM()
    state = SleepState(llm, level=1)
    state.ready_to_generate()  # never slept: nothing to wake
    state.sleep()
    state.sleep()  # already asleep: vLLM is not asked twice
    state.wake_weights()  # the slot wakes before a sync: no KV-cache memory yet
    assert llm.calls == ["sleep:1", "wake:weights"]
    state.wake_weights()
    state.ready_to_generate()
    state.ready_to_generate()
    assert llm.calls == ["sleep:1", "wake:weights", "wake:kv_cache"]
    state.sleep()
    state.ready_to_generate()  # level 1 kept the weights: generation may follow without a sync
    assert llm.calls[3:] == ["sleep:1", "wake:weights", "wake:kv_cache"]


def test_level_two_sleep_needs_a_sync_before_generating():
    llm = FakeLLM()
    state = SleepState(llm, level=2)
    state.sleep()
    state.wake_weights()
    with pytest.raises(EngineError, match="sleep_level=2 discarded the engine's weights"):
        state.ready_to_generate()
    assert llm.calls == ["sleep:2", "wake:weights"]  # the KV cache stays released
    state.synced()
    state.ready_to_generate()
    assert llm.calls == ["sleep:2", "wake:weights", "wake:kv_cache"]


def test_sleep_errors_are_named():
    with pytest.raises(ValueError, match="sleep_level must be 1 .* or 2 .*got 3"):
        SleepState(None, 3)
    state = SleepState(FakeLLM(fully_awake=False), level=1)
    state.sleep()
    with pytest.raises(EngineError, match="not fully awake"):
        state.ready_to_generate()


# ------------------------------------------------------------------ weight sync from 2 gloo ranks

FSDP_SYNC = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp

    def run(rank, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE="2")
        dist.init_process_group("gloo", rank=rank, world_size=2)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor
        from transformers.core_model_loading import revert_weight_conversion
        from ring_lightning.models.loading import build_config, load_policy
        from ring_lightning.models.sharding import build_sharded_policy
        from ring_lightning.rollout.weight_sync import CheckpointNamer, checkpoint_chunks, layer_key, sync_vllm_weights
        mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        result = {}
        for preset in ("bailing-tiny", "qwen3-moe-tiny"):
            full, _ = load_policy(preset, seed=0, head_dim=32)  # what rank 0 loads; the reference here
            ref = {k: v.to(torch.bfloat16) for k, v in revert_weight_conversion(full, dict(full.state_dict())).items()}
            policy = build_sharded_policy(lambda: load_policy(preset, seed=0, head_dim=32)[0], full.config,
                                          torch.float32, mesh, torch.device("cpu"), mixed_precision="bf16")
            gathered = []  # dtype of each all-gather
            original = DTensor.full_tensor
            def spy(self, *a, **k):
                gathered.append(str(self.dtype))
                return original(self, *a, **k)
            DTensor.full_tensor = spy
            names, max_bytes, lazy = {}, 0, True
            for chunk in checkpoint_chunks(policy.named_parameters(), CheckpointNamer(policy), torch.bfloat16):
                keys = {layer_key(n) for n, _ in chunk}
                lazy &= len(keys) == 1 and len(gathered) == n_params(policy, gathered_so_far=keys, seen=names)
                max_bytes = max(max_bytes, sum(t.numel() * t.element_size() for _, t in chunk))
                for n, t in chunk:
                    names[n] = (list(t.shape), str(t.dtype), bool(torch.equal(t, ref[n])), type(t).__name__)
            DTensor.full_tensor = original
            layer_bytes = {}
            for n, t in ref.items():
                layer_bytes[layer_key(n)] = layer_bytes.get(layer_key(n), 0) + t.numel() * 2
            stats = sync_vllm_weights(FakeEngine(), checkpoint_chunks(policy.named_parameters(),
                                                                   CheckpointNamer(policy), torch.bfloat16))
            result[preset] = dict(
                same_names=sorted(names) == sorted(ref), all_equal=all(v[2] for v in names.values()),
                dtypes=sorted({v[1] for v in names.values()}), types=sorted({v[3] for v in names.values()}),
                shapes_ok=all(v[0] == list(ref[n].shape) for n, v in names.items()),
                gathered=sorted(set(gathered)), n_gathered=len(gathered), lazy=lazy,
                max_chunk=max_bytes, max_layer=max(layer_bytes.values()), model=sum(layer_bytes.values()),
                sync_bytes=stats.bytes, sync_tensors=stats.tensors, n_names=len(names),
                expert_names=sum(".experts." in n for n in names),
                dtensor_params=sum(isinstance(p, DTensor) for p in policy.parameters()))
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(result, f)
        dist.destroy_process_group()

    def n_params(policy, gathered_so_far, seen):
        # trainer tensors of the layers streamed so far (this chunk's included): gathers must not run ahead
        from ring_lightning.rollout.weight_sync import clean_name, layer_key
        done = {layer_key(n) for n in seen} | gathered_so_far
        return sum(layer_key(clean_name(n)) in done for n, _ in policy.named_parameters())

    class FakeEngine:  # the engine side of sync_vllm_weights: what collective_rpc receives
        def collective_rpc(self, fn, args=()):
            return [[]] if fn.__name__ == "_finish_reload" else [None]
        def reset_prefix_cache(self):
            pass

    if __name__ == "__main__":
        mp.spawn(run, args=(sys.argv[2], sys.argv[1]), nprocs=2)
""")


@pytest.fixture(scope="module")
def two_rank_sync(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_path")
    script = tmp / "fsdp_sync.py"
    script.write_text(FSDP_SYNC)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp), port], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("preset", ["bailing-tiny", "qwen3-moe-tiny"])
def test_two_rank_fsdp2_sync_streams_bf16_full_tensors_one_layer_at_a_time(two_rank_sync, preset):
    for rank in two_rank_sync:
        r = rank[preset]
        assert r["dtensor_params"] > 0  # the policy really is sharded over the two ranks
        assert r["same_names"] and r["shapes_ok"] and r["all_equal"]  # checkpoint names, full values
        assert r["dtypes"] == ["torch.bfloat16"] and r["types"] == ["Tensor"]  # plain bf16 tensors
        assert r["gathered"] == ["torch.bfloat16"]  # fp32 master shards cast before the all-gather
        assert r["lazy"]  # a chunk's tensors are gathered when it is built, not ahead
        assert r["max_chunk"] == r["max_layer"] < r["model"] / 2  # one decoder layer, never the model
        assert r["sync_bytes"] == r["model"] and r["sync_tensors"] == r["n_names"]  # what the engine received
        # per-expert tensors, as vLLM's loaders name them: 2 MoE layers x 8 experts x gate/up/down (bailing-tiny's
        # first layer is dense; qwen3-moe-tiny's fused [E, 2I, H] / [E, H, I] experts are split by the namer)
        assert r["expert_names"] == 2 * 8 * 3
    assert two_rank_sync[0] == two_rank_sync[1]  # every rank's engine gets the same weights
