"""Training losses, chosen by the `loss` config key: latent MSE, a pixel-space segmentation loss through the frozen
VAE decoder, or both.

Every loss takes an optional pixel `valid_mask` [B, 1, H, W] (1 = real image, 0 = padding; None = all valid): the
pixel loss ignores padded pixels, the latent MSE weights each latent cell by the valid fraction of the pixels it
covers (8 x 8 for the SD3.5 VAE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.segmenter import decode_mask_unclamped

LOSS_CHOICES = ("latent_mse", "pixel", "latent_mse+pixel")  # config.yaml's (choices: ...) of `loss`
# The pixel loss clamps the raw mask into [EPS, 1 - EPS]: log(0) would make BCE infinite. Its minimum, reached by a
# perfect prediction (raw exactly 0 or 1, or beyond on the right side), is therefore -log(1 - EPS) ~ 1e-3 for BCE,
# not 0; the gradient there is exactly 0 (see inward_clamp).
EPS = 1e-3
DICE_SMOOTH = 1.0  # pixels added to the numerator and denominator of soft Dice: finite for an empty GT and prediction


def latent_cell_weights(valid_mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, h, w]: the valid fraction of the pixels under each latent cell (an average pool over the VAE factor)."""
    factor = valid_mask.shape[-1] // latent_size[-1]
    if valid_mask.shape[-2:] != (latent_size[0] * factor, latent_size[1] * factor):
        raise ValueError(f"valid_mask {tuple(valid_mask.shape)} does not tile latents of size {tuple(latent_size)}")
    return F.avg_pool2d(valid_mask.float(), kernel_size=factor)


def latent_mse(
    predicted_latents: torch.Tensor, mask_latents: torch.Tensor, valid_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE in latent space against the VAE's mask latents (the E2E fine-tuning reference), in fp32; with a valid_mask,
    the mean over latent cells weighted by their valid fraction."""
    predicted, target = predicted_latents.float(), mask_latents.float()
    if valid_mask is None:
        return F.mse_loss(predicted, target)
    weights = latent_cell_weights(valid_mask.to(predicted.device), predicted.shape[-2:])  # [B,1,h,w]
    squared = (predicted - target).pow(2)  # [B,C,h,w]
    return (squared * weights).sum() / (weights.sum() * predicted.shape[1])


# The latent-only losses by name (bench/ times the latent objective through this table).
LOSSES = {"latent_mse": latent_mse}


class _InwardClamp(torch.autograd.Function):
    """clamp(x, low, high) whose gradient passes wherever a descent step moves x back towards [low, high]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bounds = (low, high)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        low, high = ctx.bounds
        # Descent moves x by -grad: below the range it must rise (grad < 0), above it fall (grad > 0).
        passes = ((x >= low) & (x <= high)) | ((x < low) & (grad < 0)) | ((x > high) & (grad > 0))
        return grad * passes, None, None


def inward_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The raw mask clamped as at inference, but not deaf outside the range.

    A hard clamp has zero gradient wherever the decoder overshoots, so a background pixel decoded at 1.2 would never
    be corrected; a straight-through clamp corrects it but also pushes a right pixel at 1.2 ever further out (BCE
    always wants more). This one passes the gradient only towards the range: wrong overshoots are pulled back, right
    ones are left alone, and the forward value is the inference clamp's."""
    return _InwardClamp.apply(x, low, high)


def bce_dice(raw: torch.Tensor, gt_mask: torch.Tensor, valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BCE (mean over valid pixels and channels) + soft Dice (per image and channel, over valid pixels, then the mean)
    of decoded mask channels [B, C, H, W] against the binary ground truth of each channel [B, C, H, W], in fp32.
    C = 1 (the raw mask) for binary; things_stuff's class version has C = 2 (transparent and stuff, read from the
    decoded grey level: dataset.transforms.loss_channels), so each question gets its own BCE and Dice."""
    probability = inward_clamp(raw.float(), EPS, 1 - EPS)
    target = gt_mask.float().to(probability.device)
    if target.shape != probability.shape:
        raise ValueError(f"ground truth {tuple(target.shape)} does not match prediction {tuple(probability.shape)}")
    valid = torch.ones_like(target[:, :1]) if valid_mask is None else valid_mask.float().to(probability.device)
    # Written out instead of F.binary_cross_entropy, which refuses to run under CUDA autocast.
    bce = -(target * probability.log() + (1 - target) * (1 - probability).log())
    bce = (bce * valid).sum() / (valid.sum() * probability.shape[1])
    dims = (2, 3)
    intersection = (probability * target * valid).sum(dims)
    total = (probability * valid).sum(dims) + (target * valid).sum(dims)
    dice = 1 - (2 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)  # [B, C]
    return bce + dice.mean()


@dataclass
class TrainingLoss:
    """The configured objective: latent_mse, pixel_loss_weight x (BCE + soft Dice) of the decoded prediction, or
    their sum. `vae` (frozen) decodes the predicted latents for the pixel term; gradients pass through it."""

    name: str
    pixel_loss_weight: float
    vae: torch.nn.Module | None = None
    mask_classes: str = "binary"  # how the decoded mask image is read (dataset.transforms.loss_channels)

    def __post_init__(self) -> None:
        if self.name not in LOSS_CHOICES:
            raise ValueError(f"loss {self.name!r} is not one of {', '.join(LOSS_CHOICES)}")
        if self.uses_pixels and self.vae is None:
            raise ValueError(f"loss {self.name!r} decodes the prediction: pass the frozen VAE")

    @property
    def uses_pixels(self) -> bool:
        return "pixel" in self.name.split("+")

    def __call__(
        self,
        predicted_latents: torch.Tensor,
        mask_latents: torch.Tensor,
        gt_mask: torch.Tensor | None = None,
        valid_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar fp32 loss. gt_mask: the binary ground truth of each channel the pixel term compares, [B, C, H, W] at
        the training resolution (dataset.transforms.target_channels)."""
        loss = torch.zeros((), device=predicted_latents.device)
        if "latent_mse" in self.name.split("+"):
            loss = loss + latent_mse(predicted_latents, mask_latents, valid_mask)
        if self.uses_pixels:
            if gt_mask is None:
                raise ValueError(f"loss {self.name!r} needs the ground-truth mask channels of the batch")
            decoded = decode_mask_unclamped(self.vae, predicted_latents, self.mask_classes)  # [B,C,H,W]
            loss = loss + self.pixel_loss_weight * bce_dice(decoded, gt_mask, valid_mask)
        return loss
