"""Run under `torchrun --nproc-per-node 2`: one embedded VLLMEngine per data-parallel rank inside a
trainer's gloo process group (what RolloutDataModule does on every rank). Each rank perturbs its
policy, syncs it into its engine, checks the engine's logprobs against the trainer forward, closes
the engine and then runs a collective. Writes `<out>/rank<r>.json`."""

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from ring_lightning.models.loading import load_policy
    from ring_lightning.rollout.engine import SamplingConfig
    from ring_lightning.rollout.vllm_engine import VLLMEngine

    model, tok = load_policy("qwen3-moe-tiny", head_dim=32, output_router_logits=False, seed=0)
    engine = VLLMEngine(model, tok, seed=rank)
    torch.manual_seed(rank)  # each rank's trainer moves its own way
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    engine.update_weights(model.named_parameters())
    prompt = [5 + rank, 6, 7]
    comp = engine.generate([prompt], 1, SamplingConfig(max_tokens=8, seed=rank))[0][0]
    ids = torch.tensor([prompt + list(comp.token_ids)])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].float(), -1)
    ref = lp.gather(-1, torch.tensor(comp.token_ids)[:, None])[:, 0]
    diff = (ref - torch.tensor(comp.logprobs)).abs().max().item()
    engine.close()
    alive = dist.is_initialized()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # the trainer's next collective after the engine is gone
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"max_abs_diff": diff, "tokens": len(comp.token_ids), "group_alive": alive,
                   "all_reduce": total.item(), "world": dist.get_world_size()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
