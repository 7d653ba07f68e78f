"""Train from VAE latents computed once: the frozen encoder then never runs in a training step (validation still
encodes its few images).

The cache holds, per training image, the image and mask latents at `resolution` (and their horizontally flipped
versions when random_flip is on: the resized pixels are flipped, then encoded, the pixels the uncached path would
encode), and the binary ground truth at `resolution` that the pixel loss compares with (one bit-packed plane per
channel of dataset.transforms.target_channels, 1 for binary and 2 for things_stuff: at most 1/64 of the latents'
size; flipped on reading). It lives under `<cache_dir>/latents/<key>/`, where the key covers the VAE (id, revision,
variant, dtype, config), the cache format, the resolution, the flip setting, the mask encoding (mask_classes) and a
manifest of the dataset files (path, size, mtime), so any change rebuilds it. Ranks encode disjoint shards in parallel;
`complete.json` is written last, so a killed build is never reused.
Random crops and colour jitter draw new pixels every epoch and cannot be cached: config validation refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dataset.trans10k import Sample, Trans10kTrain, read_image_size
from dataset.transforms import TARGET_CHANNELS, sample_train_augmentation, target_channels
from utils.atomic import atomic_path, atomic_write_json
from utils.cache import content_key, file_stamp

COMPLETE = "complete.json"
# Bumped whenever what a cache holds changes, so an older cache is rebuilt rather than read: 2 added the GT masks.
CACHE_FORMAT = 2
# Cache entry "<index>/<kind>[_flip]" holds the latent of this Trans10kTrain item.
_ITEM_KEYS = {"image": "pixel_values", "mask": "mask_values"}


def latent_key(
    vae_fingerprint: dict, resolution: int, random_flip: bool, samples: Sequence[Sample], mask_classes: str = "binary"
) -> str:
    """VAE, resolution, flips, mask encoding and every image and mask file (path, size, mtime) of the split."""
    manifest = [(*file_stamp(s.image_path), *file_stamp(s.mask_path)) for s in samples]
    payload = {
        "format": CACHE_FORMAT,
        "vae": vae_fingerprint,
        "resolution": resolution,
        "random_flip": random_flip,
        "mask_classes": mask_classes,
        "files": manifest,
    }
    return content_key(payload)


def vae_fingerprint(model: str, revision: str | None, variant: str | None, vae, dtype: torch.dtype) -> dict:
    return {
        "model": model,
        "revision": revision,
        "variant": variant,
        "dtype": str(dtype),
        "config": {k: v for k, v in vae.config.items() if not k.startswith("_")},
    }


def latent_cache_dir(
    cache_root: Path,
    model: str,
    revision: str | None,
    variant: str | None,
    vae,
    resolution: int,
    random_flip: bool,
    samples: Sequence[Sample],
    mask_classes: str = "binary",
) -> Path:
    """`<cache_root>/latents/<key>`: one folder per VAE, resolution, flips, mask encoding and dataset manifest."""
    fingerprint = vae_fingerprint(model, revision, variant, vae, vae.dtype)
    return Path(cache_root) / "latents" / latent_key(fingerprint, resolution, random_flip, samples, mask_classes)


def _variants(random_flip: bool) -> tuple[str, ...]:
    return ("", "_flip") if random_flip else ("",)


def pack_gt_mask(mask_values: torch.Tensor, mask_classes: str = "binary") -> torch.Tensor:
    """mask_values [3, H, W] in [-1, 1] (mask_to_tensor) -> the pixel loss's ground truth (target_channels, C planes)
    as packed bits, uint8 [ceil(C*H*W / 8)]."""
    return torch.from_numpy(np.packbits(target_channels(mask_values[None], mask_classes)[0].numpy().reshape(-1)))


def unpack_gt_mask(bits: torch.Tensor, resolution: int, channels: int = 1) -> torch.Tensor:
    """The inverse of pack_gt_mask: bool [channels, resolution, resolution]."""
    flat = np.unpackbits(bits.numpy(), count=channels * resolution * resolution).astype(bool)
    return torch.from_numpy(flat.reshape(channels, resolution, resolution))


@torch.no_grad()
def build_latent_cache(
    cache_dir: Path,
    samples: Sequence[Sample],
    resolution: int,
    random_flip: bool,
    vae,
    encode,
    accelerator,
    batch_size: int,
    mask_classes: str = "binary",
) -> Path:
    """Encode every sample once (sharded over ranks) unless a complete cache with the same key exists."""
    if (cache_dir / COMPLETE).is_file():
        return cache_dir
    plain = Trans10kTrain(
        samples,
        resolution,
        random_flip=False,
        color_jitter=0.0,
        random_crop_scale=1.0,
        seed=0,
        mask_classes=mask_classes,
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(samples), world))
    tensors: dict[str, torch.Tensor] = {}
    for start in tqdm(
        range(0, len(mine), batch_size), desc="caching latents", disable=not accelerator.is_main_process
    ):
        indices = mine[start : start + batch_size]
        items = [plain[i] for i in indices]
        for suffix in _variants(random_flip):
            for kind, item_key in _ITEM_KEYS.items():
                pixels = torch.stack([item[item_key] for item in items])
                if suffix:
                    pixels = pixels.flip(-1)  # flip the pixels, as the uncached path does, then encode
                latents = encode(vae, pixels.to(accelerator.device)).cpu()
                tensors.update(
                    {f"{i}/{kind}{suffix}": latent.contiguous() for i, latent in zip(indices, latents, strict=True)}
                )
        masks = [pack_gt_mask(item["mask_values"], mask_classes) for item in items]  # unflipped: flipped on reading
        tensors.update({f"{i}/gt_bits": bits for i, bits in zip(indices, masks, strict=True)})
    with atomic_path(cache_dir / f"shard-{rank}.safetensors") as tmp:
        save_file(tensors, str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        sizes = {i: list(read_image_size(s.image_path)) for i, s in enumerate(samples)}
        index = {
            "format": CACHE_FORMAT,
            "num_samples": len(samples),
            "num_shards": world,
            "random_flip": random_flip,
            "resolution": resolution,
            "mask_classes": mask_classes,
            "image_sizes": sizes,
        }
        atomic_write_json(cache_dir / COMPLETE, index)
    accelerator.wait_for_everyone()
    return cache_dir


class CachedLatentsTrain(Trans10kTrain):
    """Same keys, sampler and flip decisions as Trans10kTrain, but returns stored latents instead of pixels."""

    def __init__(
        self,
        samples: Sequence[Sample],
        cache_dir: Path,
        resolution: int,
        random_flip: bool,
        seed: int,
        mask_classes: str = "binary",
    ):
        super().__init__(
            samples,
            resolution,
            random_flip,
            color_jitter=0.0,
            random_crop_scale=1.0,
            seed=seed,
            mask_classes=mask_classes,
        )
        index = json.loads((cache_dir / COMPLETE).read_text())
        if index.get("format") != CACHE_FORMAT:  # the key covers the format: only a hand-copied folder gets here
            raise ValueError(
                f"latent cache {cache_dir} has format {index.get('format')}, this code reads {CACHE_FORMAT}; delete "
                "the folder (it is rebuilt on the next run)"
            )
        if index["num_samples"] != len(samples):
            raise ValueError(f"latent cache {cache_dir} holds {index['num_samples']} samples, dataset {len(samples)}")
        self.cache_dir = cache_dir
        self.num_shards = index["num_shards"]
        self.image_sizes = {int(i): tuple(size) for i, size in index["image_sizes"].items()}
        self._shards: dict[int, Any] = {}  # opened lazily in each worker: memory-mapped, nothing loaded up front

    def _shard(self, index: int):
        shard = index % self.num_shards
        if shard not in self._shards:
            self._shards[shard] = safe_open(str(self.cache_dir / f"shard-{shard}.safetensors"), framework="pt")
        return self._shards[shard]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = self._index_and_seed(key)
        generator = torch.Generator().manual_seed(aug_seed)
        # Draw the flip exactly as Trans10kTrain does for this key, so cached and uncached runs see the same data.
        augmentation = sample_train_augmentation(self.image_sizes[index], generator, self.random_flip, 0.0, 1.0)
        suffix = "_flip" if augmentation.flip else ""
        shard = self._shard(index)
        channels = TARGET_CHANNELS[self.mask_classes]
        gt_mask = unpack_gt_mask(shard.get_tensor(f"{index}/gt_bits"), self.resolution, channels)  # [C,H,W] bool
        return {
            "image_latents": shard.get_tensor(f"{index}/image{suffix}"),
            "mask_latents": shard.get_tensor(f"{index}/mask{suffix}"),
            "gt_mask": gt_mask.flip(-1) if augmentation.flip else gt_mask,
            "stem": self.samples[index].stem,
        }

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}}  # file handles do not cross into worker processes
