"""A short README.md next to the trained transformer: what it was trained from, on what, for how long, how well."""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.atomic import atomic_write_text


def write_model_card(args: argparse.Namespace, output_dir: Path, steps: int, metrics: dict) -> None:
    metric_lines = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items()) or "| (none) | |"
    card = f"""---
library_name: diffusers
base_model: {args.pretrained_model_name_or_path}
tags: [transparent-object-segmentation, trans10k, sd3]
---
# SD3.5 transformer fine-tuned for transparent-object segmentation

- Base model: `{args.pretrained_model_name_or_path}` (revision {args.revision}); transformer fine-tuned end to end,
  VAE frozen, one deterministic step at timestep {args.timestep} with empty-prompt conditioning (arXiv 2409.11355).
- Data: Trans10k train split at `{args.dataset_path}`, {args.resolution} px.
- Training: {steps} optimizer steps, learning rate {args.learning_rate} ({args.lr_scheduler}), per-device batch
  {args.train_batch_size} x accumulation {args.gradient_accumulation_steps}, loss `{args.loss}`.
- Full settings: `config.yaml` and `run_info.json` beside this card; the weights are in `transformer/`.

## Final validation ({args.num_validation_images or "all"} validation images, model resolution)

| metric | value |
|---|---|
{metric_lines}

Evaluate on the test split with `accelerate launch val_inference.py --transformer_path {output_dir}`.
"""
    atomic_write_text(output_dir / "README.md", card)


# Hub metadata of an exported pipeline: the weights derive from SD3.5, so they carry its licence.
SD35_LICENSE = {"license": "other", "license_name": "stabilityai-ai-community", "license_link": "LICENSE.md"}


def pipeline_model_card(args: argparse.Namespace, source: str, evaluations: list[tuple[str, str]]) -> str:
    """README.md of an exported TransparencySegmentationPipeline folder: Hub metadata, how to load it, what it was
    trained on, and one metrics table per evaluation of the exported model (``(title, markdown table)`` pairs)."""
    base = args.pretrained_model_name_or_path
    front = "\n".join(f"{key}: {value}" for key, value in SD35_LICENSE.items())
    tables = "\n\n".join(f"### {title}\n\n{table}" for title, table in evaluations) or (
        "No evaluation of this model was found beside it; run `val_inference.py --transformer_path ...`."
    )
    return f"""---
library_name: diffusers
pipeline_tag: image-segmentation
{front}
base_model: {base}
datasets: [trans10k]
tags: [transparent-object-segmentation, trans10k, sd3, diffusers-pipeline]
---
# Transparent-object segmentation with a fine-tuned SD3.5 transformer

A `TransparencySegmentationPipeline` (this repo's `models/pipeline.py`): the frozen SD3.5 VAE encodes the image, the
fine-tuned SD3 transformer maps it to mask latents in one deterministic step (timestep {args.timestep}, empty-prompt
conditioning stored in `conditioning/`), the VAE decodes a raw mask in [0, 1], thresholded at {args.threshold}.

```python
from models.pipeline import TransparencySegmentationPipeline
pipe = TransparencySegmentationPipeline.from_pretrained("THIS_FOLDER_OR_REPO")
out = pipe(image)  # out.raw[0], out.mask[0], out.overlays()[0]
```

- Weights: `{source}`; base model `{base}` (revision {args.revision}), training mode `{args.train_mode}`.
- Trained on Trans10k at {args.resolution} px (whole image resized to the square), loss `{args.loss}`, learning
  rate {args.learning_rate} ({args.lr_scheduler}), per-device batch {args.train_batch_size} x accumulation
  {args.gradient_accumulation_steps}.
- Licence: the weights derive from SD3.5 and are under the Stability AI Community License; Trans10k under its own.

## Evaluations

{tables}
"""
