"""configs/ring_lite_2507/rl_general.yaml parses through the real CLI (`fit --print_config`: types
checked, class paths imported, nothing built) and carries the general-RL recipe: the reasoning
config's budget reading and RL hyper-parameters, the general stage's sources (rule-verified
instructions, reward-model questions, reasoning rehearsal), a reward for every source's domain
(the reward model for "general"), the report's entropy bonus with a guard that can raise it."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from ring_lightning import cli
from ring_lightning.rewards.router import DEFAULT_DOMAINS
from ring_lightning.rl.objectives import C3PO

REPO = Path(__file__).resolve().parents[2]
GENERAL = REPO / "configs" / "ring_lite_2507" / "rl_general.yaml"
REASONING = REPO / "configs" / "ring_lite_2507" / "rl_reasoning.yaml"


def print_config(path: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-c", str(path), "--print_config"])
    assert exit_info.value.code in (0, None), f"{path} did not parse"
    return yaml.safe_load(out.getvalue())


@pytest.fixture(scope="module")
def configs():
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        mp.setenv("RL_REASONING_EXPORT", "/ckpt/rl_reasoning_export")
        mp.setenv("REWARD_MODEL", "/ckpt/rm")
        mp.setenv("RL_DATA", "/data/rl")
        return print_config(GENERAL), print_config(REASONING)


def test_starts_from_the_reasoning_export_on_fsdp2(configs):
    general, reasoning = configs
    trainer, model = general["trainer"], general["model"]
    assert model["class_path"] == "ring_lightning.modules.rl.RLModule"
    assert model["init_args"]["model"] == "/ckpt/rl_reasoning_export"
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    assert trainer["strategy"]["init_args"]["tensor_parallel_size"] == 1
    assert (trainer["accelerator"], trainer["devices"]) == ("gpu", 8)
    assert model["init_args"]["mixed_precision"] == "bf16" and model["init_args"]["activation_checkpointing"]
    engine = general["data"]["init_args"]["engine"]
    # the same embedded engine class as reasoning RL (spelled out, the name would mark this module `vllm`)
    assert engine["class_path"] == reasoning["data"]["init_args"]["engine"]["class_path"]
    assert engine["class_path"].startswith("ring_lightning.rollout.vllm")
    assert engine["init_args"]["enable_sleep_mode"] and engine["init_args"]["dtype"] == "bfloat16"


def test_budget_reading_and_rl_knobs_match_reasoning_rl(configs):
    general, reasoning = configs
    obj, obj_r = general["model"]["init_args"]["objective"], reasoning["model"]["init_args"]["objective"]
    assert obj["class_path"] == obj_r["class_path"] == "ring_lightning.rl.objectives.C3PO"
    knobs = obj["init_args"]
    data, data_r = general["data"]["init_args"], reasoning["data"]["init_args"]
    # the report's 409,600 per GPU at 256 GPUs is one rollout's budget, split over the clipped updates
    assert knobs["token_budget"] * data["updates_per_rollout"] == 256 * 409_600
    assert (knobs["token_budget"], data["updates_per_rollout"]) == (52_428_800, 2)
    assert knobs["token_budget"] == obj_r["init_args"]["token_budget"]
    assert data["updates_per_rollout"] == data_r["updates_per_rollout"]
    assert knobs["budget_scope"] == "global" == obj_r["init_args"]["budget_scope"]
    assert knobs["fill_order"] == "random"
    assert (knobs["clip_eps_low"], knobs["clip_eps_high"], knobs["kl_coef"]) == (0.2, 0.2, 0.001)
    ranks = general["trainer"]["devices"] * general["trainer"]["num_nodes"]
    c3po = C3PO(**{k: knobs[k] for k in ("token_budget", "budget_scope", "fill_order")})
    c3po.check(ranks)  # divisible by the configured ranks
    assert c3po.rank_budget(ranks) == 6_553_600 and c3po.rank_budget(256) == 204_800
    for key in ("lr", "ppo_epochs", "micro_batch_tokens"):
        assert general["model"]["init_args"][key] == reasoning["model"]["init_args"][key]
    assert general["model"]["init_args"]["lr"] == 3e-6
    for key in ("prompts_per_step", "samples_per_prompt", "max_response_tokens", "advantage_scale"):
        assert data[key] == data_r[key]
    assert (data["prompts_per_step"], data["samples_per_prompt"]) == (512, 16)
    # refill rounds cover a rollout's 2·Φ when general answers average >= ~1.4k tokens (the comment)
    responses = (1 + data["max_refill_rounds"]) * data["prompts_per_step"] * data["samples_per_prompt"]
    assert 1_400 < data["updates_per_rollout"] * knobs["token_budget"] / responses < 1_450


def test_general_stage_sources_and_a_reward_for_each(configs):
    general, _ = configs
    data = general["data"]["init_args"]
    assert data["stage"] == "general" and set(data["stages"]) == {"general"}
    mix = data["stages"]["general"]
    assert mix == {"instruction": 0.40, "general": 0.40, "math": 0.10, "code": 0.10}
    assert sum(mix.values()) == pytest.approx(1.0)
    sources = data["sources"]
    assert set(sources) == set(mix)
    assert {n: s["domain"] for n, s in sources.items()} == {n: n for n in mix}
    assert all(s["path"] == f"/data/rl/{n}.jsonl" for n, s in sources.items())
    router = data["reward"]
    assert router["class_path"] == "ring_lightning.rewards.router.RewardRouter"
    rm = router["init_args"]["reward_model"]
    assert rm["class_path"] == "ring_lightning.rewards.reward_model.RewardModelReward"
    assert rm["init_args"]["model_path"] == "/ckpt/rm"
    assert (rm["init_args"]["normalize"], rm["init_args"]["device"]) == ("zscore", "cuda")
    assert router["init_args"]["use_defaults"] and not router["init_args"]["domains"]
    routed = {DEFAULT_DOMAINS[s["domain"]] for s in sources.values()}
    assert routed == {"instruction", "reward_model", "math", "code"}
    for split in ("val_sources", "test_sources"):
        assert {s["domain"] for s in data[split].values()} == {"instruction", "math", "code"}


def test_entropy_bonus_is_the_reports_and_the_guard_can_raise_it(configs):
    general, _ = configs
    coef = general["model"]["init_args"]["objective"]["init_args"]["entropy_coef"]
    assert coef == 5e-4
    callbacks = {cb["class_path"].rsplit(".", 1)[1]: cb.get("init_args", {})
                 for cb in general["trainer"]["callbacks"]}
    guard = callbacks["EntropyCollapseGuard"]
    assert guard["action"] == "raise_entropy_coef" and guard["metric"] == "train/entropy"
    assert guard["max_coef"] == 8 * coef and guard["factor"] > 1
    assert callbacks["TokenEfficiency"]["sft_tokens"] is None  # from the export's metadata
    assert callbacks["FitEndExport"]["dirpath"].endswith("rl_general/export")
