"""The demo-asset builder: the tiny model folder loads through the real hub-layout paths and its VAE really works;
complete folders are skipped and incomplete ones rebuilt."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from demo import assets as demo_assets

SMALL_COUNTS = {"train": 32, "validation/easy": 1, "validation/hard": 1, "test/easy": 6, "test/hard": 6}
SHORT_FIT_STEPS = 60  # enough to beat an unfitted VAE clearly, a few seconds on 2 CPU cores
SHORT_FIT_BATCH = 8
SEED = 0
VAE_SEED = SEED + 4  # build_tiny_model_folder seeds the VAE with seed + 4
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """As the builder does: on a busy 2-core machine a second OpenMP thread makes these tiny models much slower."""
    with demo_assets.torch_num_threads(1):
        yield


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    output_dir = tmp_path_factory.mktemp("demo_assets")
    return demo_assets.build_demo_assets(
        output_dir,
        seed=SEED,
        counts=SMALL_COUNTS,
        vae_fit_steps=SHORT_FIT_STEPS,
        vae_fit_batch_size=SHORT_FIT_BATCH,
    )


@pytest.fixture(scope="module")
def report(assets: dict[str, Path]) -> dict:
    return json.loads((assets["model"] / demo_assets.REPORT_FILENAME).read_text())


@pytest.fixture(scope="module")
def vae(assets: dict[str, Path]) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(assets["model"], subfolder="vae").eval()


@pytest.fixture(scope="module")
def empty_prompt(assets: dict[str, Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """encode_prompt("") through a pipeline holding only the text encoders, as the training code builds it."""
    path = assets["model"]
    pipeline = StableDiffusion3Pipeline(
        transformer=None,
        vae=None,
        scheduler=None,
        text_encoder=CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2"),
        tokenizer_2=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2"),
        text_encoder_3=T5EncoderModel.from_pretrained(path, subfolder="text_encoder_3"),
        tokenizer_3=T5Tokenizer.from_pretrained(path, subfolder="tokenizer_3"),
    )
    with torch.no_grad():
        prompt_embeds, _, pooled, _ = pipeline.encode_prompt("", None, None, do_classifier_free_guidance=False)
    return prompt_embeds, pooled


def test_output_holds_only_the_two_complete_folders(assets: dict[str, Path]) -> None:
    output_dir = assets["model"].parent
    assert sorted(p.name for p in output_dir.iterdir()) == ["sd35-tiny", "trans10k"]  # no temp dirs left
    for folder in assets.values():
        assert (folder / demo_assets.COMPLETE_MARKER).is_file()


def test_model_folder_has_the_sd35_hub_layout(assets: dict[str, Path]) -> None:
    model_dir = assets["model"]
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    expected = {
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "text_encoder": "CLIPTextModelWithProjection",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "CLIPTokenizer",
        "tokenizer_3": "T5Tokenizer",
        "transformer": "SD3Transformer2DModel",
        "vae": "AutoencoderKL",
    }
    for component, class_name in expected.items():
        assert index[component][1] == class_name
        assert (model_dir / component).is_dir()
    vae_config = json.loads((model_dir / "vae" / "config.json").read_text())
    assert vae_config["latent_channels"] == 16 and len(vae_config["block_out_channels"]) == 4  # factor 8
    assert vae_config["use_quant_conv"] is False and vae_config["use_post_quant_conv"] is False


def test_whole_pipeline_loads_with_from_pretrained(assets: dict[str, Path]) -> None:
    pipeline = StableDiffusion3Pipeline.from_pretrained(assets["model"])
    assert isinstance(pipeline.transformer, SD3Transformer2DModel)
    assert pipeline.vae_scale_factor == 8


def test_empty_prompt_matches_the_transformer_dims(
    assets: dict[str, Path], empty_prompt: tuple[torch.Tensor, torch.Tensor]
) -> None:
    transformer = SD3Transformer2DModel.from_pretrained(assets["model"], subfolder="transformer")
    prompt_embeds, pooled = empty_prompt
    # CLIP tokens (the tiny tokenizers' model_max_length) + T5 tokens (encode_prompt's default max_sequence_length)
    assert prompt_embeds.shape == (1, demo_assets.CLIP_MAX_LENGTH + 256, transformer.config.joint_attention_dim)
    assert pooled.shape == (1, transformer.config.pooled_projection_dim)


def test_transformer_runs_on_vae_latents(
    assets: dict[str, Path], vae: AutoencoderKL, empty_prompt: tuple[torch.Tensor, torch.Tensor]
) -> None:
    transformer = SD3Transformer2DModel.from_pretrained(assets["model"], subfolder="transformer").eval()
    images, _ = demo_assets.load_split_tensors(assets["data"], "test", demo_assets.DEMO_RESOLUTION)
    prompt_embeds, pooled = empty_prompt
    batch = images[:2]
    with torch.no_grad():
        latents = vae.encode(batch).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        prediction = transformer(
            hidden_states=latents,
            timestep=torch.full((len(batch),), 1000.0),
            encoder_hidden_states=prompt_embeds.expand(len(batch), -1, -1),
            pooled_projections=pooled.expand(len(batch), -1),
        ).sample
    assert latents.shape == (2, 16, 8, 8)
    assert prediction.shape == latents.shape and torch.isfinite(prediction).all()


def test_fitted_vae_reconstructs_masks_better_than_unfitted(
    assets: dict[str, Path], vae: AutoencoderKL, report: dict
) -> None:
    _, test_masks = demo_assets.load_split_tensors(assets["data"], "test", demo_assets.DEMO_RESOLUTION)
    fitted = demo_assets.mask_roundtrip_iou(vae, test_masks)["iou"]
    unfitted = demo_assets.mask_roundtrip_iou(demo_assets.build_tiny_vae(VAE_SEED), test_masks)["iou"]
    assert fitted > unfitted + 0.15, (fitted, unfitted)
    # The saved weights are the fitted ones: the reloaded VAE reproduces the builder's own measurement.
    assert fitted == pytest.approx(report["mask_roundtrip_iou_test"], abs=1e-3)
    assert unfitted == pytest.approx(report["mask_roundtrip_iou_test_before_fit"], abs=1e-3)


def test_shift_and_scale_give_unit_variance_latents(assets: dict[str, Path], vae: AutoencoderKL) -> None:
    images, masks = demo_assets.load_split_tensors(assets["data"], "train", demo_assets.DEMO_RESOLUTION)
    modes = demo_assets.encode_modes(vae, torch.cat([images, masks]))
    assert modes.std() == pytest.approx(1 / vae.config.scaling_factor, rel=1e-3)  # not the default 1.5305 of SD3.5
    scaled = (modes - vae.config.shift_factor) * vae.config.scaling_factor
    assert scaled.mean().abs() < 1e-3
    assert scaled.std() == pytest.approx(1.0, abs=1e-3)


def test_report_holds_the_measured_numbers(report: dict) -> None:
    assert report["parameters"]["transformer"] > 1_000_000
    assert report["vae_fit"]["steps"] == SHORT_FIT_STEPS and report["vae_fit"]["seconds"] > 0
    assert report["test_images"] == SMALL_COUNTS["test/easy"] + SMALL_COUNTS["test/hard"]
    assert {"image_psnr_test_db", "shift_factor", "scaling_factor"} <= set(report)


# ---------------------------------------------------------------- complete / incomplete / forced rebuilds


@pytest.fixture
def counting_model_builder(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the (slow) model build by one that records its calls and writes a single file."""
    calls: list[Path] = []

    def fake_build(model_dir: Path, data_root: Path, **kwargs) -> dict:
        calls.append(model_dir)
        (model_dir / "weights.bin").write_text("fake")
        return {}

    monkeypatch.setattr(demo_assets, "build_tiny_model_folder", fake_build)
    monkeypatch.setattr(demo_assets, "print_report", lambda report: None)
    return calls


TINY_COUNTS = {"train": 2, "validation/easy": 1, "validation/hard": 1, "test/easy": 1, "test/hard": 1}


def test_complete_folders_are_skipped(tmp_path: Path, counting_model_builder: list[Path]) -> None:
    folders = demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    sentinel = folders["data"] / "sentinel"
    sentinel.write_text("still here")
    demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    assert len(counting_model_builder) == 1
    assert sentinel.exists()


def test_incomplete_model_folder_is_rebuilt(tmp_path: Path, counting_model_builder: list[Path]) -> None:
    folders = demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    (folders["model"] / demo_assets.COMPLETE_MARKER).unlink()  # as a build killed before its marker would leave it
    (folders["model"] / "half_written").write_text("")
    demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    assert len(counting_model_builder) == 2
    assert not (folders["model"] / "half_written").exists()
    assert (folders["model"] / demo_assets.COMPLETE_MARKER).is_file()


def test_incomplete_data_folder_rebuilds_data_and_model(tmp_path: Path, counting_model_builder: list[Path]) -> None:
    folders = demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    (folders["data"] / demo_assets.COMPLETE_MARKER).unlink()
    demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    assert len(counting_model_builder) == 2  # the VAE is fitted on the data, so the model follows it
    assert (folders["data"] / demo_assets.COMPLETE_MARKER).is_file()


def test_force_and_changed_parameters_rebuild(tmp_path: Path, counting_model_builder: list[Path]) -> None:
    demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS, force=True)
    demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS, seed=1)
    demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS, seed=1, vae_fit_steps=3)
    assert len(counting_model_builder) == 4


def test_failed_build_leaves_no_folder_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crashing_build(model_dir: Path, data_root: Path, **kwargs) -> dict:
        (model_dir / "partial").write_text("")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(demo_assets, "build_tiny_model_folder", crashing_build)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        demo_assets.build_demo_assets(tmp_path, counts=TINY_COUNTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trans10k"]  # no model folder, no temp folder
    assert (tmp_path / "trans10k" / demo_assets.COMPLETE_MARKER).is_file()


# ---------------------------------------------------------------- the real entry point


@pytest.mark.slow
def test_cli_builds_demo_assets_that_meet_the_targets(tmp_path: Path) -> None:
    """The default build, as `python -m demo.assets` runs it: the VAE must keep masks intact."""
    command = [sys.executable, "-m", "demo.assets", "--output_dir", str(tmp_path)]
    subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=900)
    report = json.loads((tmp_path / "sd35-tiny" / demo_assets.REPORT_FILENAME).read_text())
    assert report["mask_roundtrip_iou_test"] >= 0.97
    assert report["test_images"] == 121
    rerun = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=300)
    assert rerun.stdout.count("is complete, skipped") == 2
