"""The one place that turns images into masks: VAE encode -> one transformer step -> VAE decode -> raw mask in [0,1].

Trainer, validation, prediction and the benchmarks all call this module; nothing else repeats the latent maths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL

from dataset.transforms import ContentSize, crop_to_content, loss_channels, mask_planes, mirror_content

TTA_MODES = ("none", "hflip")


def encode_latents(vae: AutoencoderKL, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> normalised latents `(mode - shift) * scale`. The mode, not a sample: deterministic."""
    with torch.no_grad():
        mode = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist.mode()
    return (mode - vae.config.shift_factor) * vae.config.scaling_factor


def vae_scale_latents(vae: AutoencoderKL, mask_latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents back to the VAE's own scale (the inverse of encode_latents' normalisation)."""
    return mask_latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor


def decode_planes(vae: AutoencoderKL, mask_latents: torch.Tensor, mask_classes: str = "binary") -> torch.Tensor:
    """Normalised mask latents -> prediction planes [B, P, H, W] in [0, 1] (fp32): decode, map [-1,1] to [0,1], read
    the planes of the mask encoding (dataset.transforms.mask_planes: raw, and for things_stuff the stuff share)."""
    with torch.no_grad():
        decoded = vae.decode(vae_scale_latents(vae, mask_latents)).sample
    return mask_planes((decoded.float() / 2 + 0.5).clamp(0, 1), mask_classes)


def decode_raw_mask(vae: AutoencoderKL, mask_latents: torch.Tensor, mask_classes: str = "binary") -> torch.Tensor:
    """Normalised mask latents -> raw mask [B, H, W] in [0, 1], the probability of transparent (decode_planes' first
    plane: the grey level m for binary, min(1, 2m) for things_stuff)."""
    return decode_planes(vae, mask_latents, mask_classes)[:, 0]


def decode_mask_unclamped(
    vae: AutoencoderKL, mask_latents: torch.Tensor, mask_classes: str = "binary"
) -> torch.Tensor:
    """The decoded mask inside autograd and without the clamp: [B, C, H, W], fp32, may leave [0, 1]; C = 1 (the
    raw mask) for binary, 2 (transparent, stuff) for things_stuff (dataset.transforms.loss_channels).

    The VAE's weights stay frozen (requires_grad False) but the decode is part of the graph, so a pixel-space loss
    reaches the transformer that produced `mask_latents` (E2E-FT's task loss through the frozen decoder). The clamp
    is left to the loss (models/losses.inward_clamp): a hard clamp has zero gradient wherever the decoder overshoots,
    which is exactly where a wrong pixel (raw > 1 on background) most needs one. Decoder gradient checkpointing, when
    enabled on the VAE (`vae.enable_gradient_checkpointing()`), applies here: the decoder runs with gradients on."""
    decoded = vae.decode(vae_scale_latents(vae, mask_latents)).sample  # [B, 3, H, W] in about [-1, 1]
    return loss_channels(decoded.float() / 2 + 0.5, mask_classes)


def check_resolution(resolution: int, vae: AutoencoderKL, transformer_config) -> None:
    """Fail at start-up, with the numbers, when the transformer cannot take images of this size."""
    pixels_per_patch = 2 ** (len(vae.config.block_out_channels) - 1) * transformer_config.patch_size
    patches = resolution // pixels_per_patch
    if resolution % pixels_per_patch or patches > transformer_config.pos_embed_max_size:
        raise ValueError(
            f"resolution {resolution} px: must be a multiple of {pixels_per_patch} (VAE factor x patch size) and at "
            f"most {transformer_config.pos_embed_max_size * pixels_per_patch} px (pos_embed_max_size "
            f"{transformer_config.pos_embed_max_size} patches); change --resolution"
        )


@dataclass
class MaskPredictor:
    """Frozen VAE + transformer + the constant empty-prompt conditioning and fixed timestep.

    tta "hflip" averages each raw prediction with that of the mirrored image, mirrored back (evaluation and
    prediction; the trainer's validation uses "none", the default of a predictor built without it). mask_classes
    says how the decoded mask image is read (dataset.transforms, "The mask image the VAE encodes")."""

    vae: AutoencoderKL
    transformer: torch.nn.Module  # SD3Transformer2DModel, possibly wrapped by DDP/DeepSpeed
    prompt_embeds: torch.Tensor  # [1, L, D]
    pooled_prompt_embeds: torch.Tensor  # [1, P]
    timestep: float
    tta: str = "none"
    mask_classes: str = "binary"

    def __post_init__(self) -> None:
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")

    def predict_latents(self, image_latents: torch.Tensor) -> torch.Tensor:
        """One deterministic transformer step: image latents -> predicted mask latents (gradients flow)."""
        batch_size, device = image_latents.shape[0], image_latents.device
        # Inputs follow the weights: fp32 master weights under autocast, bf16 weights under DeepSpeed bf16.
        dtype = next(self.transformer.parameters()).dtype
        return self.transformer(
            hidden_states=image_latents.to(dtype),
            timestep=torch.full((batch_size,), self.timestep, device=device, dtype=dtype),
            encoder_hidden_states=self.prompt_embeds.to(device, dtype).expand(batch_size, -1, -1),
            pooled_projections=self.pooled_prompt_embeds.to(device, dtype).expand(batch_size, -1),
            return_dict=False,
        )[0]

    @torch.no_grad()
    def planes_once(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One pass, no test-time augmentation: images in [-1, 1] [B, 3, H, W] -> planes [B, P, H, W] in [0, 1]."""
        return decode_planes(self.vae, self.predict_latents(encode_latents(self.vae, pixel_values)), self.mask_classes)

    @torch.no_grad()
    def predict_planes(
        self, pixel_values: torch.Tensor, content_sizes: Sequence[ContentSize] | None = None
    ) -> torch.Tensor:
        """Images in [-1, 1] [B, 3, S, S] -> planes [B, P, S, S] in [0, 1] (fp32), with the predictor's tta: plane 0
        is the raw mask; things_stuff adds the stuff share (dataset.transforms.mask_planes).

        ``content_sizes``: each image's (h, w) box in the canvas (keep_aspect; None = the whole canvas). hflip mirrors
        only that box and rebuilds the padding (dataset.transforms.mirror_content), so the mirror is laid out as
        every training image, padding right and below. The image and its mirror go through the model as one batch of
        2B: one encode, one transformer call and one decode instead of two of each (fuller GPU kernels; the cost is
        twice the activation memory of eval_batch_size images). Outside the content box the values mean nothing (the
        padding): crop them (predict_content) before anything resizes or scores the prediction."""
        if self.tta == "none":
            return self.planes_once(pixel_values)
        sizes = content_sizes if content_sizes is not None else [tuple(pixel_values.shape[-2:])] * len(pixel_values)
        both = self.planes_once(torch.cat([pixel_values, mirror_content(pixel_values, sizes)]))  # [2B, P, S, S]
        plain, mirrored = both.chunk(2)
        return (plain + mirror_content(mirrored, sizes)) / 2

    def predict_raw(
        self, pixel_values: torch.Tensor, content_sizes: Sequence[ContentSize] | None = None
    ) -> torch.Tensor:
        """predict_planes' raw mask: [B, S, S] in [0, 1]."""
        return self.predict_planes(pixel_values, content_sizes)[:, 0]

    def predict_content(self, pixel_values: torch.Tensor, content_sizes: Sequence[ContentSize]) -> list[torch.Tensor]:
        """``predict_raw`` cut to each image's content box: [h, w] per image, the padding gone before any resize, so
        native-size scores, raw/ PNGs and predict.py only ever see the image's own pixels."""
        return crop_to_content(self.predict_raw(pixel_values, content_sizes), content_sizes)

    def predict_content_planes(
        self, pixel_values: torch.Tensor, content_sizes: Sequence[ContentSize]
    ) -> list[torch.Tensor]:
        """``predict_planes`` cut to each image's content box: [P, h, w] per image."""
        return crop_to_content(self.predict_planes(pixel_values, content_sizes), content_sizes)


def load_predictor(args, transformer_path: str, device: torch.device, dtype: torch.dtype) -> MaskPredictor:
    """The trained predictor for evaluation and prediction: base VAE + conditioning, fine-tuned transformer."""
    from models.conditioning import load_empty_prompt_embeds
    from models.loading import check_matches_training, load_frozen_vae, load_trained_transformer

    check_matches_training(transformer_path, args)
    model, revision, variant = args.pretrained_model_name_or_path, args.revision, args.variant
    prompt_embeds, pooled = load_empty_prompt_embeds(
        model, revision, variant, args.cache_dir, device, args.max_sequence_length
    )
    vae = load_frozen_vae(model, revision, variant, dtype).to(device)
    transformer = load_trained_transformer(transformer_path, dtype, args).to(device)
    check_resolution(args.resolution, vae, transformer.config)
    embeds, pooled = prompt_embeds.to(device, dtype), pooled.to(device, dtype)
    return MaskPredictor(vae, transformer, embeds, pooled, args.timestep, args.tta, args.mask_classes)
