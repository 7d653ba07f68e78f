"""Where val_inference.py writes by default: beside the evaluated model, so two models never share a folder."""

import argparse
import json
from pathlib import Path

import pytest

from val_inference import eval_output_dir, oracle_summary

SETTINGS = "test-64px-thr0.5-native"


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path.resolve()  # model folders are named by their resolved path


def fake_run(run: Path, steps: tuple[int, ...] = (1, 2)) -> Path:
    """A training output_dir as the trainer leaves it: transformer/ and checkpoint-<N>/transformer/."""
    for folder in [run / "transformer", *(run / f"checkpoint-{n}" / "transformer" for n in steps)]:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    return run


def eval_args(output_dir: Path, **overrides) -> argparse.Namespace:
    settings = {
        "output_dir": str(output_dir),
        "transformer_path": None,
        "eval_output_dir": None,
        "oracle": None,
        "predictions_dir": None,
        "split": "test",
        "resolution": 64,
        "threshold": 0.5,
        "eval_protocol": "native",
        "processing": "square",
        "tta": "none",
        "mask_classes": "binary",
    }
    return argparse.Namespace(**{**settings, **overrides})


def test_each_model_gets_its_own_default_folder(root):
    run, other_run = fake_run(root / "run"), fake_run(root / "other_run")
    weights = root / "weights"  # a save_pretrained folder outside any run
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    expected = {
        None: run / f"eval-{SETTINGS}",  # the default: output_dir's final model, as before
        str(run): run / f"eval-{SETTINGS}",
        str(run / "transformer"): run / f"eval-{SETTINGS}",
        str(run / "checkpoint-1"): run / f"eval-checkpoint-1-{SETTINGS}",
        str(run / "checkpoint-1" / "transformer"): run / f"eval-checkpoint-1-{SETTINGS}",
        str(run / "checkpoint-2"): run / f"eval-checkpoint-2-{SETTINGS}",
        str(other_run): other_run / f"eval-{SETTINGS}",
        str(other_run / "checkpoint-1"): other_run / f"eval-checkpoint-1-{SETTINGS}",
        str(weights): weights / f"eval-{SETTINGS}",
    }
    for transformer_path, folder in expected.items():
        assert eval_output_dir(eval_args(run, transformer_path=transformer_path)) == folder, transformer_path
    # No trained transformer involved: the VAE oracle and saved predictions stay under output_dir, as before.
    checkpoint = str(run / "checkpoint-1")
    oracle = eval_output_dir(eval_args(run, transformer_path=checkpoint, oracle="vae_roundtrip"))
    predictions = eval_output_dir(eval_args(run, transformer_path=checkpoint, predictions_dir=str(root / "theirs")))
    assert oracle == run / f"eval-{SETTINGS}-oracle_vae_roundtrip"
    assert predictions == run / f"eval-{SETTINGS}-predictions_theirs"
    assert len({*expected.values(), oracle, predictions}) == len(set(expected.values())) + 2
    explicit = eval_args(run, transformer_path=checkpoint, eval_output_dir=str(root / "mine"))
    assert eval_output_dir(explicit) == root / "mine"


def test_processing_and_tta_get_their_own_folders(root):
    run = fake_run(root / "run")
    folders = {
        (processing, tta): eval_output_dir(eval_args(run, processing=processing, tta=tta))
        for processing in ("square", "keep_aspect")
        for tta in ("none", "hflip")
    }
    assert folders[("square", "none")] == run / f"eval-{SETTINGS}"  # the defaults keep the old name
    assert folders[("keep_aspect", "hflip")] == run / f"eval-{SETTINGS}-keep_aspect-tta_hflip"
    assert len(set(folders.values())) == 4
    # tta changes nothing the oracle scores: its ceiling is found whatever tta the model is evaluated with.
    oracle = eval_output_dir(eval_args(run, processing="keep_aspect", tta="hflip", oracle="vae_roundtrip"))
    assert oracle == run / f"eval-{SETTINGS}-keep_aspect-oracle_vae_roundtrip"
    # A things/stuff evaluation (model or its oracle) never overwrites a binary one.
    things_stuff = eval_output_dir(eval_args(run, mask_classes="things_stuff"))
    assert things_stuff == run / f"eval-{SETTINGS}-things_stuff"
    ceiling = eval_output_dir(eval_args(run, mask_classes="things_stuff", oracle="vae_roundtrip"))
    assert ceiling == run / f"eval-{SETTINGS}-things_stuff-oracle_vae_roundtrip"


def test_a_checkpoint_evaluation_still_finds_the_oracle_ceiling(root):
    # `make demo` runs the oracle, then the model with the same config: the model's report shows the ceiling.
    run = fake_run(root / "run")
    oracle_metrics = {"mix": {"num_images": 7}}
    oracle_dir = eval_output_dir(eval_args(run, oracle="vae_roundtrip"))
    oracle_dir.mkdir(parents=True)
    (oracle_dir / "metrics.json").write_text(json.dumps({"subsets": oracle_metrics}))
    checkpoint = eval_args(run, transformer_path=str(run / "checkpoint-2"))
    assert eval_output_dir(checkpoint) == run / f"eval-checkpoint-2-{SETTINGS}"
    assert oracle_summary(checkpoint) == oracle_metrics
    assert oracle_summary(eval_args(run)) == oracle_metrics  # the default: output_dir's final model
    assert oracle_summary(eval_args(run, split="validation")) is None  # other settings: no ceiling to show


def test_a_missing_transformer_names_the_path(root):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        eval_output_dir(eval_args(root, transformer_path=str(root / "nowhere")))
