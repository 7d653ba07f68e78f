"""train_mode: lora — adapters only, through the real trainer under the conditions of a real run (accumulation 2,
warm-up + cosine, checkpoints, resume) for plain training and ZeRO-2 with the optimizer offloaded."""

import argparse
import shutil
import sys
from pathlib import Path

import pytest
import torch
from diffusers import SD3Transformer2DModel
from launcher import REPO_ROOT, accelerate_command, run_command, tiny_overlay
from safetensors.torch import load_file
from test_trainer_setups import SETTINGS, launcher, logged

from models.lora import LORA_DIR, LORA_WEIGHTS, add_lora, load_lora_transformer

LORA = {"train_mode": "lora", "lora_rank": 4, "lora_alpha": 8, "learning_rate": 3e-3}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
TARGETS += ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


def adapter(run_dir: Path, sub: str = LORA_DIR) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / sub / LORA_WEIGHTS))


def transformer_inputs(config: dict, batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(batch, config["in_channels"], 8, 8, generator=generator),
        "timestep": torch.full((batch,), 1000.0),
        "encoder_hidden_states": torch.randn(batch, 5, config["joint_attention_dim"], generator=generator),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], generator=generator),
        "return_dict": False,
    }


def test_only_adapters_get_gradients_and_the_base_stays_bit_identical(tiny_assets):
    from trainer import build_optimizer

    transformer = SD3Transformer2DModel.from_pretrained(tiny_assets["model"], subfolder="transformer")
    base = {name: value.clone() for name, value in transformer.state_dict().items()}
    args = argparse.Namespace(
        lora_rank=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=TARGETS, learning_rate=1e-2,
        scale_lr=False, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=0.0, adam_epsilon=1e-8,
        use_8bit_adam=False,
    )  # fmt: skip
    add_lora(transformer, args)
    optimizer = build_optimizer(args, transformer, num_processes=1)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = {id(p): name for name, p in transformer.named_parameters()}
    assert optimized and all(".lora_" in names[i] for i in optimized)
    inputs = transformer_inputs(transformer.config)
    for _ in range(3):
        transformer(**inputs)[0].pow(2).mean().backward()
        with_grad = [name for name, p in transformer.named_parameters() if p.grad is not None]
        assert with_grad and all(".lora_" in name for name in with_grad)
        optimizer.step()
        optimizer.zero_grad()
    after = {k.replace(".base_layer", ""): v for k, v in transformer.state_dict().items() if ".lora_" not in k}
    assert after.keys() == base.keys()
    assert all(torch.equal(after[name], base[name]) for name in base)
    unchanged = [name for name, p in transformer.named_parameters() if "lora_B" in name and not p.abs().sum() > 0]
    # B starts at zero: every adapter has learned something, but for the text-query projection of the last block,
    # whose text outputs the model discards (its gradient is exactly zero, with full fine-tuning too).
    last = transformer.config.num_layers - 1
    assert unchanged == [f"transformer_blocks.{last}.attn.add_q_proj.lora_B.default.weight"]


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_assets):
    """setup -> (straight run with a merged transformer/, run resumed from its checkpoint-4 without one)."""
    import yaml

    workdir, done = tmp_path_factory.mktemp("lora"), {}

    def write(output_dir: Path, **overrides) -> Path:
        config = tiny_overlay(tiny_assets, output_dir, **{**SETTINGS, **LORA, **overrides})
        path = output_dir.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(config))
        return path

    def get(setup: str) -> tuple[Path, Path]:
        if setup not in done:
            straight, resumed = workdir / f"{setup}-straight", workdir / f"{setup}-resumed"
            command = accelerate_command(launcher(setup, workdir), "trainer.py", "--config")
            run_command([*command, str(write(straight, lora_save_merged=True))])
            shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
            run_command([*command, str(write(resumed)), "--resume_from_checkpoint", "latest"])
            done[setup] = straight, resumed
        return done[setup]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("setup", ["plain", "zero2_offload"])
def test_lora_checkpoints_hold_the_adapter_and_resume_exactly(lora_runs, setup):
    straight, resumed = lora_runs(setup)
    final = adapter(straight)
    assert final and all(key.startswith("transformer.") and ".lora_" in key for key in final)
    assert not (straight / "checkpoint-8" / "transformer").exists()  # a LoRA checkpoint holds the adapter only
    checkpoint = adapter(straight, f"checkpoint-8/{LORA_DIR}")
    assert all(torch.equal(checkpoint[k], final[k]) for k in final)
    resumed_adapter = adapter(resumed)
    assert resumed_adapter.keys() == final.keys()
    assert all(torch.equal(resumed_adapter[k], final[k]) for k in final)
    assert logged(resumed, "train/lr") == {k: v for k, v in logged(straight, "train/lr").items() if k > 4}
    assert not (resumed / "transformer").exists()  # lora_save_merged false: the adapter only


@pytest.mark.slow
def test_merged_and_unmerged_adapters_predict_the_same(lora_runs, tiny_assets):
    straight, _ = lora_runs("plain")
    base = SD3Transformer2DModel.from_pretrained(tiny_assets["model"], subfolder="transformer")
    unmerged = load_lora_transformer(base, straight / LORA_DIR, merge=False).eval()
    merged = SD3Transformer2DModel.from_pretrained(straight / "transformer").eval()
    inputs = transformer_inputs(merged.config)
    with torch.no_grad():
        expected, actual = unmerged(**inputs)[0], merged(**inputs)[0]
        plain_base = SD3Transformer2DModel.from_pretrained(tiny_assets["model"], subfolder="transformer")(**inputs)[0]
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(plain_base, expected, atol=1e-4)  # the adapter changes the output


@pytest.mark.slow
def test_a_lora_run_evaluates_and_predicts_from_its_folder(lora_runs, tiny_assets, tmp_path):
    _, run = lora_runs("plain")  # adapter only, no merged transformer/
    config = ["--config", str(run / "config.yaml")]
    val = [*accelerate_command(launcher("plain", tmp_path), "val_inference.py"), *config]
    run_command([*val, "--eval_output_dir", str(tmp_path / "eval")])
    assert (tmp_path / "eval" / "metrics.json").is_file()
    image = sorted((tiny_assets["data"] / "test" / "easy" / "images").iterdir())[0]
    predict = [sys.executable, str(REPO_ROOT / "predict.py"), *config]
    run_command([*predict, "--input", str(image), "--output", str(tmp_path / "pred")])
    assert (tmp_path / "pred" / f"{image.stem}_mask.png").is_file()
