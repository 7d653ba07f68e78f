"""Load the frozen VAE and the trainable SD3 transformer, from the hub layout or from our own outputs."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, SD3Transformer2DModel

from models.lora import LORA_DIR, LORA_WEIGHTS, load_lora_transformer
from utils.checkpointing import BEST, best_record


def precision_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of a mixed_precision setting ("no", "fp16", "bf16")."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def inference_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """Evaluation and prediction weights: the configured precision on a GPU, fp32 on a CPU (bf16 is slow there)."""
    return precision_dtype(mixed_precision) if device.type == "cuda" else torch.float32


def load_frozen_vae(model: str, revision: str | None, variant: str | None, dtype: torch.dtype) -> AutoencoderKL:
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae", revision=revision, variant=variant, torch_dtype=dtype)
    vae.requires_grad_(False)
    return vae.eval()


def load_base_transformer(model: str, revision: str | None, variant: str | None) -> SD3Transformer2DModel:
    """The transformer to fine-tune, in fp32 (master weights; autocast or DeepSpeed handle the compute dtype)."""
    return SD3Transformer2DModel.from_pretrained(
        model, subfolder="transformer", revision=revision, variant=variant, torch_dtype=torch.float32
    )


def resolve_transformer_dir(path: str | Path) -> Path:
    """The folder of trained weights behind `path`: a `save_pretrained` folder (config.json), else a LoRA adapter
    folder (pytorch_lora_weights.safetensors). `path` may be that folder, a `checkpoint-<step>/` or a training
    output_dir; a merged `transformer/` wins over the adapter it came from."""
    path = Path(path)
    for candidate in (path, path / "transformer"):
        if (candidate / "config.json").is_file():
            return candidate
    for candidate in (path, path / LORA_DIR):
        if (candidate / LORA_WEIGHTS).is_file():
            return candidate
    raise FileNotFoundError(
        f"transformer_path {path}: no config.json (or {LORA_WEIGHTS}) in it, in {path / 'transformer'} or in "
        f"{path / LORA_DIR}; pass the trainer's output_dir, one of its checkpoint-<step>/ folders, or a folder "
        "written by save_pretrained"
    )


# The trainer's checkpoint folders (utils/checkpointing.py names them the same way).
_CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")


def model_eval_location(transformer_path: str | Path) -> tuple[Path, str]:
    """(folder, name prefix) of a model's default evaluation: `<run>/eval-...` for a run's final model,
    `<run>/eval-checkpoint-<N>-...` for one of its checkpoints, `<run>/eval-checkpoint-best-step<N>-...` for the best
    one (the step it held then: a later, better best gets its own folder), `<folder>/eval-...` for any other folder."""
    transformer_dir = resolve_transformer_dir(transformer_path).resolve()
    model_dir = transformer_dir.parent if transformer_dir.name in ("transformer", LORA_DIR) else transformer_dir
    if _CHECKPOINT_NAME.fullmatch(model_dir.name):
        return model_dir.parent, f"{model_dir.name}-"
    if model_dir.name == BEST and (record := best_record(model_dir.parent)) is not None:
        return model_dir.parent, f"{BEST}-step{record['step']}-"
    return model_dir, ""


def is_lora_dir(folder: Path) -> bool:
    return (folder / LORA_WEIGHTS).is_file() and not (folder / "config.json").is_file()


def load_trained_transformer(path: str | Path, dtype: torch.dtype, args) -> SD3Transformer2DModel:
    """The trained transformer: a saved folder, or the base model (`args`' pretrained_model_name_or_path, revision,
    variant: checked against the training run) with a LoRA adapter merged in."""
    folder = resolve_transformer_dir(path)
    if is_lora_dir(folder):
        base = SD3Transformer2DModel.from_pretrained(
            args.pretrained_model_name_or_path,
            subfolder="transformer",
            revision=args.revision,
            variant=args.variant,
            torch_dtype=dtype,
        )
        transformer = load_lora_transformer(base, folder)
    else:
        transformer = SD3Transformer2DModel.from_pretrained(folder, torch_dtype=dtype)
    transformer.requires_grad_(False)
    return transformer.eval()


# Settings that define what the transformer was trained to map: evaluating with other values silently changes the
# model's input (the conditioning, the timestep) or pairs the fine-tuned transformer with another VAE.
# mask_classes too: a things/stuff model read as binary would take its mid-grey things for a raw mask of 0.5.
TRAINING_BOUND_KEYS = (
    "max_sequence_length",
    "timestep",
    "pretrained_model_name_or_path",
    "revision",
    "variant",
    "mask_classes",
)


def _comparable(key: str, value: object) -> object:
    """A local model folder compares as its resolved path, so one folder spelled two ways is the same model; a hub id
    (no such folder here) compares as its string."""
    if key == "pretrained_model_name_or_path" and isinstance(value, str):
        folder = Path(value).expanduser()
        if folder.is_dir() or folder.is_absolute():
            return folder.resolve()
    return value


def _mismatch(key: str, value: object, trained: object, transformer_dir: Path, config_file: Path) -> ValueError:
    flag_value = "null" if trained is None else trained
    return ValueError(
        f"{key} = {value}, but {transformer_dir} was trained with {key} = {trained} ({config_file}); "
        f"pass --{key} {flag_value} or evaluate with that run's --config"
    )


class ProcessingMismatchWarning(UserWarning):
    """The model is evaluated or used with another image processing than it was trained with."""


# A training config.yaml written before the processing key existed comes from a run that resized images square.
PROCESSING_BEFORE_THE_KEY = "square"


def warn_if_processing_differs(trained: dict, args, transformer_dir: Path, config_file: Path) -> None:
    """Warn, naming both, when args.processing differs from the training run's. A warning, not an error: the weights
    run either way, and evaluating across processings is a measurement worth being able to make."""
    trained_with = trained.get("processing", PROCESSING_BEFORE_THE_KEY)
    requested = getattr(args, "processing", PROCESSING_BEFORE_THE_KEY)  # the same rule for callers that predate it
    if trained_with != requested:
        warnings.warn(
            f"processing = {requested}, but {transformer_dir} was trained with processing = {trained_with} "
            f"({config_file}): the model sees differently laid-out images than in training and its scores may drop; "
            f"pass --processing {trained_with} to evaluate it as trained",
            ProcessingMismatchWarning,
            stacklevel=3,
        )


def check_matches_training(transformer_dir: str | Path, args) -> None:
    """Fail when args differ from the training run's config.yaml (beside transformer/ or one level up) on a key the
    trained weights depend on; warn when the processing differs. Folders without a training config (e.g. downloaded
    weights) are not checked."""
    transformer_dir = resolve_transformer_dir(transformer_dir)
    for run_dir in (transformer_dir.parent, transformer_dir.parent.parent):
        config_file = run_dir / "config.yaml"
        if config_file.is_file():
            trained = yaml.safe_load(config_file.read_text()) or {}
            for key in TRAINING_BOUND_KEYS:
                if key in trained and _comparable(key, trained[key]) != _comparable(key, getattr(args, key)):
                    raise _mismatch(key, getattr(args, key), trained[key], transformer_dir, config_file)
            warn_if_processing_differs(trained, args, transformer_dir, config_file)
            return
