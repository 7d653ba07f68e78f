"""processing keep_aspect and tta hflip in val_inference.py and predict.py: the padding never counts, and both
entry points write native-size outputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from launcher import tiny_overlay
from PIL import Image

import val_inference
from dataset.trans10k import ImageFiles, Trans10kEval, validate_split
from dataset.transforms import mirror_content, resize_raw, valid_mask
from evaluation.image_writer import png_to_raw
from models.loading import ProcessingMismatchWarning
from models.segmenter import MaskPredictor, load_predictor
from utils.config import load_config

# ---------------------------------------------------------------------------------------------------------------------
# The padding never counts: val_inference's own loader, raw source and scoring loop with a stub model


class TablePredictor(MaskPredictor):
    """A stub model that predicts each canvas's ground truth (looked up by its pixels), optionally with random values
    in the padding or a changed content box, to see what the scores depend on."""

    def __init__(self, table: dict, tta: str, padding: str = "clean") -> None:
        super().__init__(None, None, None, None, 1000.0, tta)
        self.table, self.padding = table, padding

    def planes_once(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.table[item.numpy().tobytes()] for item in pixel_values]).unsqueeze(1)

    def predict_planes(self, pixel_values: torch.Tensor, content_sizes=None) -> torch.Tensor:
        raw = super().predict_planes(pixel_values, content_sizes)  # [B, 1, S, S]
        valid = torch.stack([valid_mask(size, raw.shape[-1]) for size in content_sizes]) > 0
        noise = torch.rand(raw.shape, generator=torch.Generator().manual_seed(len(self.table)))
        if self.padding == "random":
            return torch.where(valid, raw, noise)
        if self.padding == "content_changed":  # the control: a change inside the content box must change the scores
            return torch.where(valid, noise, raw)
        return raw


def ground_truth_table(samples, resolution: int) -> dict:
    """pixels -> raw-space ground truth, for each image and for its mirror (what hflip feeds the model)."""
    table = {}
    for item in Trans10kEval(samples, resolution, "keep_aspect"):
        pixels, target = item["pixel_values"][None], (item["mask_values"][:1] + 1) / 2
        sizes = [item["content_size"]]
        table[pixels[0].numpy().tobytes()] = target[0]
        table[mirror_content(pixels, sizes)[0].numpy().tobytes()] = mirror_content(target, sizes)[0]
    return table


@pytest.mark.parametrize("protocol", ["native", "square"])
@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_predictions_in_the_padding_do_not_change_the_scores(tiny_assets, tmp_path, monkeypatch, protocol, tta):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(tiny_overlay(tiny_assets, tmp_path / "run")))
    args = load_config(
        ["--config", str(overlay), "--processing", "keep_aspect", "--tta", tta, "--eval_protocol", protocol]
        + ["--save_raw_predictions", "false", "--num_worst_panels", "0", "--num_sample_panels", "0"]
    )
    accelerator = Accelerator(cpu=True)
    samples = validate_split(args.dataset_path, args.split, args.subsets)
    loader = val_inference.build_loader(args, accelerator, samples)
    assert any(min(size) < args.resolution for batch in loader for size in batch["content_size"])  # real padding
    table = ground_truth_table(samples, args.resolution)

    def scores(padding: str):
        predictor = TablePredictor(table, tta, padding)
        monkeypatch.setattr(val_inference, "load_predictor", lambda *_: predictor)
        raw_source = val_inference.build_raw_source(args, accelerator)
        return val_inference.score_split(args, accelerator, loader, raw_source, tmp_path / "eval", samples).scores

    clean = scores("clean")
    assert scores("random") == clean
    assert scores("content_changed") != clean
    # The ground truth in the content box scores near-perfectly at native size and against the square GT: the box
    # is where the image is, and it is stretched back over the whole image (not the canvas) before scoring.
    ious = [score.tp / (score.tp + score.fp + score.fn) for score in clean if score.tp + score.fn > 0]
    assert min(ious) > 0.85, ious
    expected_size = {"native": None, "square": (args.resolution, args.resolution)}[protocol]
    natives = {(s.subset, s.stem): Image.open(s.mask_path).size[::-1] for s in samples}
    for score in clean:
        assert (score.height, score.width) == (expected_size or natives[(score.subset, score.stem)])


# ---------------------------------------------------------------------------------------------------------------------
# End to end on a tiny trained model (trained square, as every run before processing existed)


@pytest.fixture(scope="module")
def trained(tiny_assets, tmp_path_factory, run) -> Path:
    root = tmp_path_factory.mktemp("trained_square")
    overlay = root / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(tiny_overlay(tiny_assets, root / "run", eval_batch_size=2)))
    run("trainer.py", "--config", str(overlay))
    return overlay


KEEP_ASPECT_HFLIP = ("--processing", "keep_aspect", "--tta", "hflip")
MISMATCH = "processing = keep_aspect, but"


@pytest.mark.slow
def test_val_inference_keep_aspect_hflip_warns_of_the_mismatch_and_writes_native_raws(trained, tmp_path, run):
    eval_dir = tmp_path / "eval"
    result = run("val_inference.py", "--config", str(trained), "--eval_output_dir", str(eval_dir), *KEEP_ASPECT_HFLIP)
    assert MISMATCH in result.stderr and "was trained with processing = square" in result.stderr
    assert "--processing square" in result.stderr
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["subsets"]["mix"]["num_images"] == 7
    snapshot = yaml.safe_load((eval_dir / "config.yaml").read_text())
    assert (snapshot["processing"], snapshot["tta"]) == ("keep_aspect", "hflip")
    data = Path(yaml.safe_load(trained.read_text())["dataset_path"])
    for mask_path in sorted((data / "test").glob("*/masks/*_mask.png")):
        stem, subset = mask_path.name[: -len("_mask.png")], mask_path.parent.parent.name
        assert png_to_raw(eval_dir / "raw" / subset / f"{stem}.png").shape == Image.open(mask_path).size[::-1]
    assert len(list((eval_dir / "panels" / "worst").glob("*.png"))) == 2
    # Evaluated as trained: no warning.
    same = run("val_inference.py", "--config", str(trained), "--eval_output_dir", str(tmp_path / "same"))
    assert MISMATCH not in same.stderr and "was trained with processing" not in same.stderr


@pytest.mark.slow
def test_predict_keep_aspect_hflip_writes_native_size_masks(trained, tmp_path, run):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide": (1000, 7), "tall": (5, 300), "odd": (33, 17)}  # (width, height): extreme aspect ratios
    for stem, (width, height) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(inputs / f"{stem}.png")
    out = tmp_path / "out"
    paths = ("--input", str(inputs), "--output", str(out))
    result = run("predict.py", "--config", str(trained), *paths, *KEEP_ASPECT_HFLIP)
    assert MISMATCH in result.stderr
    for stem, size in sizes.items():
        for kind in ("mask", "raw", "overlay"):
            assert Image.open(out / f"{stem}_{kind}.png").size == size, (stem, kind)
        assert set(np.unique(np.array(Image.open(out / f"{stem}_mask.png")))) <= {0, 255}
    # The same model run here on the keep_aspect canvas with hflip, cut to the box and resized to the native size:
    # predict.py wrote exactly that (to the 8-bit step of its PNG), not a prediction of the squashed image.
    args = load_config(["--config", str(trained), *KEEP_ASPECT_HFLIP])
    with pytest.warns(ProcessingMismatchWarning):
        predictor = load_predictor(args, args.output_dir, torch.device("cpu"), torch.float32)
    images = ImageFiles(sorted(inputs.glob("*.png")), args.resolution, "keep_aspect")
    for item in images:
        raw = predictor.predict_content(item["pixel_values"][None], [item["content_size"]])[0]
        expected = resize_raw(raw, item["image"].shape[:2])
        written = png_to_raw(out / f"{item['stem']}_raw.png")
        assert (written - expected).abs().max() <= 0.5 / 255 + 1e-6, item["stem"]
