"""A trained model as one self-contained diffusers pipeline folder: image(s) in, transparency masks out.

    pipe = TransparencySegmentationPipeline.from_pretrained("DIR_OR_HUB_ID", dtype=torch.bfloat16).to("cuda")
    out = pipe(Image.open("photo.jpg"))   # out.raw[0]: float [H, W] in [0, 1]; out.mask[0]: bool [H, W]
    out.overlays()[0].save("overlay.png")

The folder holds ``model_index.json`` (the settings the weights depend on), ``vae/`` and ``transformer/`` (diffusers
``save_pretrained`` folders) and ``conditioning/empty_prompt.safetensors`` (the constant empty-prompt embedding the
transformer was trained with), so no text encoder, conditioning cache or training run is needed to load it.

The latent maths is models.segmenter's (encode_latents -> MaskPredictor -> decode_raw_mask), called, not copied; the
preprocessing is evaluation's (dataset.trans10k.model_pixels, dataset.transforms.resize_raw), so a pipeline gives the
masks predict.py and val_inference.py give for the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SD3Transformer2DModel
from diffusers.utils import BaseOutput
from PIL import Image
from safetensors.torch import load_file, save_file

from dataset.trans10k import model_pixels
from dataset.transforms import (
    MASK_CLASSES,
    content_size_of,
    planes_to_classes,
    resize_raw,
    to_upright_rgb,
    upright_8bit,
)
from models.segmenter import TTA_MODES, MaskPredictor, check_resolution
from utils.atomic import atomic_path

CONDITIONING_FILE = "conditioning/empty_prompt.safetensors"
COMPONENTS = ("vae", "transformer")
PROCESSING_CHOICES = ("square", "keep_aspect")
TTA_CHOICES = TTA_MODES  # the flip ensembling is MaskPredictor's
MASK_CLASSES_CHOICES = MASK_CLASSES  # the mask encodings of dataset.transforms
OUTPUT_TYPES = ("np", "pt", "pil")
OVERLAY_RED = np.array([255, 0, 0], dtype=np.float32)

PipelineImage = Image.Image | np.ndarray | torch.Tensor


class PipelineFolderError(ValueError):
    """A pipeline folder that is incomplete or whose settings do not fit its weights."""


def overlay_mask(image: np.ndarray, binary: np.ndarray) -> Image.Image:
    """The uint8 [H, W, 3] image with the transparent regions (``binary`` [H, W]) tinted half red."""
    tinted = image.astype(np.float32)
    tinted[binary] = 0.5 * tinted[binary] + 0.5 * OVERLAY_RED
    return Image.fromarray(tinted.round().astype(np.uint8))


@dataclass
class TransparencySegmentationOutput(BaseOutput):
    """One entry per input image, in input order.

    raw: float32 prediction in [0, 1], [H, W] (np / pt; at the input's size when match_input_resolution), or mode-L
        PIL images of round(255 * raw) ("pil").
    mask: bool [H, W] = raw >= threshold (np / pt), or mode-L 0/255 PIL images ("pil").
    classes: None for mask_classes "binary"; for "things_stuff", uint8 class maps [H, W] (0 background, 1 things,
        2 stuff; mode-L PIL images of those values for "pil"), background exactly where mask is False.
    image: the upright uint8 [H, W, 3] RGB images the model saw, kept for ``overlays``.
    """

    raw: list
    mask: list
    classes: list | None
    image: list

    def overlays(self) -> list[Image.Image]:
        """Each image with its transparent regions tinted red, at the mask's size."""
        result = []
        for image, mask in zip(self.image, self.mask, strict=True):
            binary = np.asarray(mask) > 0 if isinstance(mask, Image.Image) else np.asarray(torch.as_tensor(mask).cpu())
            if binary.shape != image.shape[:2]:
                image = np.asarray(Image.fromarray(image).resize(binary.shape[::-1], Image.Resampling.BICUBIC))
            result.append(overlay_mask(image, binary))
        return result


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} {value!r}: expected one of {', '.join(choices)}")


def _check_threshold(threshold: float) -> None:
    if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold!r}: expected a number in [0, 1]")


def _to_rgb_array(image: PipelineImage, index: int) -> np.ndarray:
    """One input as the upright uint8 [H, W, 3] array predict.py's loader gives for a file.

    PIL: EXIF orientation applied, 16-bit/float grey scaled (dataset.transforms). numpy: uint8 [H, W] or [H, W, 3],
    or float in [0, 1]. Tensor: [3, H, W] (channels first), uint8 or float in [0, 1].
    """
    where = f"images[{index}]"
    if isinstance(image, Image.Image):
        try:
            return np.asarray(to_upright_rgb(upright_8bit(image)))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"{where}: a tensor must be [3, H, W] (or [1, H, W]), got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{where}: expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape:
        raise ValueError(f"{where}: an array must be [H, W] or [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        if image.dtype.kind != "f":
            raise ValueError(f"{where}: an array must be uint8, or float in [0, 1]; got {image.dtype}")
        if not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
            raise ValueError(f"{where}: float values must lie in [0, 1], got [{image.min():g}, {image.max():g}]")
        image = np.round(image.astype(np.float64) * 255.0).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else np.ascontiguousarray(image)


class TransparencySegmentationPipeline(DiffusionPipeline):
    """Transparent-object segmentation with a fine-tuned SD3.5 transformer in one deterministic step.

    Components: ``vae`` (the frozen SD3.5 VAE) and ``transformer`` (the fine-tuned SD3 transformer). Config: what the
    weights depend on (``timestep``, ``max_sequence_length``, ``resolution``, ``processing``, ``mask_classes``) and
    the default ``threshold``. The empty-prompt conditioning is set with ``set_conditioning`` and travels in the
    saved folder.
    """

    model_cpu_offload_seq = "transformer->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        transformer: SD3Transformer2DModel,
        timestep: float = 1000.0,
        max_sequence_length: int = 256,
        resolution: int = 1024,
        processing: str = "square",
        mask_classes: str = "binary",
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        _check_choice("processing", processing, PROCESSING_CHOICES)
        _check_choice("mask_classes", mask_classes, MASK_CLASSES_CHOICES)
        _check_threshold(threshold)
        self.register_modules(vae=vae, transformer=transformer)
        self.register_to_config(
            timestep=float(timestep),
            max_sequence_length=int(max_sequence_length),
            resolution=int(resolution),
            processing=processing,
            mask_classes=mask_classes,
            threshold=float(threshold),
        )
        try:
            check_resolution(resolution, vae, transformer.config)
        except ValueError as error:
            raise PipelineFolderError(f"config resolution: {error}") from error
        self.prompt_embeds: torch.Tensor | None = None  # [1, L, D]
        self.pooled_prompt_embeds: torch.Tensor | None = None  # [1, P]

    # ---- the conditioning, saving and loading

    def set_conditioning(self, prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor) -> None:
        """The constant empty-prompt embedding ([1, L, D], [1, P]) the transformer was trained with; kept in fp32."""
        config = self.transformer.config
        if (
            prompt_embeds.dim() != 3
            or prompt_embeds.shape[0] != 1
            or prompt_embeds.shape[2] != config.joint_attention_dim
        ):
            raise PipelineFolderError(
                f"prompt_embeds shape {tuple(prompt_embeds.shape)}: expected [1, L, {config.joint_attention_dim}] "
                "(the transformer's joint_attention_dim)"
            )
        if prompt_embeds.shape[1] <= self.config.max_sequence_length:
            raise PipelineFolderError(
                f"prompt_embeds has {prompt_embeds.shape[1]} tokens: expected the CLIP tokens + max_sequence_length "
                f"{self.config.max_sequence_length} T5 tokens"
            )
        if pooled_prompt_embeds.shape != (1, config.pooled_projection_dim):
            raise PipelineFolderError(
                f"pooled_prompt_embeds shape {tuple(pooled_prompt_embeds.shape)}: expected "
                f"[1, {config.pooled_projection_dim}] (the transformer's pooled_projection_dim)"
            )
        self.prompt_embeds = prompt_embeds.detach().float().cpu()
        self.pooled_prompt_embeds = pooled_prompt_embeds.detach().float().cpu()

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' folder (model_index.json, vae/, transformer/) plus the conditioning as safetensors."""
        if self.prompt_embeds is None:
            raise ValueError("no conditioning set: call set_conditioning(prompt_embeds, pooled_prompt_embeds) first")
        super().save_pretrained(save_directory, **kwargs)
        conditioning = {"prompt_embeds": self.prompt_embeds, "pooled_prompt_embeds": self.pooled_prompt_embeds}
        with atomic_path(Path(save_directory) / CONDITIONING_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in conditioning.items()}, str(tmp))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> TransparencySegmentationPipeline:
        """Load a folder written by save_pretrained (or export.py), or the same from the Hub; nothing else needed."""
        source = Path(pretrained_model_name_or_path)
        if source.is_dir():
            check_pipeline_folder(source)
            conditioning_file = source / CONDITIONING_FILE
        else:
            from huggingface_hub import hf_hub_download

            hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
            conditioning_file = Path(hf_hub_download(str(pretrained_model_name_or_path), CONDITIONING_FILE, **hub))
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        tensors = load_file(str(conditioning_file))
        pipe.set_conditioning(tensors["prompt_embeds"], tensors["pooled_prompt_embeds"])
        return pipe

    @classmethod
    def from_predictor(
        cls,
        predictor: MaskPredictor,
        max_sequence_length: int,
        resolution: int,
        processing: str = "square",
        threshold: float = 0.5,
    ) -> TransparencySegmentationPipeline:
        """The pipeline of a MaskPredictor built from a training run (models.segmenter.load_predictor)."""
        pipe = cls(
            vae=predictor.vae,
            transformer=predictor.transformer,
            timestep=predictor.timestep,
            max_sequence_length=max_sequence_length,
            resolution=resolution,
            processing=processing,
            mask_classes=predictor.mask_classes,
            threshold=threshold,
        )
        pipe.set_conditioning(predictor.prompt_embeds, predictor.pooled_prompt_embeds)
        return pipe

    def predictor(self, tta: str = "none") -> MaskPredictor:
        """models.segmenter's predictor on this pipeline's weights: the one implementation of the latent maths (and
        of the flip ensembling)."""
        if self.prompt_embeds is None:
            raise ValueError("no conditioning set: load with from_pretrained or call set_conditioning first")
        embeds, pooled = self.prompt_embeds, self.pooled_prompt_embeds
        timestep, mask_classes = self.config.timestep, self.config.mask_classes
        return MaskPredictor(self.vae, self.transformer, embeds, pooled, timestep, tta, mask_classes)

    # ---- inference

    def check_inputs(
        self,
        images: PipelineImage | list[PipelineImage],
        processing_resolution: int,
        match_input_resolution: bool,
        batch_size: int,
        tta: str,
        threshold: float,
        output_type: str,
        processing: str,
    ) -> list[np.ndarray]:
        """Every argument checked before any compute; returns the inputs as upright uint8 [H, W, 3] arrays."""
        if not isinstance(processing_resolution, int) or processing_resolution < 1:
            raise ValueError(f"processing_resolution {processing_resolution!r}: expected a positive int or None")
        check_resolution(processing_resolution, self.vae, self.transformer.config)
        if not isinstance(match_input_resolution, bool):
            raise ValueError(f"match_input_resolution {match_input_resolution!r}: expected True or False")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size {batch_size!r}: expected a positive int")
        _check_choice("tta", tta, TTA_CHOICES)
        _check_choice("processing", processing, PROCESSING_CHOICES)
        _check_threshold(threshold)
        _check_choice("output_type", output_type, OUTPUT_TYPES)
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("images: got an empty list; pass one image or a list of images")
        return [_to_rgb_array(image, index) for index, image in enumerate(images)]

    @torch.no_grad()
    def __call__(
        self,
        images: PipelineImage | list[PipelineImage],
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        batch_size: int = 1,
        tta: str = "none",
        threshold: float | None = None,
        output_type: str = "np",
        processing: str | None = None,
    ) -> TransparencySegmentationOutput:
        """Segment one image or a list (PIL, numpy uint8 / float [0, 1], tensor [3, H, W] or [N, 3, H, W]).

        processing_resolution: the square side the model sees (None = config.resolution, what it was trained at).
        match_input_resolution: resize raw back to each input's size (bilinear) before thresholding; else keep it at
        processing_resolution. threshold: None = config.threshold. processing: "square" resizes each image whole to the
        square, "keep_aspect" fits its longest side and pads (the padding is cut off before resizing back); None =
        config.processing, what the weights were trained with. tta "hflip" averages with the mirrored image.
        """
        # 1. Check every input before any compute
        resolution = self.config.resolution if processing_resolution is None else processing_resolution
        threshold = self.config.threshold if threshold is None else threshold
        processing = self.config.processing if processing is None else processing
        arrays = self.check_inputs(
            images, resolution, match_input_resolution, batch_size, tta, threshold, output_type, processing
        )
        predictor = self.predictor(tta)
        device = self._execution_device

        # 2. Predict in batches: fit into the canvas (as evaluation), one transformer step, decode, cut the padding
        planes = []  # [P, H, W] each: the raw mask, and for things_stuff the stuff share
        for start in self.progress_bar(range(0, len(arrays), batch_size)):
            images_rgb = [Image.fromarray(a) for a in arrays[start : start + batch_size]]
            boxes = [content_size_of(image.size, resolution, processing) for image in images_rgb]  # (h, w) each
            pixels = torch.stack([model_pixels(i, resolution, b) for i, b in zip(images_rgb, boxes, strict=True)])
            contents = predictor.predict_content_planes(pixels.to(device), boxes)  # [P, h, w] each, padding removed
            for one, image in zip(contents, images_rgb, strict=True):
                size = image.size[::-1]
                planes.append(torch.stack([resize_raw(p, size) for p in one]) if match_input_resolution else one)

        # 3. Threshold, read the classes, convert
        raws = [one[0] for one in planes]
        masks = [raw >= threshold for raw in raws]
        classes = None
        if self.config.mask_classes == "things_stuff":
            classes = [planes_to_classes(one[0], one[1], threshold) for one in planes]
        if output_type == "np":
            raws, masks = [r.cpu().numpy() for r in raws], [m.cpu().numpy() for m in masks]
            classes = None if classes is None else [c.cpu().numpy() for c in classes]
        elif output_type == "pil":
            raws = [Image.fromarray(torch.round(r * 255).to(torch.uint8).cpu().numpy()) for r in raws]
            masks = [Image.fromarray(m.cpu().numpy().astype(np.uint8) * 255) for m in masks]
            classes = None if classes is None else [Image.fromarray(c.cpu().numpy()) for c in classes]
        self.maybe_free_model_hooks()
        return TransparencySegmentationOutput(raw=raws, mask=masks, classes=classes, image=arrays)


def check_pipeline_folder(folder: Path) -> None:
    """A clear error for a folder that from_pretrained cannot load, naming what is missing."""
    needed = ["model_index.json", *(f"{name}/config.json" for name in COMPONENTS), CONDITIONING_FILE]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise PipelineFolderError(
            f"{folder} is not a complete TransparencySegmentationPipeline folder: missing {', '.join(missing)}; "
            "write it with export.py (or pipeline.save_pretrained)"
        )
