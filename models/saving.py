"""Write the trained transformer as a `from_pretrained` folder (config.json + safetensors) from a full state dict.

diffusers' `save_pretrained` (0.42.1) takes no state dict: it always writes `self.state_dict()`, which under
ZeRO-3 holds 0-element partitions. So the trainer gathers the full state dict and this module writes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import save_file

from utils.atomic import replace_dir, temporary_sibling


def check_full_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, directory: Path) -> None:
    """Refuse to write a partitioned or partial state dict: it would save, then fail to load hours later."""
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict))
    empty = sorted(name for name, tensor in state_dict.items() if tensor.numel() == 0)
    if missing or empty:
        raise RuntimeError(
            f"refusing to write {directory}: {len(empty)} of {len(state_dict)} tensors are empty "
            f"(e.g. {empty[:3]}) and {len(missing)} are missing (e.g. {missing[:3]}). Under DeepSpeed ZeRO-3 the "
            "weights must be gathered: keep `stage3_gather_16bit_weights_on_model_save: true` in the DeepSpeed config."
        )


def write_transformer(model: SD3Transformer2DModel, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
    """Write `directory` (config.json + diffusion_pytorch_model.safetensors) atomically: built aside, then renamed."""
    directory = Path(directory)
    check_full_state_dict(state_dict, model, directory)
    staging = temporary_sibling(directory)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    model.save_config(staging)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    save_file(tensors, str(staging / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    replace_dir(staging, directory)
