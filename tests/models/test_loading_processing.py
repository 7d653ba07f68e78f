"""The processing-mismatch warning of models.loading.check_matches_training (processing: square | keep_aspect)."""

import argparse
import warnings

import pytest
import yaml

from models.loading import ProcessingMismatchWarning, check_matches_training


def fake_run(tmp_path, **trained) -> None:
    """A training output_dir: its config.yaml snapshot and a checkpoint's transformer/."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"max_sequence_length": 8, "timestep": 1000.0, **trained}))
    folder = tmp_path / "checkpoint-10" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


def evaluated_with(processing: str) -> argparse.Namespace:
    return argparse.Namespace(max_sequence_length=8, timestep=1000.0, processing=processing)


@pytest.mark.parametrize("trained, evaluated", [("keep_aspect", "square"), ("square", "keep_aspect")])
def test_another_processing_than_in_training_warns_naming_both(tmp_path, trained, evaluated):
    fake_run(tmp_path, processing=trained)
    with pytest.warns(ProcessingMismatchWarning) as caught:
        check_matches_training(tmp_path / "checkpoint-10", evaluated_with(evaluated))
    message = str(caught[0].message)
    assert f"processing = {evaluated}, but" in message and f"trained with processing = {trained}" in message
    assert str(tmp_path / "config.yaml") in message and f"--processing {trained}" in message


def test_a_run_from_before_the_key_was_trained_square(tmp_path):
    fake_run(tmp_path)  # no processing key in its config.yaml
    with pytest.warns(ProcessingMismatchWarning, match="trained with processing = square"):
        check_matches_training(tmp_path / "checkpoint-10", evaluated_with("keep_aspect"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_matches_training(tmp_path / "checkpoint-10", evaluated_with("square"))


@pytest.mark.parametrize("processing", ["square", "keep_aspect"])
def test_the_processing_it_was_trained_with_gives_no_warning(tmp_path, processing):
    fake_run(tmp_path, processing=processing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_matches_training(tmp_path / "checkpoint-10", evaluated_with(processing))
