import argparse

import pytest
import yaml

from models.loading import check_matches_training, resolve_transformer_dir


def fake_run(tmp_path, **trained) -> None:
    """A training output_dir as the trainer leaves it: config.yaml, transformer/ and a checkpoint."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(trained))
    for folder in (tmp_path / "transformer", tmp_path / "checkpoint-10" / "transformer"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")


@pytest.mark.parametrize("where", ["", "transformer", "checkpoint-10", "checkpoint-10/transformer"])
def test_matching_settings_pass_from_every_accepted_path(tmp_path, where):
    fake_run(tmp_path, max_sequence_length=8, timestep=1000.0)
    args = argparse.Namespace(max_sequence_length=8, timestep=1000.0)
    check_matches_training(tmp_path / where, args)  # no error
    assert resolve_transformer_dir(tmp_path / where).name == "transformer"


@pytest.mark.parametrize("where", ["", "checkpoint-10"])
@pytest.mark.parametrize("key, value", [("max_sequence_length", 256), ("timestep", 500.0)])
def test_a_setting_that_differs_from_training_is_refused_with_the_fix(tmp_path, where, key, value):
    fake_run(tmp_path, max_sequence_length=8, timestep=1000.0)
    args = argparse.Namespace(max_sequence_length=8, timestep=1000.0)
    setattr(args, key, value)
    with pytest.raises(ValueError, match=rf"{key} = {value}.*trained with {key} = .*--{key} "):
        check_matches_training(tmp_path / where, args)


def test_weights_without_a_training_config_are_not_checked(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text("{}")
    check_matches_training(tmp_path / "weights", argparse.Namespace(max_sequence_length=1, timestep=0.0))
