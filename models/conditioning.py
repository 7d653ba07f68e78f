"""The constant empty-prompt conditioning of the SD3 transformer, computed once from the model's own text encoders.

The three text encoders (CLIP-L, CLIP-G, T5-XXL: ~10 GB in half precision) are loaded only to encode "" and freed
before training starts; the result is cached on disk keyed by model id, revision, variant, T5 length, the dtype the
encoders ran in and (for local folders) the text-encoder weight files, so later runs never load them.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from utils.atomic import atomic_path, atomic_write_json
from utils.cache import cache_root, content_key, file_stamp

TEXT_SUBFOLDERS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


def conditioning_dtype(device: torch.device) -> torch.dtype:
    """The dtype the text encoders run in: bf16 on a GPU (T5-XXL is ~10 GB in half precision), fp32 on a CPU.

    The one place this is decided, so the cache key and the computation cannot disagree."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def conditioning_key(
    model: str, revision: str | None, variant: str | None, max_sequence_length: int, dtype: torch.dtype
) -> str:
    """Model id, revision, variant, T5 length and compute dtype (bf16 and fp32 encoders give different embeddings);
    a local folder also contributes its text-encoder files' stats."""
    fingerprint = {
        "model": model,
        "revision": revision,
        "variant": variant,
        "max_sequence_length": max_sequence_length,
        "dtype": dtype_name(dtype),
    }
    folder = Path(model)
    if folder.is_dir():
        fingerprint["files"] = sorted(
            file_stamp(path) for sub in TEXT_SUBFOLDERS for path in (folder / sub).glob("*") if path.is_file()
        )
    return content_key(fingerprint)


def conditioning_path(
    cache_dir: str | Path | None,
    model: str,
    revision: str | None,
    variant: str | None,
    max_sequence_length: int,
    dtype: torch.dtype,
) -> Path:
    key = conditioning_key(model, revision, variant, max_sequence_length, dtype)
    return cache_root(cache_dir) / "prompt_embeds" / f"empty_prompt_{key}.safetensors"


@torch.no_grad()
def encode_empty_prompt(
    model: str,
    revision: str | None,
    variant: str | None,
    device: torch.device,
    dtype: torch.dtype,
    max_sequence_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the SD3 pipeline's own `encode_prompt("")`, so the conditioning is exactly what the base model saw."""
    from diffusers import StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5Tokenizer

    load = {"revision": revision, "variant": variant, "torch_dtype": dtype}
    text_encoders = {
        "text_encoder": CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder", **load),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", **load),
        "text_encoder_3": T5EncoderModel.from_pretrained(model, subfolder="text_encoder_3", **load),
    }
    tokenizers = {
        "tokenizer": CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", revision=revision),
        "tokenizer_2": CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", revision=revision),
        "tokenizer_3": T5Tokenizer.from_pretrained(model, subfolder="tokenizer_3", revision=revision),
    }
    pipeline = StableDiffusion3Pipeline(transformer=None, vae=None, scheduler=None, **text_encoders, **tokenizers)
    pipeline.to(device)
    prompt_embeds, _, pooled_prompt_embeds, _ = pipeline.encode_prompt(
        "", "", "", device=device, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length
    )
    result = prompt_embeds.float().cpu(), pooled_prompt_embeds.float().cpu()
    del pipeline, text_encoders
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def load_empty_prompt_embeds(
    model: str,
    revision: str | None,
    variant: str | None,
    cache_dir: str | Path | None,
    device: torch.device,
    max_sequence_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds [1, L, D], pooled_prompt_embeds [1, P]) in fp32 on CPU, from the cache or computed once.

    L = the CLIP tokenizers' model_max_length (77 for SD3.5) + max_sequence_length T5 tokens.

    Call it under `accelerator.local_main_process_first()` so one process per machine computes and the others read.
    """
    dtype = conditioning_dtype(device)
    path = conditioning_path(cache_dir, model, revision, variant, max_sequence_length, dtype)
    if not path.exists():
        prompt_embeds, pooled = encode_empty_prompt(model, revision, variant, device, dtype, max_sequence_length)
        with atomic_path(path) as tmp:  # per-process temporary: two machines may compute it at once
            save_file({"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}, str(tmp))
        sidecar = {
            "model": model,
            "revision": revision,
            "variant": variant,
            "max_sequence_length": max_sequence_length,
            "dtype": dtype_name(dtype),
        }
        atomic_write_json(path.with_suffix(".json"), sidecar)
    tensors = load_file(str(path))
    return tensors["prompt_embeds"], tensors["pooled_prompt_embeds"]
