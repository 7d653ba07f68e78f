import argparse
import re

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


def base_model_args(model: str, revision: str | None = None, variant: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(
        max_sequence_length=8, timestep=1000.0, pretrained_model_name_or_path=model, revision=revision, variant=variant
    )


def test_base_model_folder_compares_as_the_resolved_folder(tmp_path):
    model = tmp_path / "models" / "sd35"
    (tmp_path / "models" / "other").mkdir(parents=True)
    model.mkdir()
    (tmp_path / "alias").symlink_to(model)
    (tmp_path / "run").mkdir()
    fake_run(tmp_path / "run", **vars(base_model_args(str(model))))
    for spelling in (model, tmp_path / "models" / "other" / ".." / "sd35", tmp_path / "alias"):
        check_matches_training(tmp_path / "run", base_model_args(str(spelling)))  # the same folder: no error
    other = str(tmp_path / "models" / "other")
    with pytest.raises(ValueError) as err:
        check_matches_training(tmp_path / "run", base_model_args(other))
    message = str(err.value)
    assert f"pretrained_model_name_or_path = {other}," in message
    assert f"trained with pretrained_model_name_or_path = {model}" in message
    assert str(tmp_path / "run" / "config.yaml") in message
    assert f"pass --pretrained_model_name_or_path {model} " in message


@pytest.mark.parametrize(
    "trained, evaluated, flag",
    [
        (
            ("stabilityai/stable-diffusion-3.5-medium", None, None),
            ("stabilityai/stable-diffusion-3.5-large",),
            "--pretrained_model_name_or_path stabilityai/stable-diffusion-3.5-medium ",
        ),
        (("org/model", "main", None), ("org/model", None, None), "--revision main "),
        (("org/model", None, "fp16"), ("org/model", None, None), "--variant fp16 "),
        (("org/model", None, None), ("org/model", None, "fp16"), "--variant null "),
    ],
)
def test_a_different_base_model_revision_or_variant_is_refused(tmp_path, trained, evaluated, flag):
    fake_run(tmp_path, **vars(base_model_args(*trained)))
    check_matches_training(tmp_path, base_model_args(*trained))  # the same hub id, revision and variant: no error
    with pytest.raises(ValueError, match=re.escape(flag)):
        check_matches_training(tmp_path / "checkpoint-10", base_model_args(*evaluated))
