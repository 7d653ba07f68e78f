"""Write a training run's model as one self-contained pipeline folder with a model card, and optionally upload it.

    python export.py --transformer_path RUN_DIR --output DIR [--push_to_hub REPO_ID [--private] [--dry_run]]

RUN_DIR is a trainer output_dir (its final model), one of its checkpoint-<step>/ folders (ZeRO-3 checkpoints hold
gathered weights) or its transformer/ folder; LoRA runs are merged into the base transformer. The run's config.yaml
(beside the weights or one or two levels up) gives the base model, conditioning and settings. DIR receives
model_index.json, vae/, transformer/, conditioning/ (see models/pipeline.py) and README.md: Hub metadata and the
metrics tables of every evaluation of this exact model found beside it (val_inference.py's eval-*/metrics.json).
DIR is written under a temporary name and moved into place; an existing DIR is replaced only if it is an export.
--push_to_hub uploads DIR with huggingface_hub; --dry_run lists what would be uploaded and stops before the network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from evaluation.report import format_summary_table
from models.loading import model_eval_location, resolve_transformer_dir
from models.pipeline import TransparencySegmentationPipeline
from models.segmenter import load_predictor
from utils.atomic import atomic_write_text, replace_dir, temporary_sibling
from utils.config import ConfigError, parse_config
from utils.model_card import pipeline_model_card


class ExportError(ValueError):
    """A wrong argument or run folder: one line, exit status 2."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transformer_path", required=True, type=Path, help="run dir, checkpoint-<step>/ or weights")
    parser.add_argument("--output", required=True, type=Path, help="pipeline folder to write")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--dry_run", action="store_true", help="with --push_to_hub: list the upload, send nothing")
    args = parser.parse_args(argv)
    if (args.private or args.dry_run) and args.push_to_hub is None:
        parser.error("--private and --dry_run go with --push_to_hub REPO_ID")
    return args


def run_config(transformer_path: Path) -> Path:
    """The training run's config.yaml: beside the weights or one or two levels up (as check_matches_training)."""
    weights = resolve_transformer_dir(transformer_path)
    for folder in (weights, weights.parent, weights.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise ExportError(
        f"--transformer_path {transformer_path}: no config.yaml of a training run in {weights} or the two folders "
        "above it; export needs the run's settings (base model, timestep, conditioning length)"
    )


def evaluations(transformer_path: Path) -> list[tuple[str, str]]:
    """(folder name, metrics table) of every val_inference.py evaluation of exactly this model, oldest name first."""
    folder, prefix = model_eval_location(transformer_path)
    found = []
    for metrics_file in sorted(folder.glob(f"eval-{prefix}*/metrics.json")):
        name = metrics_file.parent.name
        if (not prefix and name.startswith("eval-checkpoint-")) or "-oracle_" in name or "-predictions_" in name:
            continue  # another checkpoint's evaluation, or no model at all
        metrics = json.loads(metrics_file.read_text())
        found.append((f"{name} (threshold {metrics['threshold']:g})", format_summary_table(metrics["subsets"])))
    return found


def check_output(output: Path) -> None:
    """Only an earlier export may be replaced: never a run, its weights or any other folder."""
    if output.exists() and not (output / "model_index.json").is_file():
        raise ExportError(f"--output {output} exists and is not an exported pipeline folder; choose a new folder")


def export(transformer_path: Path, output: Path) -> None:
    """Build the pipeline from the run (fp32, on the CPU) and write the folder and its card atomically."""
    try:
        args, _ = parse_config(["--config", str(run_config(transformer_path))])
    except ConfigError as error:
        raise ExportError(f"the run's config.yaml: {error}") from error
    predictor = load_predictor(args, str(transformer_path), torch.device("cpu"), torch.float32)
    pipe = TransparencySegmentationPipeline.from_predictor(
        predictor, args.max_sequence_length, args.resolution, args.processing, args.threshold
    )
    staging = temporary_sibling(output, "export")
    try:
        pipe.save_pretrained(staging)
        card = pipeline_model_card(args, str(resolve_transformer_dir(transformer_path)), evaluations(transformer_path))
        atomic_write_text(staging / "README.md", card)
        replace_dir(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def upload_listing(folder: Path) -> list[str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [f"  {p.relative_to(folder)}  ({p.stat().st_size:,} bytes)" for p in files]


def push(folder: Path, repo_id: str, private: bool, dry_run: bool) -> None:
    visibility = "private" if private else "public"
    print(f"{'would upload' if dry_run else 'uploading'} {folder} to the {visibility} Hub repo {repo_id}:")
    print("\n".join(upload_listing(folder)))
    if dry_run:
        return
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, commit_message="Upload TransparencySegmentationPipeline"
    )
    print(f"uploaded: https://huggingface.co/{repo_id}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_output(args.output)
        export(args.transformer_path, args.output)
    except (ExportError, FileNotFoundError) as error:
        print(f"export.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.output}")
    if args.push_to_hub:
        push(args.output, args.push_to_hub, args.private, args.dry_run)


if __name__ == "__main__":
    main()
