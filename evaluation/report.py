"""Evaluation outputs: metrics.json, metrics.md (beside published Trans10k results), per_image.csv, summary table.

``subsets_summary`` everywhere is what ``evaluation.metrics.summarize_subsets`` returns:
{"easy"|"hard"|...|"mix": {"num_images": N, "per_image_mean": {metric: v}, "dataset": {metric: v}}}.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evaluation.metrics import METRIC_NAMES, ImageScore
from utils.atomic import atomic_path, atomic_write_json, atomic_write_text
from utils.tables import markdown_table

# How each statistic is named in tables; both are always printed because the seed does not say which it reported.
STATISTICS = {"per_image_mean": "per-image mean", "dataset": "dataset-pooled"}
METRIC_LABELS = {
    "iou": "IoU",
    "recall": "Recall",
    "precision": "Precision",
    "f1": "F1",
    "acc": "Acc",
    "ber": "BER",
    "mae": "MAE",
    "mse": "MSE",
}
# The published comparison uses these metrics and Trans10k test subsets, in this order.
HEADLINE_METRICS = ("iou", "recall", "mse")
HEADLINE_SUBSETS = ("mix", "easy", "hard")
COUNT_FIELDS = ("tp", "fp", "fn", "tn", "abs_err", "sq_err")
CSV_FIELDS = ("stem", "subset", "height", "width", *METRIC_NAMES, *COUNT_FIELDS)
MISSING = "–"


@dataclass(frozen=True)
class ReferenceRow:
    """A published result on the Trans10k test set: values[metric][subset]."""

    method: str
    statistic: str
    values: dict[str, dict[str, float]]
    note: str = ""
    footnote_mark: str = ""


REFERENCE_ROWS: tuple[ReferenceRow, ...] = (
    ReferenceRow(
        method="ours-seed (SD3.5-medium, 1 step), published",
        statistic="not stated",
        values={
            "iou": {"mix": 0.8819, "easy": 0.9214, "hard": 0.7346},
            "recall": {"mix": 0.9456, "easy": 0.9675, "hard": 0.8641},
            "mse": {"mix": 0.0312, "easy": 0.0189, "hard": 0.0772},
        },
        note="The seed project's published Trans10k test results; it does not say whether IoU is pooled or averaged.",
    ),
    ReferenceRow(
        method="TransLab (Xie et al., ECCV 2020), published",
        statistic="mIoU, things+stuff",
        values={"iou": {"mix": 0.8763, "easy": 0.9223, "hard": 0.721}},
        note=(
            "TransLab's mIoU averages the per-class IoU of the things and stuff classes; "
            "it is not the same measure as our binary foreground IoU and is shown for orientation only."
        ),
        footnote_mark="†",
    ),
)


def write_metrics_json(
    path: str | Path, threshold: float, subsets_summary: dict[str, dict], extra: dict | None = None
) -> None:
    """{"threshold": t, "subsets": subsets_summary, **extra}; extra may not reuse the two fixed keys."""
    extra = dict(extra or {})
    clashes = {"threshold", "subsets"} & extra.keys()
    if clashes:
        raise ValueError(f"extra keys {sorted(clashes)} would overwrite the fixed metrics.json keys")
    payload = {"threshold": float(threshold), "subsets": subsets_summary, **extra}
    atomic_write_json(path, payload)  # refuses NaN: the metrics are defined never to be NaN, so one is a bug


def _format_value(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def format_summary_table(subsets_summary: dict[str, dict]) -> str:
    """Markdown table: one row per subset and statistic, every metric as a column."""
    header = ["Subset", "Statistic", "Images", *(METRIC_LABELS[m] for m in METRIC_NAMES)]
    rows = []
    for subset, summary in subsets_summary.items():
        for key, label in STATISTICS.items():
            values = [_format_value(summary[key][m]) for m in METRIC_NAMES]
            rows.append([subset, label, str(summary["num_images"]), *values])
    return markdown_table(header, rows)


def _headline_header() -> list[str]:
    columns = [f"{METRIC_LABELS[m]} {s}" for m in HEADLINE_METRICS for s in HEADLINE_SUBSETS]
    return ["Method", "Statistic", *columns]


def _run_rows(label: str, subsets_summary: dict[str, dict]) -> list[list[str]]:
    """Two headline rows for one of our runs: per-image mean and dataset-pooled; absent subsets print as MISSING."""
    rows = []
    for key, statistic in STATISTICS.items():
        cells = []
        for metric in HEADLINE_METRICS:
            for subset in HEADLINE_SUBSETS:
                summary = subsets_summary.get(subset)
                cells.append(_format_value(None if summary is None else summary[key][metric]))
        rows.append([label, statistic, *cells])
    return rows


def _reference_row(reference: ReferenceRow) -> list[str]:
    cells = [
        _format_value(reference.values.get(metric, {}).get(subset))
        for metric in HEADLINE_METRICS
        for subset in HEADLINE_SUBSETS
    ]
    return [reference.method, reference.statistic + reference.footnote_mark, *cells]


def write_metrics_md(
    path: str | Path,
    subsets_summary: dict[str, dict],
    title: str,
    protocol_note: str,
    oracle_summary: dict[str, dict] | None = None,
    oracle_label: str = "oracle",
) -> None:
    """Paper-style Markdown: IoU / recall / MSE for mix, easy, hard beside REFERENCE_ROWS, then every metric.

    Our rows are printed twice, per-image mean and dataset-pooled, and labelled, since the seed's statistic is
    unknown. ``oracle_summary`` (same shape as ``subsets_summary``) adds rows labelled ``oracle_label``.
    """
    rows = _run_rows("this run", subsets_summary)
    if oracle_summary is not None:
        rows += _run_rows(oracle_label, oracle_summary)
    rows += [_reference_row(reference) for reference in REFERENCE_ROWS]
    notes = [
        "- **per-image mean**: each metric computed per image, then averaged over images.",
        "- **dataset-pooled**: the same formula applied to TP/FP/FN/TN and error sums pooled over all pixels of all "
        "images (large images weigh more).",
    ]
    notes += [f"- {r.footnote_mark}{r.method}: {r.note}" for r in REFERENCE_ROWS if r.note]
    sections = [
        f"# {title}",
        protocol_note.strip(),
        "## Trans10k test: this run beside published results",
        markdown_table(_headline_header(), rows),
        "\n".join(notes),
        "## All metrics of this run",
        format_summary_table(subsets_summary),
    ]
    if oracle_summary is not None:
        sections += [f"## All metrics: {oracle_label}", format_summary_table(oracle_summary)]
    text = "\n\n".join(section for section in sections if section) + "\n"
    atomic_write_text(path, text)


def write_per_image_csv(path: str | Path, scores: Sequence[ImageScore]) -> None:
    """One row per image: stem, subset, size, every metric, then the counts and error sums; sorted by subset, stem."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for score in sorted(scores, key=lambda s: (s.subset, s.stem)):
            # csv writes floats with repr(), which reads back to the identical float.
            counts = {name: getattr(score, name) for name in COUNT_FIELDS}
            writer.writerow(
                {"stem": score.stem, "subset": score.subset, "height": score.height, "width": score.width}
                | score.metrics()
                | counts
            )
