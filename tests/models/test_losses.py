"""The training losses: latent MSE, BCE + soft Dice through the frozen decoder, padding masks, gradients."""

import numpy as np
import pytest
import torch

from models.conditioning import load_empty_prompt_embeds
from models.loading import load_base_transformer, load_frozen_vae
from models.losses import EPS, TrainingLoss, bce_dice, inward_clamp, latent_mse
from models.segmenter import MaskPredictor, decode_raw_mask, encode_latents


def reference_bce_dice(raw: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """BCE + soft Dice (smooth 1) written out in float64 numpy: raw, gt, valid [B, H, W]."""
    p = np.clip(raw.astype(np.float64), EPS, 1 - EPS)
    g = gt.astype(np.float64)
    v = np.ones_like(g) if valid is None else valid.astype(np.float64)
    bce = -(g * np.log(p) + (1 - g) * np.log(1 - p))
    dice = [
        1 - (2 * (p[i] * g[i] * v[i]).sum() + 1) / ((p[i] * v[i]).sum() + (g[i] * v[i]).sum() + 1)
        for i in range(len(p))
    ]
    return float((bce * v).sum() / v.sum() + np.mean(dice))


def random_case(seed: int, shape=(2, 1, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator) > 0.5


def test_inward_clamp_passes_the_gradient_only_back_towards_the_range():
    x = torch.tensor([-0.5, -0.5, 0.5, 0.5, 1.5, 1.5], requires_grad=True)
    upstream = torch.tensor([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])  # descent moves x by -upstream
    y = inward_clamp(x, 0.0, 1.0)
    assert torch.equal(y, x.detach().clamp(0, 1))
    y.backward(upstream)
    # below: only a rise passes; inside: everything; above: only a fall
    assert x.grad.tolist() == [-1.0, 0.0, -1.0, 1.0, 0.0, 1.0]


def test_a_perfect_prediction_reaches_the_analytic_minimum_with_zero_gradient():
    _, gt = random_case(0)
    # Exactly 0/1, and overshoots on the right side (1.3 on foreground, -0.2 on background): all perfect.
    raw = gt.float().clone()
    raw[:, :, ::3] = torch.where(gt[:, :, ::3], 1.3, -0.2)
    raw.requires_grad_(True)
    loss = bce_dice(raw, gt)
    loss.backward()
    fg = gt.flatten(1).sum(1).double()
    bg = gt[0].numel() - fg
    dice = 1 - (2 * (1 - EPS) * fg + 1) / ((1 - EPS) * fg + EPS * bg + fg + 1)
    minimum = -np.log(1 - EPS) + dice.mean().item()  # BCE is -log(1 - EPS) at every pixel, not 0
    assert loss.item() == pytest.approx(minimum, rel=1e-5)
    assert minimum < 2e-3
    assert torch.count_nonzero(raw.grad) == 0


def test_a_wrong_overshoot_is_pulled_back():
    gt = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    raw = torch.full((1, 1, 4, 4), 1.3, requires_grad=True)  # background decoded far above 1: a hard clamp is deaf
    bce_dice(raw, gt).backward()
    assert (raw.grad > 0).all()  # a descent step lowers it


@pytest.mark.parametrize("seed", [1, 2])
def test_bce_dice_equals_an_independent_computation(seed):
    raw, gt = random_case(seed)
    valid = torch.ones_like(raw)
    valid[0, :, :, 11:] = 0
    expected = reference_bce_dice(raw[:, 0].numpy(), gt[:, 0].numpy(), valid[:, 0].numpy())
    assert bce_dice(raw, gt, valid).item() == pytest.approx(expected, rel=1e-5)
    assert bce_dice(raw, gt).item() == pytest.approx(reference_bce_dice(raw[:, 0].numpy(), gt[:, 0].numpy()), rel=1e-5)


def test_padding_never_changes_the_pixel_loss():
    raw, gt = random_case(3)
    valid = torch.ones_like(raw)
    valid[:, :, 10:, :] = 0  # bottom rows are padding
    padding = valid == 0
    other_raw = torch.where(padding, 1 - raw, raw)
    other_gt = torch.where(padding, ~gt, gt)
    assert bce_dice(other_raw, other_gt, valid).item() == bce_dice(raw, gt, valid).item()
    assert bce_dice(other_raw, other_gt).item() != bce_dice(raw, gt).item()  # sanity: without the mask it changes


def test_latent_mse_weights_each_cell_by_its_valid_pixel_fraction():
    generator = torch.Generator().manual_seed(4)
    predicted, target = torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 4, 3, 3, generator=generator)
    valid = torch.ones(2, 1, 24, 24)
    valid[0, :, :, 20:] = 0  # image 0: its last latent column is half padding
    valid[1, :, 16:, :] = 0  # image 1: its last latent row is all padding
    cell = valid.numpy().reshape(2, 1, 3, 8, 3, 8).mean((3, 5))  # [2,1,3,3]
    squared = (predicted.double().numpy() - target.double().numpy()) ** 2
    expected = (squared * cell).sum() / (cell.sum() * 4)
    assert latent_mse(predicted, target, valid).item() == pytest.approx(expected, rel=1e-6)
    moved = target.clone()
    moved[1, :, 2, :] += 5.0  # a latent cell that is all padding does not count
    assert latent_mse(predicted, moved, valid).item() == pytest.approx(expected, rel=1e-6)
    assert latent_mse(predicted, target, torch.ones_like(valid)).item() == pytest.approx(
        latent_mse(predicted, target).item(), rel=1e-6
    )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="not one of"):
        TrainingLoss("dice", 1.0)
    with pytest.raises(ValueError, match="VAE"):
        TrainingLoss("pixel", 1.0)
    with pytest.raises(ValueError, match="ground-truth"):
        latents = torch.zeros(1, 4, 2, 2)
        TrainingLoss("latent_mse+pixel", 1.0, vae=torch.nn.Identity())(latents, latents)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--loss", "pixel", "--pixel_loss_weight", "0"], "pixel_loss_weight"),
        (["--loss", "pixels"], "did you mean 'pixel'"),
        (["--num_validation_images", "-1"], "num_validation_images"),
    ],
)
def test_config_refuses_impossible_loss_and_validation_settings(flags, message):
    from utils.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(flags)
    assert parse_config(["--config", "configs/demo.yaml", "--loss", "latent_mse+pixel"])[0].loss == "latent_mse+pixel"


# ---- through the tiny SD3.5-layout VAE and transformer


@pytest.fixture(scope="module")
def tiny(tiny_assets):
    from dataset.trans10k import Trans10kTrain, find_samples

    model = str(tiny_assets["model"])
    embeds, pooled = load_empty_prompt_embeds(model, None, None, tiny_assets["cache"], torch.device("cpu"), 8)
    vae = load_frozen_vae(model, None, None, torch.float32)
    dataset = Trans10kTrain(find_samples(tiny_assets["data"], "train"), 64, False, 0.0, 1.0, seed=0)
    items = [dataset[i] for i in range(2)]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("pixel_values", "mask_values")}
    return model, embeds, pooled, vae, batch


def transformer_gradients(tiny, loss_name: str, checkpointing: bool) -> tuple[dict, torch.nn.Module]:
    model, embeds, pooled, vae, batch = tiny
    torch.manual_seed(0)
    predictor = MaskPredictor(vae, load_base_transformer(model, None, None).train(), embeds, pooled, 1000.0)
    if checkpointing:
        vae.enable_gradient_checkpointing()
    try:
        predicted = predictor.predict_latents(encode_latents(vae, batch["pixel_values"]))
        gt = batch["mask_values"][:, :1] > 0
        TrainingLoss(loss_name, 0.7, vae)(predicted, encode_latents(vae, batch["mask_values"]), gt).backward()
    finally:
        vae.disable_gradient_checkpointing()
    grads = {name: p.grad for name, p in predictor.transformer.named_parameters()}
    return grads, vae


@pytest.mark.parametrize("loss_name", ["pixel", "latent_mse+pixel"])
def test_the_pixel_loss_gradient_reaches_the_transformer_and_not_the_vae(tiny, loss_name):
    grads, vae = transformer_gradients(tiny, loss_name, checkpointing=False)
    assert all(p.grad is None and not p.requires_grad for p in vae.parameters())
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["proj_out.weight"].abs().sum() > 0
    assert sum(int(g.abs().sum() > 0) for g in grads.values()) > 0.9 * len(grads)


def test_decoder_gradient_checkpointing_gives_the_same_gradients(tiny):
    plain, _ = transformer_gradients(tiny, "pixel", checkpointing=False)
    checkpointed, vae = transformer_gradients(tiny, "pixel", checkpointing=True)
    assert all(p.grad is None for p in vae.parameters())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-7, msg=name)


def test_the_pixel_loss_of_the_gts_own_latents_is_bce_dice_of_the_inference_decode(tiny):
    """Independent path: decode_raw_mask (no autograd, hard clamp, as evaluation does) and numpy BCE + Dice."""
    _, _, _, vae, batch = tiny
    mask_latents = encode_latents(vae, batch["mask_values"])
    gt = batch["mask_values"][:, :1] > 0
    expected_pixel = reference_bce_dice(decode_raw_mask(vae, mask_latents).numpy(), gt[:, 0].numpy())
    assert TrainingLoss("pixel", 1.0, vae)(mask_latents, mask_latents, gt).item() == pytest.approx(
        expected_pixel, rel=1e-4
    )
    predicted = mask_latents + 0.1
    both = TrainingLoss("latent_mse+pixel", 0.5, vae)(predicted, mask_latents, gt).item()
    expected = 0.01 + 0.5 * reference_bce_dice(decode_raw_mask(vae, predicted).numpy(), gt[:, 0].numpy())
    assert both == pytest.approx(expected, rel=1e-4)
