import os

import pytest
import torch
from accelerate import Accelerator

from dataset.latent_cache import COMPLETE, CachedLatentsTrain, build_latent_cache, latent_key, vae_fingerprint
from dataset.trans10k import TrainSampler, Trans10kTrain, find_samples
from models.loading import load_frozen_vae
from models.segmenter import encode_latents
from utils.config import ConfigError, parse_config


@pytest.fixture(scope="module")
def cached(tiny_assets, tmp_path_factory):
    samples = find_samples(tiny_assets["data"], "train")[:6]
    vae = load_frozen_vae(str(tiny_assets["model"]), None, None, torch.float32)
    key = latent_key(vae_fingerprint("tiny", None, None, vae, vae.dtype), 64, True, samples)
    cache_dir = tmp_path_factory.mktemp("latents") / key
    build_latent_cache(cache_dir, samples, 64, True, vae, encode_latents, Accelerator(cpu=True), batch_size=4)
    return samples, vae, cache_dir


def test_cached_latents_equal_encoding_the_same_augmented_batch(cached):
    samples, vae, cache_dir = cached
    pixels = Trans10kTrain(samples, 64, random_flip=True, color_jitter=0.0, random_crop_scale=1.0, seed=3)
    latents = CachedLatentsTrain(samples, cache_dir, 64, random_flip=True, seed=3)
    sampler = TrainSampler(len(samples), seed=3)
    flips_seen = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for key in sampler:
            expected = pixels[key]
            stored = latents[key]
            image = encode_latents(vae, expected["pixel_values"][None])[0]
            mask = encode_latents(vae, expected["mask_values"][None])[0]
            # Equal up to float reordering: the cache encodes batches of 4, this check one image at a time.
            torch.testing.assert_close(stored["image_latents"], image, rtol=1e-5, atol=1e-5, msg=str(key))
            torch.testing.assert_close(stored["mask_latents"], mask, rtol=1e-5, atol=1e-5, msg=str(key))
            assert torch.equal(stored["gt_mask"], expected["mask_values"][:1] > 0), key  # what the pixel loss uses
            flipped = encode_latents(vae, expected["pixel_values"].flip(-1)[None])[0]
            flips_seen.add(torch.allclose(image, flipped, atol=1e-3))
    assert flips_seen == {False}  # sanity: the flip changes the latents, so the check above is not vacuous
    # and both flipped and unflipped variants were served over the epochs
    served = {torch.equal(latents[k]["image_latents"], latents[(k[0], 0)]["image_latents"]) for k in sampler}
    assert len(served) == 2


def test_complete_cache_is_reused_and_incomplete_is_rebuilt(cached):
    samples, vae, cache_dir = cached
    shard = cache_dir / "shard-0.safetensors"
    before = shard.stat().st_mtime_ns
    build_latent_cache(cache_dir, samples, 64, True, vae, encode_latents, Accelerator(cpu=True), batch_size=4)
    assert shard.stat().st_mtime_ns == before
    (cache_dir / COMPLETE).unlink()  # as if killed before the end
    build_latent_cache(cache_dir, samples, 64, True, vae, encode_latents, Accelerator(cpu=True), batch_size=4)
    assert (cache_dir / COMPLETE).is_file() and shard.stat().st_mtime_ns != before


def test_an_old_format_cache_is_never_read(cached, monkeypatch):
    import dataset.latent_cache as latent_cache

    samples, vae, cache_dir = cached
    fingerprint = vae_fingerprint("tiny", None, None, vae, vae.dtype)
    key = latent_key(fingerprint, 64, True, samples)
    monkeypatch.setattr(latent_cache, "CACHE_FORMAT", latent_cache.CACHE_FORMAT - 1)
    assert latent_key(fingerprint, 64, True, samples) != key  # another folder: an old cache is not found
    with pytest.raises(ValueError, match="format"):  # and one copied by hand is refused
        CachedLatentsTrain(samples, cache_dir, 64, random_flip=True, seed=3)


def test_key_covers_vae_resolution_flip_and_files(cached):
    samples, vae, _ = cached
    fingerprint = vae_fingerprint("tiny", None, None, vae, vae.dtype)
    base = latent_key(fingerprint, 64, True, samples)
    assert latent_key(fingerprint, 128, True, samples) != base
    assert latent_key(fingerprint, 64, False, samples) != base
    assert latent_key(vae_fingerprint("tiny", "rev2", None, vae, vae.dtype), 64, True, samples) != base
    stat = samples[0].mask_path.stat()
    os.utime(samples[0].mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        assert latent_key(fingerprint, 64, True, samples) != base
    finally:
        os.utime(samples[0].mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("flags", [["--color_jitter", "0.1"], ["--random_crop_scale", "0.8"]])
def test_random_pixel_augmentation_cannot_be_cached(flags):
    with pytest.raises(ConfigError, match="cache_latents"):
        parse_config(["--cache_latents", "true", *flags])
