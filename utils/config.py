"""Configuration: `config.yaml` holds every default once; `--config FILE` overlays changed keys; `--key value` wins.

Types follow each key's default (a null default declares its type with a `[type]` tag in its comment); on the
command line null / none / ~ mean null only for those keys. Unknown keys, values of the wrong type, nan or inf and
impossible combinations exit with code 2 and a message naming the key and the value.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_PATH = REPO_ROOT / "config.yaml"

_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s+#\s?(.*)$")
_TYPE_TAG = re.compile(r"^\[(str|int|float|bool)\]\s*")
_CHOICES_TAG = re.compile(r"\(choices:\s*([^)]*)\)")
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NULL = {"null", "none", "~"}


class ConfigError(ValueError):
    """A bad key, value or combination; the message says which and what to do."""


@dataclass(frozen=True)
class KeySpec:
    name: str
    default: Any
    type: type  # str, int, float, bool or list (of str)
    comment: str
    nullable: bool
    choices: tuple[str, ...] | None
    is_path: bool
    may_be_hub_id: bool


def read_specs(path: Path = DEFAULTS_PATH) -> dict[str, KeySpec]:
    """Parse config.yaml: values with PyYAML, the one-line comment of each key with a regex."""
    text = path.read_text()
    values = yaml.safe_load(text) or {}
    comments = {m.group(1): m.group(3) for m in map(_KEY_LINE.match, text.splitlines()) if m}
    specs = {}
    for name, default in values.items():
        if name not in comments:
            raise ConfigError(f"{path}: key '{name}' has no '# comment' on its line; every default is documented")
        specs[name] = _make_spec(name, default, comments[name], path)
    return specs


def _make_spec(name: str, default: Any, comment: str, path: Path) -> KeySpec:
    type_tag = _TYPE_TAG.match(comment)
    if default is None:
        if not type_tag:
            raise ConfigError(
                f"{path}: key '{name}' defaults to null, so its comment must start with [str|int|float|bool]"
            )
        key_type = _TYPES[type_tag.group(1)]
    else:
        key_type = type(default)
    choices = _CHOICES_TAG.search(comment)
    return KeySpec(
        name=name,
        default=default,
        type=key_type,
        comment=_TYPE_TAG.sub("", comment),
        nullable=default is None,
        choices=tuple(c.strip() for c in choices.group(1).split("|")) if choices else None,
        is_path="(path" in comment,
        may_be_hub_id="(path or hub id)" in comment,
    )


def coerce(spec: KeySpec, value: Any, source: str) -> Any:
    """Convert `value` (from YAML, or a string from the command line) to the key's type, or raise ConfigError."""
    if value is None:
        if spec.nullable:
            return None
        raise _type_error(spec, value, source)
    # "none" is a real value of some keys (report_to), so the null spellings mean null only where null is allowed.
    if spec.nullable and source == "command line" and isinstance(value, str) and value.strip().lower() in _NULL:
        return None
    if spec.type is bool:
        result = _to_bool(value)
    elif spec.type is int:
        result = _to_int(value)
    elif spec.type is float:
        result = _to_float(value)
    elif spec.type is list:
        result = _to_list(value)
    else:
        result = value if isinstance(value, str) else None
    if result is None:
        raise _type_error(spec, value, source)
    _check_finite(spec, result, source)
    _check_choices(spec, result, source)
    return result


def _check_finite(spec: KeySpec, value: Any, source: str) -> None:
    # nan passes every range check (all comparisons are false), so it would reach the optimizer unnoticed.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: '{spec.name}' = {value!r} is not a finite number; give a finite {spec.name}")


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _to_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # PyYAML reads "3e-5" (no dot) as a string; float() does not mind
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _to_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return None
    return [v.strip() for v in value]


def _check_choices(spec: KeySpec, value: Any, source: str) -> None:
    if spec.choices is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if item not in spec.choices:
            hint = _did_you_mean(item, spec.choices)
            raise ConfigError(f"{source}: '{spec.name}' = {item!r} is not one of {', '.join(spec.choices)}{hint}")


def _type_error(spec: KeySpec, value: Any, source: str) -> ConfigError:
    expected = {bool: "a bool (true/false/yes/no/1/0)", list: "a list of strings (a,b or [a, b])"}.get(
        spec.type, f"a value of type {spec.type.__name__}"
    )
    nullable = " or null" if spec.nullable else ""
    return ConfigError(f"{source}: '{spec.name}' got {value!r}, expected {expected}{nullable}")


def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _resolve_path(spec: KeySpec, value: Any, from_file: bool) -> Any:
    """Relative paths written in YAML files resolve from the repo root; on the command line from the cwd."""
    if not spec.is_path or value is None or Path(value).is_absolute():
        return value
    base = REPO_ROOT if from_file else Path.cwd()
    candidate = base / value
    if spec.may_be_hub_id and not candidate.exists():
        return value  # a hub id such as "stabilityai/stable-diffusion-3.5-medium"
    return str(candidate)


def _apply(config: dict, specs: dict[str, KeySpec], updates: dict, source: str, from_file: bool) -> None:
    for name, value in updates.items():
        if name not in specs:
            raise ConfigError(f"{source}: unknown key '{name}'{_did_you_mean(name, specs)}; see --help for all keys")
        config[name] = _resolve_path(specs[name], coerce(specs[name], value, source), from_file)


def _split_argv(argv: list[str], specs: dict[str, KeySpec]) -> tuple[list[str], dict[str, str], bool]:
    """Split argv into overlay files, `--key value` pairs and a help request."""
    overlays, flags, want_help, i = [], {}, False, 0
    while i < len(argv):
        token = argv[i]
        if token in ("-h", "--help"):
            want_help, i = True, i + 1
            continue
        if not token.startswith("--"):
            raise ConfigError(f"command line: unexpected argument {token!r}; every setting is a --key value pair")
        name, eq, value = token[2:].partition("=")
        spec = specs.get(name)
        if not eq:
            bare_bool = spec is not None and spec.type is bool and (i + 1 == len(argv) or argv[i + 1].startswith("--"))
            if bare_bool:
                value = "true"  # `--gradient_checkpointing` alone means true, as with store_true flags
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            else:
                raise ConfigError(f"command line: --{name} needs a value")
        if name == "config":
            overlays.append(value)
        else:
            flags[name] = value
        i += 1
    return overlays, flags, want_help


def _read_overlay(path_text: str) -> dict:
    path = Path(path_text)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path_text
    if not path.is_file():
        raise ConfigError(f"--config {path_text}: no such file (looked in {Path.cwd()} and {REPO_ROOT})")
    try:
        overlay = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from err
    if not isinstance(overlay, dict):
        raise ConfigError(f"--config {path}: expected a mapping of key: value lines, got {type(overlay).__name__}")
    return overlay


def parse_config(
    argv: list[str], defaults_path: Path = DEFAULTS_PATH, *, training: bool = False
) -> tuple[argparse.Namespace, bool]:
    """Resolve defaults < overlay files < flags. Returns (args, help_requested); raises ConfigError.

    training=True adds the checks that only a training run needs (see check_combinations)."""
    specs = read_specs(defaults_path)
    overlays, flags, want_help = _split_argv(argv, specs)
    config = {name: _resolve_path(spec, spec.default, from_file=True) for name, spec in specs.items()}
    for overlay in overlays:
        _apply(config, specs, _read_overlay(overlay), f"--config {overlay}", from_file=True)
    _apply(config, specs, flags, "command line", from_file=False)
    args = argparse.Namespace(**config)
    if not want_help:
        check_combinations(args, training=training)
    return args, want_help


def check_combinations(args: argparse.Namespace, *, training: bool = False) -> None:
    """Reject settings that cannot work together now, not an hour into a run.

    The checks of this machine's hardware and packages run only with training=True: evaluating or predicting with a
    training run's config.yaml on a CPU must not fail because that run used a CUDA-only optimizer."""
    problems = _training_problems(args) if training else []
    if args.resolution <= 0 or args.resolution % 16:
        problems.append(f"resolution = {args.resolution} must be a positive multiple of 16 (VAE factor 8 x patch 2)")
    for name in ("train_batch_size", "gradient_accumulation_steps", "eval_batch_size", "checkpointing_steps"):
        if getattr(args, name) < 1:
            problems.append(f"{name} = {getattr(args, name)} must be >= 1")
    if args.max_train_steps is None and args.num_train_epochs < 1:
        problems.append("set max_train_steps, or num_train_epochs >= 1")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        problems.append(f"max_train_steps = {args.max_train_steps} must be >= 1 (or null to use num_train_epochs)")
    if args.max_train_time_minutes is not None and args.max_train_time_minutes <= 0:
        problems.append(f"max_train_time_minutes = {args.max_train_time_minutes} must be > 0 (or null: no limit)")
    if "pixel" in args.loss.split("+") and args.pixel_loss_weight <= 0:
        problems.append(f"pixel_loss_weight = {args.pixel_loss_weight} must be > 0 with loss {args.loss}")
    if args.num_validation_images < 0:
        problems.append(f"num_validation_images = {args.num_validation_images} must be >= 0 (0 = the whole split)")
    if args.learning_rate <= 0:
        problems.append(f"learning_rate = {args.learning_rate} must be > 0")
    if not 0.0 <= args.threshold <= 1.0:
        problems.append(f"threshold = {args.threshold} must be in [0, 1]")
    if not 1 <= args.max_sequence_length <= 512:
        problems.append(f"max_sequence_length = {args.max_sequence_length} must be in [1, 512] (T5's limit in SD3)")
    if not 0.0 <= args.timestep <= 1000.0:
        problems.append(f"timestep = {args.timestep} must be in [0, 1000]")
    if not 0.0 < args.random_crop_scale <= 1.0:
        problems.append(f"random_crop_scale = {args.random_crop_scale} must be in (0, 1]")
    if args.color_jitter < 0:
        problems.append(f"color_jitter = {args.color_jitter} must be >= 0")
    if args.cache_latents and (args.color_jitter > 0 or args.random_crop_scale < 1):
        problems.append(
            f"cache_latents needs color_jitter 0 and random_crop_scale 1 (got {args.color_jitter}, "
            f"{args.random_crop_scale}): random colours and crops change the pixels every epoch, so latents cannot "
            "be computed once"
        )
    # Training only: val_inference.py and predict.py never read cache_latents, and a cached run's config.yaml must
    # still evaluate with --processing keep_aspect (to measure the mismatch it warns about).
    if training and args.cache_latents and args.processing != "square":
        problems.append(
            f"cache_latents with processing = {args.processing} is not supported yet: the latent cache stores the "
            "latents of square-resized images only; set cache_latents false or processing square"
        )
    if args.predictions_dir is not None and args.oracle is not None:
        problems.append("predictions_dir and oracle both set: score either existing predictions or the VAE oracle")
    if args.threshold_sweep and args.split == "test":
        problems.append("threshold_sweep on split=test would choose a setting on the test set; use --split validation")
    if not args.save_raw_predictions and (args.num_worst_panels or args.num_sample_panels):
        problems.append(
            "panels are drawn from the saved raw predictions: set save_raw_predictions true or the "
            "num_*_panels keys to 0"
        )
    if problems:
        raise ConfigError("impossible settings:\n  " + "\n  ".join(problems))


def _training_problems(args: argparse.Namespace) -> list[str]:
    """Settings only the trainer uses that this machine cannot run."""
    problems = []
    if args.use_8bit_adam and not _bitsandbytes_usable():
        problems.append("use_8bit_adam needs a CUDA GPU and `pip install bitsandbytes`; set it to false here")
    return problems


def _bitsandbytes_usable() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def format_help(args: argparse.Namespace, prog: str, defaults_path: Path = DEFAULTS_PATH) -> str:
    specs = read_specs(defaults_path)
    width = max(map(len, specs)) + 2
    lines = [
        f"usage: {prog} [--config FILE] [--key value ...]",
        "",
        f"Defaults come from {defaults_path}; --config FILE overlays changed keys; flags win.",
        "Current values (after overlays and flags) are shown in brackets.",
        "",
    ]
    for name, spec in specs.items():
        lines.append(f"  --{name:<{width}} {spec.comment} [{getattr(args, name)!r}]")
    return "\n".join(lines)


def load_config(argv: list[str] | None = None, *, training: bool = False) -> argparse.Namespace:
    """Entry-script front door: parse, print --help, or exit 2 with a clear message.

    trainer.py passes training=True; val_inference.py and predict.py do not, so they accept any training config."""
    argv = sys.argv[1:] if argv is None else argv
    prog = os.path.basename(sys.argv[0]) or "script"
    try:
        args, want_help = parse_config(argv, training=training)
        if want_help:
            print(format_help(args, prog))
            sys.exit(0)
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    return args


def dump_config(args: argparse.Namespace) -> str:
    """The resolved configuration as YAML, keys in config.yaml's order; loadable again with --config."""
    return yaml.safe_dump(vars(args), sort_keys=False)
