"""Training losses, chosen by the `loss` config key. Each takes predicted and target mask latents."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def latent_mse(predicted_latents: torch.Tensor, mask_latents: torch.Tensor) -> torch.Tensor:
    """MSE in latent space against the VAE's mask latents (the E2E fine-tuning reference), computed in fp32."""
    return F.mse_loss(predicted_latents.float(), mask_latents.float())


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"latent_mse": latent_mse}
