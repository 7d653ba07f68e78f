import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from launcher import launch_env

from utils.config import DEFAULTS_PATH, REPO_ROOT, ConfigError, dump_config, parse_config, read_specs
from utils.run_snapshot import write_run_snapshot


def parse(*argv: str):
    return parse_config(list(argv))[0]


def test_every_default_is_documented_and_typed():
    specs = read_specs()
    raw = yaml.safe_load(DEFAULTS_PATH.read_text())
    assert list(specs) == list(raw)
    for spec in specs.values():
        assert spec.comment.strip(), spec.name
        assert spec.type in (str, int, float, bool, list)


def test_precedence_defaults_then_overlay_then_flags(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("learning_rate: 1.0e-4\ntrain_batch_size: 2\n")
    assert parse().learning_rate == pytest.approx(2e-6)
    assert parse("--config", str(overlay)).learning_rate == pytest.approx(1e-4)
    args = parse("--config", str(overlay), "--learning_rate", "3e-5")
    assert args.learning_rate == pytest.approx(3e-5)
    assert args.train_batch_size == 2  # from the overlay, untouched by flags
    assert parse("--config", str(overlay), "--train_batch_size=7").train_batch_size == 7


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("seed", "7", 7),
        ("learning_rate", "3e-5", 3e-5),  # PyYAML would read this as a string; the key's type decides
        ("learning_rate", "1", 1.0),
        ("lr_scheduler", "constant", "constant"),
        ("subsets", "hard", ["hard"]),
        ("subsets", "easy,hard", ["easy", "hard"]),
        ("subsets", "[hard, easy]", ["hard", "easy"]),
        ("max_train_steps", "100", 100),
        ("max_train_steps", "null", None),
        ("revision", "main", "main"),
    ],
)
def test_types_follow_the_default(flag, value, expected):
    assert getattr(parse(f"--{flag}", value), flag) == expected


@pytest.mark.parametrize(
    "spelling, expected",
    [("true", True), ("Yes", True), ("1", True), ("false", False), ("no", False), ("0", False), ("FALSE", False)],
)
def test_bool_spellings(spelling, expected):
    assert parse("--random_flip", spelling).random_flip is expected


def test_bare_bool_flag_means_true():
    assert parse("--gradient_checkpointing").gradient_checkpointing is True
    assert parse("--gradient_checkpointing", "--seed", "1").gradient_checkpointing is True


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--seed", "1.5"], ["seed", "1.5", "int"]),
        (["--random_flip", "maybe"], ["random_flip", "maybe", "bool"]),
        (["--learning_rate", "fast"], ["learning_rate", "fast", "float"]),
        (["--seed", "null"], ["seed", "null", "int"]),  # null only where the default is null
        (["--report_to", "wandbb"], ["report_to", "wandbb", "did you mean 'wandb'"]),
        (["--subsets", "easy,medium"], ["subsets", "medium"]),
        (["--learning_rat", "1e-4"], ["learning_rat", "did you mean 'learning_rate'"]),
        (["positional"], ["positional"]),
    ],
)
def test_bad_values_name_key_value_and_type(argv, names):
    with pytest.raises(ConfigError) as err:
        parse(*argv)
    for name in names:
        assert name in str(err.value)


def test_bad_type_in_overlay_names_the_file(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("train_batch_size: four\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train_batch_size.*'four'"):
        parse("--config", str(overlay))
    overlay.write_text("trian_batch_size: 4\n")
    with pytest.raises(ConfigError, match="did you mean 'train_batch_size'"):
        parse("--config", str(overlay))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resolution", "1000"], "multiple of 16"),
        (["--threshold_sweep", "true", "--split", "test"], "test set"),
        (["--predictions_dir", "x", "--oracle", "vae_roundtrip"], "both set"),
        (["--max_train_steps", "0"], "max_train_steps"),
        (["--num_worst_panels", "3", "--save_raw_predictions", "false"], "save_raw_predictions"),
    ],
)
def test_impossible_combinations_are_rejected(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


def test_relative_paths_from_files_resolve_from_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse("--config", "configs/demo.yaml")  # found relative to the repo root, not the cwd
    assert args.dataset_path == str(REPO_ROOT / "demo_assets/trans10k")
    assert parse("--dataset_path", "data").dataset_path == str(tmp_path / "data")  # flags: from the cwd
    assert parse().pretrained_model_name_or_path == "stabilityai/stable-diffusion-3.5-medium"  # a hub id stays


def test_resolved_config_round_trips_and_snapshot_is_written(tmp_path):
    args = parse("--learning_rate", "3e-5", "--subsets", "hard")
    write_run_snapshot(args, tmp_path)
    reloaded = parse("--config", str(tmp_path / "config.yaml"))
    assert vars(reloaded) == vars(args)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert len(info["git"]["commit"] or "") in (0, 40)
    assert set(info["packages"]) >= {"torch", "diffusers", "accelerate"}
    assert info["packages"]["torch"]
    assert yaml.safe_load(dump_config(args))["learning_rate"] == pytest.approx(3e-5)


def run_entry(*argv: str, training: bool = False) -> subprocess.CompletedProcess:
    code = f"import sys; from utils.config import load_config; load_config(sys.argv[1:], training={training})"
    command = [sys.executable, "-c", code, *argv]
    return subprocess.run(command, cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True)


def test_cli_exit_codes_and_help():
    bad = run_entry("--learning_rat", "1e-4")
    assert bad.returncode == 2
    assert "learning_rat" in bad.stderr and "learning_rate" in bad.stderr
    bad_type = run_entry("--train_batch_size", "many")
    assert bad_type.returncode == 2 and "train_batch_size" in bad_type.stderr and "'many'" in bad_type.stderr
    shown = run_entry("--config", "configs/demo.yaml", "--help")
    assert shown.returncode == 0
    for name in read_specs():
        assert f"--{name}" in shown.stdout
    assert "[64]" in shown.stdout  # --help shows current values, after the overlay


def test_demo_overlay_only_uses_known_keys():
    overlay = yaml.safe_load((REPO_ROOT / "configs/demo.yaml").read_text())
    assert set(overlay) <= set(read_specs())
    parse("--config", str(Path(REPO_ROOT / "configs/demo.yaml")))


def bitsandbytes_usable() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def test_8bit_adam_is_refused_for_training_without_cuda_and_bitsandbytes():
    if bitsandbytes_usable():
        pytest.skip("bitsandbytes and CUDA present: the combination is valid here")
    with pytest.raises(ConfigError, match="use_8bit_adam needs a CUDA GPU"):
        parse_config(["--use_8bit_adam"], training=True)
    trainer_like = run_entry("--use_8bit_adam", training=True)  # what trainer.py's load_config(training=True) does
    assert trainer_like.returncode == 2 and "use_8bit_adam" in trainer_like.stderr


def test_training_only_checks_do_not_stop_evaluation_with_a_training_config(tmp_path):
    # The config.yaml of a run trained on a GPU with 8-bit Adam, evaluated on a CPU with that run's settings.
    trained_config = tmp_path / "config.yaml"
    trained_config.write_text(dump_config(argparse.Namespace(**{**vars(parse()), "use_8bit_adam": True})))
    assert parse("--config", str(trained_config)).use_8bit_adam is True
    evaluation = run_entry("--config", str(trained_config))  # val_inference.py / predict.py: load_config()
    assert evaluation.returncode == 0, evaluation.stderr


def test_none_is_a_value_of_non_nullable_keys():
    assert parse("--report_to", "none").report_to == "none"  # a choice of report_to, not null
    assert parse("--tracker_project_name", "null").tracker_project_name == "null"
    with pytest.raises(ConfigError, match=r"'lr_scheduler' = 'none' is not one of"):
        parse("--lr_scheduler", "none")
    # Keys whose default is null still read every null spelling as null.
    for spelling in ("null", "None", "~"):
        assert parse("--revision", spelling).revision is None
        assert parse("--max_train_steps", spelling).max_train_steps is None


@pytest.mark.parametrize(
    "key, value",
    [("learning_rate", "nan"), ("learning_rate", "inf"), ("adam_weight_decay", "NaN"), ("max_grad_norm", "-inf")],
)
def test_non_finite_floats_on_the_command_line_are_rejected(key, value):
    with pytest.raises(ConfigError, match=rf"'{key}' = -?(nan|inf) is not a finite number"):
        parse(f"--{key}", value)


@pytest.mark.parametrize("line", ["learning_rate: .nan", "learning_rate: .inf", "learning_rate: nan"])
def test_non_finite_floats_in_an_overlay_are_rejected_naming_the_file(tmp_path, line):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(line + "\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: 'learning_rate' = (nan|inf) is not a finite number"):
        parse("--config", str(overlay))


@pytest.mark.slow
def test_trainer_stops_on_nan_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "trainer.py", "--learning_rate", "nan", "--output_dir", str(out)],
        cwd=REPO_ROOT,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr
    assert "learning_rate" in result.stderr and "nan" in result.stderr
    assert not out.exists()
