"""predict.py through the pipeline: a training run and the pipeline folder saved from it write identical files."""

import sys

import numpy as np
import torch
from launcher import REPO_ROOT, run_command, tiny_overlay
from PIL import Image

from models.pipeline import TransparencySegmentationPipeline
from models.segmenter import load_predictor
from utils.config import parse_config


def test_pipeline_folder_and_run_predict_the_same_files(tiny_assets, tiny_config, tmp_path):
    weights = str(tiny_assets["model"] / "transformer")
    config = tiny_config(transformer_path=weights, eval_batch_size=2)
    overlay = tiny_overlay(tiny_assets, tmp_path / "run")
    args, _ = parse_config([f"--{key}={value}" for key, value in overlay.items()])
    predictor = load_predictor(args, weights, torch.device("cpu"), torch.float32)
    folder = tmp_path / "exported"
    TransparencySegmentationPipeline.from_predictor(predictor, 8, 64).save_pretrained(folder)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(((37, 91), (64, 64), (50, 33))):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(photos / f"p{index}.png")

    outputs = {}
    for label, model in (("run", weights), ("pipeline", str(folder))):
        outputs[label] = tmp_path / label
        command = [sys.executable, str(REPO_ROOT / "predict.py"), "--config", str(config), "--transformer_path", model]
        run_command([*command, "--input", str(photos), "--output", str(outputs[label])])
    names = sorted(p.name for p in outputs["run"].iterdir())
    assert len(names) == 9 and names == sorted(p.name for p in outputs["pipeline"].iterdir())
    for name in names:
        run_pixels = np.asarray(Image.open(outputs["run"] / name))
        assert np.array_equal(run_pixels, np.asarray(Image.open(outputs["pipeline"] / name))), name
    # And the files are the pipeline's own output, the same batches of 2.
    pipe = TransparencySegmentationPipeline.from_pretrained(folder)
    images = [np.asarray(Image.open(photos / f"p{index}.png")) for index in range(3)]
    out = pipe(images[:2], batch_size=2)
    for index in range(2):
        raw_png = np.round(out.raw[index].astype(np.float64) * 255).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(outputs["run"] / f"p{index}_raw.png")), raw_png)
        mask_png = out.mask[index].astype(np.uint8) * 255
        assert np.array_equal(np.asarray(Image.open(outputs["run"] / f"p{index}_mask.png")), mask_png)
