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
