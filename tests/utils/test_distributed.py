"""DeepSpeed: config consistency with config.yaml, and a real ZeRO-2 step on CPU through deepspeed.initialize."""

import json
import subprocess
import sys

import pytest
from launcher import free_port, launch_env

from utils.config import REPO_ROOT, parse_config
from utils.distributed import check_deepspeed_config, deepspeed_mismatches, launch_mismatch


def load_ds(name: str = "ds_config.json") -> dict:
    return json.loads((REPO_ROOT / name).read_text())


@pytest.mark.parametrize(
    "name", ["ds_config.json", "configs/deepspeed/zero2.json", "configs/deepspeed/zero2_offload.json"]
)
def test_shipped_deepspeed_configs_defer_to_config_yaml(name):
    args = parse_config([])[0]
    config = load_ds(name)
    assert deepspeed_mismatches(config, args, num_processes=4) == []
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto", key
    check_deepspeed_config(config, args, 4)
    assert config["gradient_clipping"] == args.max_grad_norm  # auto filled from config.yaml, not Accelerate's 1.0


def test_mismatches_stop_the_run_showing_both_values():
    args = parse_config(
        ["--train_batch_size", "4", "--gradient_accumulation_steps", "2", "--mixed_precision", "bf16"]
    )[0]
    config = load_ds()
    config.update(
        {
            "train_micro_batch_size_per_gpu": 8,
            "gradient_accumulation_steps": 1,
            "train_batch_size": 64,
            "bf16": {"enabled": False},
            "gradient_clipping": 0.5,
        }
    )
    with pytest.raises(ValueError) as err:
        check_deepspeed_config(config, args, num_processes=4)
    message = str(err.value)
    for expected in (
        "train_micro_batch_size_per_gpu = 8 but config.yaml gives 4",
        "gradient_accumulation_steps = 1 but config.yaml gives 2",
        "train_batch_size = 64 but config.yaml gives 32",
        "bf16.enabled = False but config.yaml gives True",
        "gradient_clipping = 0.5 but config.yaml gives 1.0",
    ):
        assert expected in message


ZERO2_STEP = r"""
import json, os, sys, torch, deepspeed
from diffusers import SD3Transformer2DModel
from utils.distributed import check_deepspeed_config
from utils.config import parse_config

args = parse_config(["--train_batch_size", "2", "--gradient_accumulation_steps", "1", "--mixed_precision", "no"])[0]
config = json.load(open("configs/deepspeed/zero2.json"))
check_deepspeed_config(config, args, num_processes=1)
# What Accelerate fills in for "auto" from config.yaml (it drops DeepSpeed on machines without a GPU).
config.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1, train_batch_size=2,
              bf16={"enabled": False}, fp16={"enabled": False})
config["zero_optimization"]["overlap_comm"] = False
torch.manual_seed(0)
model = SD3Transformer2DModel.from_pretrained(sys.argv[1], subfolder="transformer")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=True)
before = {k: v.detach().clone() for k, v in engine.module.named_parameters()}
latents = torch.randn(2, 16, 8, 8)
out = engine(hidden_states=latents, timestep=torch.full((2,), 1000.0), encoder_hidden_states=torch.randn(2, 5, 32),
             pooled_projections=torch.randn(2, 16), return_dict=False)[0]
loss = torch.nn.functional.mse_loss(out, torch.randn_like(out))
engine.backward(loss)
engine.step()
changed = sum(not torch.equal(v, before[k]) for k, v in engine.module.named_parameters())
print(json.dumps({"stage": engine.zero_optimization_stage(), "loss": loss.item(), "changed": changed,
                  "total": len(before)}))
"""


@pytest.mark.slow
def test_zero2_step_runs_on_cpu_with_gloo(tiny_assets):
    env = launch_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    result = subprocess.run(
        [sys.executable, "-c", ZERO2_STEP, str(tiny_assets["model"])],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["stage"] == 2
    assert report["changed"] >= report["total"] - 3  # all but the dead text-query projection of the last block


@pytest.mark.parametrize(
    "requested, world, got_deepspeed, got_processes, env, expected",
    [
        (True, 1, True, 1, {}, None),
        (False, 2, False, 2, {}, None),
        (True, 1, False, 1, {"ACCELERATE_USE_CPU": "true"}, ["DeepSpeed was requested", "unset ACCELERATE_USE_CPU"]),
        (False, 2, False, 1, {"ACCELERATE_USE_CPU": "1"}, ["started 2 processes but Accelerate runs 1"]),
        (True, 4, False, 4, {}, ["DeepSpeed was requested", "accelerate env"]),
    ],
)
def test_launch_mismatch_names_what_was_dropped_and_why(requested, world, got_deepspeed, got_processes, env, expected):
    message = launch_mismatch(requested, world, got_deepspeed, got_processes, env)
    if expected is None:
        assert message == ""
    else:
        assert all(part in message for part in expected), message
