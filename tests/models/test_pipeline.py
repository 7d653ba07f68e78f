"""TransparencySegmentationPipeline: save -> load from a lone folder, same masks as MaskPredictor, checked inputs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from launcher import tiny_overlay
from PIL import Image

from dataset.trans10k import model_pixels
from dataset.transforms import content_size_of, resize_raw
from models.pipeline import (
    CONDITIONING_FILE,
    PipelineFolderError,
    TransparencySegmentationPipeline,
    overlay_mask,
)
from models.segmenter import load_predictor
from utils.config import parse_config

RESOLUTION = 64


@pytest.fixture(scope="module")
def predictor(tiny_assets, tmp_path_factory):
    """MaskPredictor on the tiny model (its base transformer stands in for trained weights), as predict.py loads it."""
    overlay = tiny_overlay(tiny_assets, tmp_path_factory.mktemp("run"))
    args, _ = parse_config([f"--{key}={value}" for key, value in overlay.items()])
    return load_predictor(args, str(tiny_assets["model"] / "transformer"), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def lone_folder(predictor, tmp_path_factory) -> Path:
    """A saved pipeline, moved to a folder with nothing else next to it."""
    pipe = TransparencySegmentationPipeline.from_predictor(predictor, max_sequence_length=8, resolution=RESOLUTION)
    saved = tmp_path_factory.mktemp("saved") / "pipe"
    pipe.save_pretrained(saved)
    lone = tmp_path_factory.mktemp("elsewhere") / "model"
    shutil.move(saved, lone)
    return lone


def photos() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((37, 91), (64, 64), (50, 33))]


def reference_raws(
    predictor, images: list[np.ndarray], batch_size: int, processing: str = "square"
) -> list[torch.Tensor]:
    """What predict.py computed before the pipeline: model_pixels -> MaskPredictor.predict_raw -> the content box
    (the whole canvas under square) -> resize_raw."""
    raws = []
    for start in range(0, len(images), batch_size):
        chunk = [Image.fromarray(image) for image in images[start : start + batch_size]]
        boxes = [content_size_of(image.size, RESOLUTION, processing) for image in chunk]
        pixels = torch.stack([model_pixels(image, RESOLUTION, box) for image, box in zip(chunk, boxes, strict=True)])
        for raw, image, (h, w) in zip(predictor.predict_raw(pixels), chunk, boxes, strict=True):
            raws.append(resize_raw(raw[:h, :w], (image.height, image.width)))
    return raws


def test_saved_folder_is_self_contained_and_loads_alone(lone_folder):
    files = sorted(str(p.relative_to(lone_folder)) for p in lone_folder.rglob("*") if p.is_file())
    assert files == [
        CONDITIONING_FILE,
        "model_index.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    index = json.loads((lone_folder / "model_index.json").read_text())
    assert index["_class_name"] == "TransparencySegmentationPipeline"
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    expected = {"timestep": 1000.0, "max_sequence_length": 8, "resolution": RESOLUTION, "processing": "square"}
    assert {key: index[key] for key in expected} == expected
    assert (index["mask_classes"], index["threshold"]) == ("binary", 0.5)


def test_loaded_pipeline_gives_mask_predictor_masks_exactly(lone_folder, predictor):
    pipe = TransparencySegmentationPipeline.from_pretrained(lone_folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    images = photos()
    out = pipe([Image.fromarray(image) for image in images], batch_size=2)
    expected = reference_raws(predictor, images, batch_size=2)
    for raw, mask, reference, image in zip(out.raw, out.mask, expected, images, strict=True):
        assert raw.shape == image.shape[:2] and raw.dtype == np.float32
        assert np.array_equal(raw, reference.numpy())  # fp32 on CPU: bit-identical
        assert np.array_equal(mask, reference.numpy() >= 0.5)
    assert out.classes is None
    # numpy, tensor and PIL inputs of the same pixels agree; so do the three output types. (One image per batch
    # here: on a CPU, fp32 convolutions of a batch of 2 differ from batch 1 in the last bit.)
    alone = pipe(Image.fromarray(images[0])).raw[0]
    tensor = torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255
    for same in (images[0], tensor):
        assert np.array_equal(pipe(same).raw[0], alone)
    pt = pipe(images[0], output_type="pt")
    assert torch.equal(pt.raw[0], torch.from_numpy(alone)) and pt.mask[0].dtype == torch.bool
    pil = pipe(images[0], output_type="pil", threshold=0.3)
    assert np.array_equal(np.asarray(pil.raw[0]), np.round(alone.astype(np.float64) * 255).astype(np.uint8))
    assert np.array_equal(np.asarray(pil.mask[0]), (alone >= 0.3).astype(np.uint8) * 255)
    # Overlay helper: red tint where the mask is set, the image elsewhere.
    overlay = np.asarray(out.overlays()[1])
    assert np.array_equal(overlay, np.asarray(overlay_mask(images[1], out.mask[1])))
    assert np.array_equal(overlay[~out.mask[1]], images[1][~out.mask[1]])


def test_hflip_tta_and_processing_resolution(lone_folder, predictor):
    pipe = TransparencySegmentationPipeline.from_pretrained(lone_folder)
    pipe.set_progress_bar_config(disable=True)
    image = photos()[0]
    pixels = model_pixels(Image.fromarray(image), RESOLUTION, (RESOLUTION, RESOLUTION))[None]
    mirrored = predictor.predict_raw(pixels.flip(-1)).flip(-1)
    expected = resize_raw(((predictor.predict_raw(pixels) + mirrored) / 2)[0], image.shape[:2])
    # MaskPredictor runs the image and its mirror as one batch of 2: on a CPU, fp32 convolutions of a batch of 2
    # differ from two batches of 1 in the last bits, so equal within float rounding (the mirror alone is ~1e-2 away).
    np.testing.assert_allclose(pipe(image, tta="hflip").raw[0], expected.numpy(), rtol=0, atol=1e-6)
    assert np.abs(pipe(image).raw[0] - expected.numpy()).max() > 1e-4
    square = pipe(image, match_input_resolution=False, processing_resolution=32)
    assert square.raw[0].shape == (32, 32)
    assert square.overlays()[0].size == (32, 32)


def test_keep_aspect_cuts_the_padding_and_is_a_folder_setting(lone_folder, predictor, tmp_path):
    images = photos()
    expected = reference_raws(predictor, images, batch_size=1, processing="keep_aspect")
    pipe = TransparencySegmentationPipeline.from_pretrained(lone_folder)  # trained square: keep_aspect on request
    pipe.set_progress_bar_config(disable=True)
    asked = [pipe(image, processing="keep_aspect").raw[0] for image in images]
    for raw, reference, image in zip(asked, expected, images, strict=True):
        assert raw.shape == image.shape[:2] and np.array_equal(raw, reference.numpy())
    assert not np.array_equal(asked[0], pipe(images[0]).raw[0])  # the square default differs on a 37 x 91 photo
    # A folder exported from a keep_aspect run applies it by default; without resizing back, the raw is the box.
    keep = TransparencySegmentationPipeline.from_pretrained(
        edited_copy(lone_folder, tmp_path, processing="keep_aspect")
    )
    keep.set_progress_bar_config(disable=True)
    assert np.array_equal(keep(images[0]).raw[0], asked[0])
    assert keep(images[0], match_input_resolution=False).raw[0].shape == content_size_of(
        (91, 37), RESOLUTION, "keep_aspect"
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda pipe: pipe([]), "empty list"),
        (lambda pipe: pipe("photo.jpg"), "images\\[0\\]: expected a PIL image, numpy array or torch tensor, got str"),
        (lambda pipe: pipe(np.full((4, 4, 3), 2.0)), "float values must lie in \\[0, 1\\], got \\[2, 2\\]"),
        (lambda pipe: pipe(np.zeros((4, 4, 2), np.uint8)), "\\[H, W\\] or \\[H, W, 3\\], got shape \\(4, 4, 2\\)"),
        (lambda pipe: pipe(np.zeros((4, 4, 3), np.uint8), tta="vflip"), "tta 'vflip': expected one of none, hflip"),
        (lambda pipe: pipe(np.zeros((4, 4, 3), np.uint8), batch_size=0), "batch_size 0"),
        (lambda pipe: pipe(np.zeros((4, 4, 3), np.uint8), threshold=1.5), "threshold 1.5"),
        (lambda pipe: pipe(np.zeros((4, 4, 3), np.uint8), output_type="jpg"), "output_type 'jpg'"),
        (lambda pipe: pipe(np.zeros((4, 4, 3), np.uint8), processing_resolution=40), "multiple of 16"),
    ],
)
def test_check_inputs_explains_bad_arguments(lone_folder, call, message):
    pipe = TransparencySegmentationPipeline.from_pretrained(lone_folder)
    with pytest.raises((ValueError, TypeError), match=message):
        call(pipe)


def edited_copy(lone_folder: Path, tmp_path: Path, **config) -> Path:
    folder = tmp_path / "copy"
    shutil.copytree(lone_folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **config}))
    return folder


@pytest.mark.parametrize("missing", ["vae", "transformer", CONDITIONING_FILE, "model_index.json"])
def test_incomplete_folder_names_what_is_missing(lone_folder, tmp_path, missing):
    folder = edited_copy(lone_folder, tmp_path)
    target = folder / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(
        PipelineFolderError, match=f"not a complete TransparencySegmentationPipeline folder: missing {missing}"
    ):
        TransparencySegmentationPipeline.from_pretrained(folder)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"resolution": 60}, "config resolution: resolution 60 px: must be a multiple of 16"),
        ({"processing": "crop"}, "processing 'crop': expected one of square, keep_aspect"),
        ({"mask_classes": "stuff"}, "mask_classes 'stuff': expected one of binary, things_stuff"),
        ({"max_sequence_length": 64}, "prompt_embeds has 16 tokens"),
    ],
)
def test_incompatible_config_fails_clearly(lone_folder, tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        TransparencySegmentationPipeline.from_pretrained(edited_copy(lone_folder, tmp_path, **config))
