"""LoRA adapters on the SD3 transformer through diffusers' peft integration: add, save, restore, load, merge.

A LoRA run's outputs hold the adapter in diffusers' LoRA format (`transformer_lora/pytorch_lora_weights.safetensors`,
keys prefixed `transformer.`, the LoraConfig in its metadata), loadable with `load_lora_adapter` or a diffusers
pipeline's `load_lora_weights`; on request a merged `transformer/` that needs neither peft nor this repo.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from utils.atomic import replace_dir, temporary_sibling

LORA_DIR = "transformer_lora"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
ADAPTER = "default"


def add_lora(transformer: SD3Transformer2DModel, args: argparse.Namespace) -> None:
    """Freeze the base weights and add one trainable adapter on the modules named by `lora_target_modules`."""
    names = [name for name, _ in transformer.named_modules()]
    unmatched = [t for t in args.lora_target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise ValueError(
            f"lora_target_modules {unmatched}: no module of the transformer has that name or suffix; "
            "examples of names: to_q, attn.to_k, add_q_proj, to_add_out, ff.net.0.proj, ff_context.net.2"
        )
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        init_lora_weights="gaussian",  # as diffusers' SD3 LoRA example: B = 0, so training starts at the base model
        target_modules=list(args.lora_target_modules),
    )
    transformer.add_adapter(config, adapter_name=ADAPTER)
    for parameter in transformer.parameters():  # adapters train in fp32 even when the frozen base is bf16
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def lora_state_dict(
    transformer: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The adapter's tensors (peft key names without the adapter name), from `state_dict` when given (e.g. gathered
    from ZeRO-3 shards), else from the model."""
    return get_peft_model_state_dict(transformer, state_dict=state_dict, adapter_name=ADAPTER)


def write_lora(transformer: torch.nn.Module, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
    """`directory/pytorch_lora_weights.safetensors` in diffusers' format, written aside and renamed into place."""
    if not state_dict or any(t.numel() == 0 for t in state_dict.values()):
        raise RuntimeError(f"refusing to write {directory}: the adapter state dict is empty or partitioned")
    staging = temporary_sibling(Path(directory))
    if staging.exists():
        shutil.rmtree(staging)
    StableDiffusion3Pipeline.save_lora_weights(
        staging,
        transformer_lora_layers={k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        transformer_lora_adapter_metadata=transformer.peft_config[ADAPTER].to_dict(),
    )
    replace_dir(staging, Path(directory))


def restore_lora(transformer: torch.nn.Module, directory: Path) -> None:
    """Put saved adapter weights back into a transformer that already has the adapter (resuming training)."""
    saved = load_file(str(Path(directory) / LORA_WEIGHTS))
    state = {k.removeprefix("transformer."): v for k, v in saved.items()}
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{directory}: adapter keys that this transformer lacks: {result.unexpected_keys[:3]}")


def load_lora_transformer(base: SD3Transformer2DModel, directory: Path, merge: bool = True) -> SD3Transformer2DModel:
    """The base transformer with a saved adapter loaded (its LoraConfig from the file); merged by default, which is
    faster at inference and gives the same outputs."""
    base.load_lora_adapter(
        str(directory), weight_name=LORA_WEIGHTS, use_safetensors=True, prefix="transformer", adapter_name=ADAPTER
    )
    if merge:
        base.fuse_lora(adapter_names=[ADAPTER])
        base.unload_lora()
    return base


def merged_state_dict(transformer: SD3Transformer2DModel) -> dict[str, torch.Tensor]:
    """Base weights with the adapter merged in, under the base model's own key names (the model is changed)."""
    transformer.fuse_lora(adapter_names=[ADAPTER])
    transformer.unload_lora()
    return transformer.state_dict()
