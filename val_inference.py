"""Score a trained transformer (or saved predictions, or the VAE ceiling) on Trans10k easy / hard / mix.

    accelerate launch --config_file accelerate_config.yaml val_inference.py --transformer_path OUTPUT_DIR

Images are sharded over the processes and the per-image results gathered exactly, so 1 and N processes write the
same metrics.json. Writes metrics.json, metrics.md, per_image.csv, raw/<subset>/<stem>.png, panels/ and the run
snapshot (config.yaml, run_info.json). Protocols: native, square, seed and translab (evaluation.scoring,
evaluation.translab); saved predictions of any method are read by evaluation.predictions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from dataset.trans10k import (
    SUBSETS,
    DatasetError,
    Sample,
    Trans10kEval,
    eval_collate,
    load_image,
    load_mask_grey,
    validate_split,
)
from dataset.transforms import crop_to_content, resize_raw
from evaluation.image_writer import BackgroundImageWriter, png_to_raw, raw_to_png_array, render_panel
from evaluation.metrics import (
    DEFAULT_THRESHOLD,
    ImageScore,
    summarize_subsets,
    sweep_histogram,
    threshold_sweep,
    worst_k,
)
from evaluation.predictions import check_predictions, prediction_path, read_class_map, read_prediction
from evaluation.report import (
    format_iou_distribution_table,
    format_summary_table,
    format_translab_table,
    protocol_note,
    write_metrics_json,
    write_metrics_md,
    write_per_image_csv,
)
from evaluation.scoring import TRANSLAB_SIDE, class_map_at, score_batch
from evaluation.translab import (
    TranslabScore,
    binary_classes,
    resize_classes,
    score_translab,
    summarize_translab_subsets,
    translab_gt_classes,
)
from models.loading import inference_dtype, load_frozen_vae, model_eval_location
from models.segmenter import decode_planes, encode_latents, load_predictor
from utils.config import load_config
from utils.run_snapshot import write_run_snapshot


def eval_output_dir(args: argparse.Namespace) -> Path:
    """Default folder name says split, resolution, threshold, protocol and what was scored.

    A model's results go beside that model, so evaluating two checkpoints (or two runs) never overwrites one with
    the other. The VAE oracle and saved predictions involve no trained transformer: they go under output_dir."""
    if args.eval_output_dir:
        return Path(args.eval_output_dir)
    settings = f"{args.split}-{args.resolution}px-thr{args.threshold:g}-{args.eval_protocol}"
    # Non-default processing and tta are named too, so a keep_aspect or hflip evaluation never overwrites the default.
    settings += "-keep_aspect" if args.processing == "keep_aspect" else ""
    settings += f"-tta_{args.tta}" if args.tta != "none" and not (args.oracle or args.predictions_dir) else ""
    settings += "-things_stuff" if args.mask_classes == "things_stuff" else ""
    if args.oracle:
        return Path(args.output_dir) / f"eval-{settings}-oracle_{args.oracle}"
    if args.predictions_dir:
        return Path(args.output_dir) / f"eval-{settings}-predictions_{Path(args.predictions_dir).name}"
    folder, prefix = model_eval_location(args.transformer_path or args.output_dir)
    return folder / f"eval-{prefix}{settings}"


def oracle_summary(args: argparse.Namespace) -> dict | None:
    """The VAE ceiling from an earlier `--oracle vae_roundtrip` run with the same settings (in its default folder
    under output_dir), shown beside the model."""
    if args.oracle or args.predictions_dir:
        return None
    path = eval_output_dir(argparse.Namespace(**{**vars(args), "oracle": "vae_roundtrip", "eval_output_dir": None}))
    metrics_path = path / "metrics.json"
    return json.loads(metrics_path.read_text())["subsets"] if metrics_path.is_file() else None


def set_up(args: argparse.Namespace) -> tuple[Accelerator, Path]:
    """The accelerator and the output folder, with the run snapshot (config.yaml, run_info.json) written there."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    out_dir = eval_output_dir(args)
    if accelerator.is_main_process:
        write_run_snapshot(args, out_dir)
    return accelerator, out_dir


def build_loader(
    args: argparse.Namespace, accelerator: Accelerator, samples: list[Sample]
) -> torch.utils.data.DataLoader:
    loader = torch.utils.data.DataLoader(
        Trans10kEval(samples, args.resolution, args.processing, args.mask_classes),
        batch_size=args.eval_batch_size,
        collate_fn=eval_collate,
        num_workers=args.dataloader_num_workers,
    )
    return accelerator.prepare(loader)  # shards the images; gather_for_metrics drops the padding duplicates


def check_eval_settings(args: argparse.Namespace) -> None:
    """Exit 2 with the reason for settings val_inference.py cannot honour (config.yaml's checks come first)."""
    problems = []
    if args.eval_protocol == "seed" and args.threshold != DEFAULT_THRESHOLD:
        problems.append(
            f"eval_protocol seed thresholds at raw > {DEFAULT_THRESHOLD}, as the seed's code does; got threshold "
            f"{args.threshold} (use another protocol to score at other thresholds)"
        )
    if problems:
        print(f"val_inference.py: error: {'; '.join(problems)}", file=sys.stderr)
        sys.exit(2)


def split_samples(args: argparse.Namespace) -> list[Sample]:
    """validate_split, and when a requested subset folder is missing, which --subsets would work."""
    try:
        return validate_split(args.dataset_path, args.split, args.subsets)
    except DatasetError as error:
        split_dir = Path(args.dataset_path) / args.split
        present = [subset for subset in SUBSETS if (split_dir / subset).is_dir()]
        if present and any(subset not in present for subset in args.subsets):
            hint = f"only {', '.join(present)} exist(s) under {split_dir}: evaluate with --subsets {','.join(present)}"
            raise DatasetError(f"{error}\n{hint}") from error
        raise


def load_prediction(predictions_dir: str, subset: str, stem: str) -> torch.Tensor:
    """A raw prediction in [0, 1] from DIR/<subset>/<stem>.png (or the seed's <stem>_pred.png), by its PNG mode."""
    return read_prediction(prediction_path(predictions_dir, subset, stem))


def load_class_map(predictions_dir: str, subset: str, stem: str) -> torch.Tensor:
    """A uint8 class map 0/1/2 from DIR/<subset>/<stem>.png (mask_classes things_stuff)."""
    return read_class_map(prediction_path(predictions_dir, subset, stem))


def prediction_source(args: argparse.Namespace, accelerator: Accelerator) -> Callable[[dict], list | torch.Tensor]:
    """batch -> class maps for things_stuff predictions; otherwise build_raw_source's raw masks or planes."""
    if args.predictions_dir and args.mask_classes == "things_stuff":
        return lambda batch: [
            load_class_map(args.predictions_dir, *key) for key in zip(batch["subset"], batch["stem"], strict=True)
        ]
    return build_raw_source(args, accelerator)


def build_raw_source(args: argparse.Namespace, accelerator: Accelerator) -> Callable[[dict], list | torch.Tensor]:
    """batch -> raw masks in [0, 1] [h, w] from saved PNGs; or prediction planes [P, h, w] (models.segmenter:
    the raw mask, and for things_stuff the stuff share) from the VAE round trip or the trained model.

    Model and oracle planes are cut to each image's content box (keep_aspect's padding removed) before scoring resizes
    them: to the native size, or under the square protocol to resolution x resolution (so both processings are
    scored against the same square ground truth). Saved PNGs are at native size already."""
    if args.predictions_dir:
        return lambda batch: [
            load_prediction(args.predictions_dir, *key) for key in zip(batch["subset"], batch["stem"], strict=True)
        ]
    device, dtype = accelerator.device, inference_dtype(args.mixed_precision, accelerator.device)
    if args.oracle == "vae_roundtrip":  # the ceiling the VAE alone imposes: GT mask -> encode -> decode
        vae = load_frozen_vae(args.pretrained_model_name_or_path, args.revision, args.variant, dtype).to(device)
        return lambda batch: crop_to_content(
            decode_planes(vae, encode_latents(vae, batch["mask_values"].to(device)), args.mask_classes),
            batch["content_size"],
        )
    with accelerator.local_main_process_first():  # one process per machine computes the conditioning cache
        predictor = load_predictor(args, args.transformer_path or args.output_dir, device, dtype)
    return lambda batch: predictor.predict_content_planes(batch["pixel_values"].to(device), batch["content_size"])


def save_raws(
    writer: BackgroundImageWriter,
    out_dir: Path,
    scores: list[ImageScore],
    raws: Sequence[torch.Tensor],
    gt_classes: Sequence[torch.Tensor],
) -> None:
    """raw/<subset>/<stem>.png at each ground truth's native size (the square protocol scores at resolution)."""
    for image_score, raw, gt in zip(scores, raws, gt_classes, strict=True):
        native = resize_raw(raw, tuple(gt.shape)) if raw.shape != gt.shape else raw
        writer.submit(out_dir / "raw" / image_score.subset / f"{image_score.stem}.png", raw_to_png_array(native))


def save_class_maps(
    writer: BackgroundImageWriter, out_dir: Path, scores: list[ImageScore], class_maps: Sequence[torch.Tensor]
) -> None:
    """classes/<subset>/<stem>.png: mode L, 0 background / 1 things / 2 stuff, at each ground truth's native size."""
    for image_score, classes in zip(scores, class_maps, strict=True):
        path = out_dir / "classes" / image_score.subset / f"{image_score.stem}.png"
        writer.submit(path, classes.cpu().numpy().astype(np.uint8))


def split_outputs(
    args: argparse.Namespace, outputs: list | torch.Tensor, batch: dict
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """(raw masks to score, class maps or None) from what the source gave.

    Saved class maps score their binary metrics as class > 0. A things_stuff model's binary metrics use its raw mask
    (plane 0); its class maps are read at each ground truth's native size from the planes (class_map_at), so a pixel
    is transparent in the class map exactly when it is in the native-protocol binary prediction."""
    if args.predictions_dir:
        if args.mask_classes == "things_stuff":
            return [(c > 0).float() for c in outputs], list(outputs)
        return list(outputs), None
    raws = [planes[0] for planes in outputs]
    if args.mask_classes == "binary":
        return raws, None
    sizes = [tuple(gt.shape) for gt in batch["gt_classes"]]
    return raws, [class_map_at(planes, size, args.threshold) for planes, size in zip(outputs, sizes, strict=True)]


def sweep_histograms(raws: Sequence[torch.Tensor], gts: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """[B, 2, T + 1] per-image threshold-sweep histograms on ``device``, ready to gather."""
    return torch.stack([sweep_histogram(raw, gt) for raw, gt in zip(raws, gts, strict=True)]).to(device)


def with_translab_gt(batch: dict, by_key: dict[tuple[str, str], Sample]) -> dict:
    """The batch with gt_classes read by TransLab's rule (RGB mean 0/85/255 -> 0/1/2, anything else an error)."""
    keys = zip(batch["subset"], batch["stem"], strict=True)
    return {**batch, "gt_classes": [torch.from_numpy(translab_gt_classes(by_key[key].mask_path)) for key in keys]}


def translab_scores(
    batch: dict,
    class_maps: list[torch.Tensor] | None,
    scored: list[torch.Tensor],
    gts: list[torch.Tensor],
    threshold: float,
) -> list[TranslabScore]:
    """Per-image TransLab confusion matrices at 512 x 512: 3-class from class maps, else the two-class version from
    the binary prediction exactly as scored (raw resized to 512, thresholded) against GT classes > 0."""
    keys = list(zip(batch["stem"], batch["subset"], strict=True))
    if class_maps is not None:
        pairs = [
            (resize_classes(gt), resize_classes(m)) for gt, m in zip(batch["gt_classes"], class_maps, strict=True)
        ]
        return [score_translab(gt, m, "things_stuff", *key) for (gt, m), key in zip(pairs, keys, strict=True)]
    pairs = [
        (gt.cpu().numpy().astype(np.uint8), binary_classes(raw, threshold))
        for gt, raw in zip(gts, scored, strict=True)
    ]
    return [score_translab(gt, predicted, "binary", *key) for (gt, predicted), key in zip(pairs, keys, strict=True)]


@dataclass
class SplitScores:
    scores: list[ImageScore]  # every image, gathered from every process
    histogram: torch.Tensor | None  # the pooled threshold-sweep histogram, with threshold_sweep
    translab: list[TranslabScore]  # per-image confusion matrices, under eval_protocol translab


def score_split(
    args: argparse.Namespace,
    accelerator: Accelerator,
    loader: torch.utils.data.DataLoader,
    raw_source: Callable[[dict], list | torch.Tensor],
    out_dir: Path,
    samples: list[Sample],
) -> SplitScores:
    """The scoring loop: every process's scores gathered, with threshold_sweep the pooled sweep histogram, and under
    the translab protocol the TransLab confusion matrices.

    raw/ PNGs are written on the way; on return every rank's are on disk. Model outputs are scored as the 8-bit values
    raw/ stores; saved predictions at the precision of their files. Under mask_classes things_stuff, saved class maps
    give the binary metrics through class > 0; a model's class maps are written to classes/ beside raw/."""
    by_key = {(s.subset, s.stem): s for s in samples}
    scores: list[ImageScore] = []
    histograms: list[torch.Tensor] = []
    translab: list[TranslabScore] = []
    progress = tqdm(loader, desc=f"{args.split}", disable=not accelerator.is_local_main_process)
    with BackgroundImageWriter() as writer, torch.inference_mode():  # PNG encoding never blocks the GPU
        for batch in progress:
            if args.eval_protocol == "translab":
                batch = with_translab_gt(batch, by_key)
            raws, class_maps = split_outputs(args, raw_source(batch), batch)
            batch_scores, scored, gts = score_batch(
                raws, batch, args.threshold, args.eval_protocol, args.resolution, quantize_raw=not args.predictions_dir
            )
            if args.save_raw_predictions:
                save_raws(writer, out_dir, batch_scores, scored, batch["gt_classes"])
                if class_maps is not None and not args.predictions_dir:
                    save_class_maps(writer, out_dir, batch_scores, class_maps)
            scores += accelerator.gather_for_metrics(batch_scores, use_gather_object=True)
            if args.eval_protocol == "translab":
                batch_translab = translab_scores(batch, class_maps, scored, gts, args.threshold)
                translab += accelerator.gather_for_metrics(batch_translab, use_gather_object=True)
            if args.threshold_sweep:
                batch_histograms = sweep_histograms(scored, gts, accelerator.device)
                histograms.append(accelerator.gather_for_metrics(batch_histograms).cpu())
    accelerator.wait_for_everyone()  # every rank's PNGs are on disk before panels read them
    return SplitScores(scores, torch.cat(histograms).sum(0) if args.threshold_sweep else None, translab)


def write_panels(args: argparse.Namespace, out_dir: Path, samples: list[Sample], scores: list[ImageScore]) -> None:
    """Panels (image | raw | binary | GT, errors coloured) for the worst-k images and the first few of each subset."""
    by_key = {(s.subset, s.stem): s for s in samples}
    chosen = [(f"worst/{rank:03d}_", score) for rank, score in enumerate(worst_k(scores, args.num_worst_panels))]
    for subset in args.subsets:
        chosen += [("sample/", score) for score in [s for s in scores if s.subset == subset][: args.num_sample_panels]]
    with BackgroundImageWriter() as writer:
        for prefix, score in chosen:
            sample = by_key[(score.subset, score.stem)]
            raw = png_to_raw(out_dir / "raw" / score.subset / f"{score.stem}.png")
            gt_binary = torch.from_numpy(np.array(load_mask_grey(sample.mask_path)) > 0)
            panel = render_panel(load_image(sample.image_path), raw, gt_binary, args.threshold)
            writer.submit(out_dir / "panels" / f"{prefix}{score.subset}_{score.stem}.png", panel)


@dataclass
class Report:
    summary: dict[str, dict]  # summarize_subsets of this run
    ceiling: dict[str, dict] | None  # the VAE oracle's summary with the same settings, when one was run
    extra: dict  # the metrics.json keys beside threshold and subsets


def write_reports(
    args: argparse.Namespace, out_dir: Path, samples: list[Sample], result: SplitScores, predictions: dict | None
) -> Report:
    """metrics.json, metrics.md, per_image.csv and the panels; on the main process only.

    Under the translab protocol each subset's summary gets a "translab" entry; with --predictions_dir, metrics.json
    says under "predictions" how the files were read (conversion per PNG mode, naming)."""
    summary, ceiling = summarize_subsets(result.scores), oracle_summary(args)
    if result.translab:
        for subset, translab_summary in summarize_translab_subsets(result.translab).items():
            summary[subset]["translab"] = translab_summary
    extra = {
        "split": args.split,
        "protocol": args.eval_protocol,
        "resolution": args.resolution,
        "mask_classes": args.mask_classes,
        "source": "predictions" if args.predictions_dir else args.oracle or "model",
    }
    if predictions is not None:
        extra["predictions"] = predictions
    if result.histogram is not None:
        extra["threshold_sweep"] = threshold_sweep(result.histogram).to_dict()
    write_metrics_json(out_dir / "metrics.json", args.threshold, summary, extra)
    write_metrics_md(
        out_dir / "metrics.md",
        summary,
        title=f"Trans10k {args.split} ({extra['source']})",
        protocol_note=protocol_note(args.eval_protocol, args.resolution, args.threshold),
        oracle_summary=ceiling,
        oracle_label="VAE round-trip ceiling",
    )
    write_per_image_csv(out_dir / "per_image.csv", result.scores)
    if args.save_raw_predictions:
        write_panels(args, out_dir, samples, result.scores)
    return Report(summary, ceiling, extra)


def print_report(args: argparse.Namespace, out_dir: Path, report: Report) -> None:
    """The summary tables, the VAE ceiling beside them when there is one, and the threshold sweep, on stdout."""
    print(format_summary_table(report.summary))
    print(format_iou_distribution_table(report.summary))
    if "translab" in report.summary["mix"]:
        print(format_translab_table(report.summary))
    if report.ceiling is not None:
        print("\nVAE round-trip ceiling (GT mask -> encode -> decode), same split and protocol:")
        print(format_summary_table(report.ceiling))
    if "threshold_sweep" in report.extra:
        print(f"threshold sweep ({args.split}): {report.extra['threshold_sweep']}")
    print(f"wrote {out_dir}")


def main() -> None:
    args = load_config()
    check_eval_settings(args)
    samples = split_samples(args)
    class_maps = args.mask_classes == "things_stuff"
    # Every missing, unreadable or misshapen prediction is listed before anything is scored or written.
    squares = (args.resolution, TRANSLAB_SIDE) if args.eval_protocol == "translab" else (args.resolution,)
    predictions = (
        check_predictions(args.predictions_dir, samples, squares, class_maps) if args.predictions_dir else None
    )
    accelerator, out_dir = set_up(args)
    loader, raw_source = build_loader(args, accelerator, samples), prediction_source(args, accelerator)
    result = score_split(args, accelerator, loader, raw_source, out_dir, samples)
    if accelerator.is_main_process:
        print_report(args, out_dir, write_reports(args, out_dir, samples, result, predictions))
    accelerator.end_training()


if __name__ == "__main__":
    main()
