import json

import numpy as np
import pytest
import torch
from PIL import Image

import models.conditioning
from dataset.trans10k import Trans10kEval, Trans10kTrain, eval_collate, find_samples
from dataset.transforms import image_to_tensor, mirror_content, pad_to_canvas, tensor_to_image
from demo.assets import CLIP_MAX_LENGTH
from models.conditioning import conditioning_dtype, conditioning_path, encode_empty_prompt, load_empty_prompt_embeds
from models.loading import load_base_transformer, load_frozen_vae, resolve_transformer_dir
from models.losses import latent_mse
from models.segmenter import MaskPredictor, decode_raw_mask, encode_latents

CPU = torch.device("cpu")
T5_TOKENS = 8


def build_predictor(tiny_assets) -> MaskPredictor:
    model = str(tiny_assets["model"])
    prompt_embeds, pooled = load_empty_prompt_embeds(model, None, None, tiny_assets["cache"], CPU, T5_TOKENS)
    vae = load_frozen_vae(model, None, None, torch.float32)
    transformer = load_base_transformer(model, None, None).train()
    return MaskPredictor(vae, transformer, prompt_embeds, pooled, timestep=1000.0)


def train_batch(tiny_assets, size: int = 4) -> dict:
    dataset = Trans10kTrain(find_samples(tiny_assets["data"], "train"), 64, False, 0.0, 1.0, seed=0)
    items = [dataset[i] for i in range(size)]
    return {key: torch.stack([item[key] for item in items]) for key in ("pixel_values", "mask_values")}


def test_conditioning_is_cached_and_matches_the_text_encoders(tiny_assets):
    model = str(tiny_assets["model"])
    prompt_embeds, pooled = load_empty_prompt_embeds(model, None, None, tiny_assets["cache"], CPU, T5_TOKENS)
    assert conditioning_path(tiny_assets["cache"], model, None, None, T5_TOKENS, torch.float32).is_file()
    transformer = load_base_transformer(model, None, None)
    # CLIP tokens (the tokenizers' model_max_length) followed by max_sequence_length T5 tokens.
    assert prompt_embeds.shape == (1, CLIP_MAX_LENGTH + T5_TOKENS, transformer.config.joint_attention_dim)
    assert pooled.shape == (1, transformer.config.pooled_projection_dim)
    # Read back from the cache: identical to a fresh computation by the text encoders.
    fresh, fresh_pooled = encode_empty_prompt(model, None, None, CPU, torch.float32, T5_TOKENS)
    again, again_pooled = load_empty_prompt_embeds(model, None, None, tiny_assets["cache"], CPU, T5_TOKENS)
    assert torch.equal(again, fresh) and torch.equal(again_pooled, fresh_pooled)
    # Anything that changes the conditioning changes the cache file.
    base = conditioning_path(tiny_assets["cache"], model, None, None, T5_TOKENS, torch.float32)
    assert conditioning_path(tiny_assets["cache"], model, "other-revision", None, T5_TOKENS, torch.float32) != base
    assert conditioning_path(tiny_assets["cache"], model, None, None, T5_TOKENS + 1, torch.float32) != base
    assert conditioning_path(tiny_assets["cache"], model, None, None, T5_TOKENS, torch.bfloat16) != base


def test_conditioning_dtype_is_bf16_on_gpu_and_fp32_on_cpu():
    assert conditioning_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert conditioning_dtype(CPU) == torch.float32


def test_conditioning_cache_is_keyed_by_the_dtype_it_was_computed_in(tiny_assets, tmp_path, monkeypatch):
    model, cache = str(tiny_assets["model"]), tmp_path / "cache"
    fp32, _ = load_empty_prompt_embeds(model, None, None, cache, CPU, T5_TOKENS)
    fp32_file = conditioning_path(cache, model, None, None, T5_TOKENS, torch.float32)
    assert json.loads(fp32_file.with_suffix(".json").read_text())["dtype"] == "float32"
    # A GPU computes in bf16: it must get bf16 embeddings, not the fp32 ones already cached. (The encoders run in
    # bf16 on this CPU here; only the dtype choice is swapped.)
    monkeypatch.setattr(models.conditioning, "conditioning_dtype", lambda device: torch.bfloat16)
    bf16, bf16_pooled = load_empty_prompt_embeds(model, None, None, cache, CPU, T5_TOKENS)
    fresh, fresh_pooled = encode_empty_prompt(model, None, None, CPU, torch.bfloat16, T5_TOKENS)
    assert torch.equal(bf16, fresh) and torch.equal(bf16_pooled, fresh_pooled)
    assert not torch.equal(bf16, fp32)
    bf16_file = conditioning_path(cache, model, None, None, T5_TOKENS, torch.bfloat16)
    assert json.loads(bf16_file.with_suffix(".json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in (cache / "prompt_embeds").glob("*.safetensors")) == sorted(
        [fp32_file.name, bf16_file.name]
    )


def test_latents_use_shift_and_scale_and_are_deterministic(tiny_assets):
    vae = load_frozen_vae(str(tiny_assets["model"]), None, None, torch.float32)
    pixels = train_batch(tiny_assets, 2)["pixel_values"]
    latents = encode_latents(vae, pixels)
    mode = vae.encode(pixels).latent_dist.mode()
    expected = (mode - vae.config.shift_factor) * vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)
    assert torch.equal(encode_latents(vae, pixels), latents)  # the mode, never a sample
    raw = decode_raw_mask(vae, latents)
    assert raw.shape == (2, 64, 64) and raw.min() >= 0 and raw.max() <= 1


def test_one_step_updates_every_transformer_parameter_and_never_the_vae(tiny_assets):
    predictor = build_predictor(tiny_assets)
    batch = train_batch(tiny_assets)
    vae_before = {k: v.clone() for k, v in predictor.vae.state_dict().items()}
    weights_before = {k: v.clone() for k, v in predictor.transformer.named_parameters()}
    optimizer = torch.optim.AdamW(predictor.transformer.parameters(), lr=1e-3, weight_decay=0.0)
    # The last MMDiT block is `context_pre_only`: its text-token outputs are discarded, so the text-query
    # projection there cannot influence the loss. Those are the only parameters allowed a zero gradient.
    dead = {
        f"transformer_blocks.{i}.attn.{name}"
        for i, block in enumerate(predictor.transformer.transformer_blocks)
        if block.context_pre_only
        for name in ("add_q_proj.weight", "add_q_proj.bias", "norm_added_q.weight")
    }

    loss = latent_mse(
        predictor.predict_latents(encode_latents(predictor.vae, batch["pixel_values"])),
        encode_latents(predictor.vae, batch["mask_values"]),
    )
    loss.backward()
    for name, param in predictor.transformer.named_parameters():
        assert param.requires_grad, name
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert (param.grad.abs().sum() > 0) == (name not in dead), (
            f"{name}: unexpected gradient {param.grad.abs().sum()}"
        )
    assert all(p.grad is None for p in predictor.vae.parameters())
    optimizer.step()
    for name, param in predictor.transformer.named_parameters():
        assert torch.equal(param, weights_before[name]) == (name in dead), f"{name} changed: {name not in dead}"
    for name, value in predictor.vae.state_dict().items():
        assert torch.equal(value, vae_before[name]), f"VAE {name} changed"


def test_overfitting_one_batch_drops_the_loss_tenfold(tiny_assets):
    torch.manual_seed(0)
    predictor = build_predictor(tiny_assets)
    batch = train_batch(tiny_assets)
    image_latents = encode_latents(predictor.vae, batch["pixel_values"])
    mask_latents = encode_latents(predictor.vae, batch["mask_values"])
    optimizer = torch.optim.AdamW(predictor.transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = latent_mse(predictor.predict_latents(image_latents), mask_latents)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_transformer_dir_accepts_output_dir_checkpoint_and_folder(tmp_path, tiny_assets):
    transformer = load_base_transformer(str(tiny_assets["model"]), None, None)
    transformer.save_pretrained(tmp_path / "run" / "checkpoint-4" / "transformer")
    transformer.save_pretrained(tmp_path / "run" / "transformer")
    assert resolve_transformer_dir(tmp_path / "run") == tmp_path / "run" / "transformer"
    assert (
        resolve_transformer_dir(tmp_path / "run" / "checkpoint-4") == tmp_path / "run" / "checkpoint-4" / "transformer"
    )
    assert resolve_transformer_dir(tmp_path / "run" / "transformer") == tmp_path / "run" / "transformer"
    try:
        resolve_transformer_dir(tmp_path / "nothing")
    except FileNotFoundError as err:
        assert "nothing" in str(err)
    else:
        raise AssertionError("a folder without a transformer must fail")


# ---------------------------------------------------------------------------------------------------------------------
# Test-time augmentation (tta: hflip) and the content box (processing: keep_aspect)


def eval_batch(tiny_assets, processing: str, size: int = 3) -> dict:
    dataset = Trans10kEval(find_samples(tiny_assets["data"], "test"), 64, processing)
    return eval_collate([dataset[i] for i in range(size)])


class SymmetrisedPredictor(MaskPredictor):
    """A mirror-symmetric model: each single pass averages the model on the image and on its mirror, mirrored back,
    so planes_once(mirror(x)) == mirror(planes_once(x)) for the content sizes in ``sizes``."""

    sizes: list = []

    def planes_once(self, pixel_values: torch.Tensor) -> torch.Tensor:
        sizes = self.sizes * (len(pixel_values) // len(self.sizes))
        plain = super().planes_once(pixel_values)
        mirrored = super().planes_once(mirror_content(pixel_values, sizes))
        return (plain + mirror_content(mirrored, sizes)) / 2


def test_keep_aspect_batches_really_have_padding(tiny_assets):
    sizes = eval_batch(tiny_assets, "keep_aspect")["content_size"]
    assert all(max(size) == 64 for size in sizes) and any(min(size) < 64 for size in sizes)


@pytest.mark.parametrize("processing", ["square", "keep_aspect"])
def test_hflip_of_a_mirror_symmetric_model_equals_its_plain_prediction(tiny_assets, processing):
    predictor = build_predictor(tiny_assets)
    predictor.transformer.eval()
    batch = eval_batch(tiny_assets, processing)
    # One content size for the whole batch, so the symmetrised model is symmetric for every item it sees.
    sizes = [batch["content_size"][0]] * 3
    pixels = torch.stack([batch["pixel_values"][0]] * 3) + torch.linspace(-0.1, 0.1, 3)[:, None, None, None]
    plain = SymmetrisedPredictor(*astuple_fields(predictor), tta="none")
    plain.sizes = sizes
    flipped = SymmetrisedPredictor(*astuple_fields(predictor), tta="hflip")
    flipped.sizes = sizes
    expected = plain.predict_content(pixels, sizes)
    result = flipped.predict_content(pixels, sizes)
    for got, want, (height, width) in zip(result, expected, sizes, strict=True):
        assert got.shape == (height, width)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        # The prediction itself is not mirror-symmetric: forgetting to mirror back would fail the check above.
        assert (want - want.flip(-1)).abs().max() > 1e-3


@pytest.mark.parametrize("processing", ["square", "keep_aspect"])
def test_hflip_of_a_model_is_the_mean_of_the_plain_and_the_mirrored_back_pass(tiny_assets, processing):
    base = build_predictor(tiny_assets)
    base.transformer.eval()
    batch = eval_batch(tiny_assets, processing)
    pixels, sizes = batch["pixel_values"], batch["content_size"]
    # Two independent passes with tta none: the image, and its mirror (content box flipped, padding rebuilt by the
    # dataset's own fitting of the mirrored image), the second mirrored back with a slice.
    plain = base.predict_content(pixels, sizes)
    mirrored_pixels = torch.stack(
        [
            image_to_tensor(Image.fromarray(pad_to_canvas(np.ascontiguousarray(image[:h, :w, :][:, ::-1]), 64)))
            for image, (h, w) in zip((tensor_to_image(p) for p in pixels), sizes, strict=True)
        ]
    )
    mirrored = [raw.flip(-1) for raw in base.predict_content(mirrored_pixels, sizes)]
    expected = [(a + b) / 2 for a, b in zip(plain, mirrored, strict=True)]

    calls = []
    hflip = MaskPredictor(*astuple_fields(base), tta="hflip")
    original = hflip.predict_latents
    hflip.predict_latents = lambda latents: calls.append(latents.shape[0]) or original(latents)
    result = hflip.predict_content(pixels, sizes)
    assert calls == [2 * len(pixels)]  # one transformer call on the image and its mirror together
    for got, want, plain_raw, (height, width) in zip(result, expected, plain, sizes, strict=True):
        assert got.shape == (height, width)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert (got - plain_raw).abs().max() > 1e-3  # the mirror pass really contributes


def test_predict_content_is_predict_raw_cut_to_each_box(tiny_assets):
    predictor = build_predictor(tiny_assets)
    predictor.transformer.eval()
    batch = eval_batch(tiny_assets, "keep_aspect")
    full = predictor.predict_raw(batch["pixel_values"], batch["content_size"])
    assert full.shape == (3, 64, 64)
    cropped = predictor.predict_content(batch["pixel_values"], batch["content_size"])
    for raw, whole, (height, width) in zip(cropped, full, batch["content_size"], strict=True):
        assert torch.equal(raw, whole[:height, :width])
    with pytest.raises(ValueError, match="tta"):
        MaskPredictor(*astuple_fields(predictor), tta="vflip")


def astuple_fields(predictor: MaskPredictor) -> tuple:
    """The predictor's models and conditioning, to build another with a different tta."""
    return (predictor.vae, predictor.transformer, predictor.prompt_embeds, predictor.pooled_prompt_embeds, 1000.0)
