"""trainer.py through `accelerate launch`, on tiny SD3.5-layout models and synthetic Trans10k data."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from utils.checkpointing import complete_checkpoints

pytestmark = pytest.mark.slow


def transformer_weights(output_dir: Path, sub: str = "transformer") -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / sub / "diffusion_pytorch_model.safetensors"))


def test_resume_latest_without_checkpoints_starts_fresh_and_bad_path_fails(tiny_config, run, tmp_path):
    fresh = run("trainer.py", "--config", str(tiny_config(max_train_steps=1)), "--resume_from_checkpoint", "latest")
    assert "starting fresh" in fresh.stderr + fresh.stdout
    missing = run(
        "trainer.py",
        "--config",
        str(tiny_config()),
        "--resume_from_checkpoint",
        str(tmp_path / "checkpoint-99"),
        check=False,
    )
    assert missing.returncode != 0
    assert "checkpoint-99" in missing.stderr


def test_two_cpu_processes_train_identical_replicas(tiny_config, run, tmp_path):
    output_dir = tmp_path / "ddp"
    result = run(
        "trainer.py", "--config", str(tiny_config(output_dir=str(output_dir), max_train_steps=3)), processes=2
    )
    summary = json.loads((output_dir / "train_summary.json").read_text())
    assert summary["steps"] == 3
    checksums = summary["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1], result.stderr[-2000:]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tiny_config, run, tmp_path):
    output_dir = tmp_path / "diverge"
    config = tiny_config(
        output_dir=str(output_dir),
        max_train_steps=6,
        checkpointing_steps=1,
        checkpoints_total_limit=0,
        learning_rate=1e30,
        adam_epsilon=1e-30,
    )
    result = run("trainer.py", "--config", str(config), check=False)
    assert result.returncode != 0
    assert "non-finite training loss" in result.stderr
    step = int(result.stderr.split("non-finite training loss")[1].split(" at step ")[1].split()[0])
    kept = complete_checkpoints(output_dir)
    assert [p.name for p in kept] == [f"checkpoint-{s}" for s in range(1, step)]
    for path in kept:  # every kept checkpoint holds finite weights
        assert all(torch.isfinite(v).all() for v in transformer_weights(path).values())


def test_tensorboard_logs_scalars_and_panels(tiny_config, run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir = tmp_path / "tb"
    run(
        "trainer.py",
        "--config",
        str(
            tiny_config(
                output_dir=str(output_dir),
                max_train_steps=2,
                validation_steps=2,
                num_validation_images=3,
                report_to="tensorboard",
            )
        ),
    )
    event_files = list((output_dir / "logs").rglob("events.out.tfevents.*"))
    tags = {"scalars": set(), "images": set()}
    for path in event_files:
        events = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        tags["scalars"] |= set(events.Tags()["scalars"])
        tags["images"] |= set(events.Tags()["images"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "val/loss", "val/iou"} <= tags[
        "scalars"
    ]
    assert "val/panels" in tags["images"]
    card = (output_dir / "README.md").read_text()
    assert "val/iou" in card and "steps" in card


def test_wandb_offline_writes_a_run(tiny_config, run, tmp_path):
    run("trainer.py", "--config", str(tiny_config(max_train_steps=1, report_to="wandb")), cwd=tmp_path)
    assert list(tmp_path.rglob("offline-run-*")), "wandb wrote no offline run"


def test_cached_latents_train_like_encoding_on_the_fly(tiny_config, run, tmp_path):
    settings = {"max_train_steps": 3, "random_flip": True, "learning_rate": 1e-3}
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    run("trainer.py", "--config", str(tiny_config(output_dir=str(plain), **settings)))
    run("trainer.py", "--config", str(tiny_config(output_dir=str(cached), cache_latents=True, **settings)))
    loss = {
        path.name: json.loads((path / "checkpoint-3" / "checkpoint.json").read_text())["loss"]
        for path in (plain, cached)
    }
    assert loss["cached"] == pytest.approx(loss["plain"], rel=1e-4)
    expected, actual = transformer_weights(plain), transformer_weights(cached)
    for name in expected:  # the cache encodes in other batch sizes: equal up to float reordering
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
