"""Evaluation outputs: metrics.json, metrics.md (beside published Trans10k results), per_image.csv, summary table.

``subsets_summary`` everywhere is what ``evaluation.metrics.summarize_subsets`` returns:
{"easy"|"hard"|...|"mix": {"num_images": N, "per_image_mean": {metric: v}, "dataset": {metric: v},
"per_image_iou": {...}}}, plus "translab" (``evaluation.translab.summarize_translab``) under the translab protocol.
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
    "boundary_iou": "Boundary IoU",
}
# The published comparison uses these metrics and Trans10k test subsets, in this order.
HEADLINE_METRICS = ("iou", "recall", "mse")
HEADLINE_SUBSETS = ("mix", "easy", "hard")
COUNT_FIELDS = ("tp", "fp", "fn", "tn", "abs_err", "sq_err", "boundary_intersection", "boundary_union")
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


@dataclass(frozen=True)
class TranslabReference:
    """A published TransLab-style result on Trans10k v1 test: fractions per subset (mix, easy, hard)."""

    method: str
    miou: dict[str, float]
    source: str
    class_iou: dict[str, float] | None = None  # mix IoU of things and stuff, where the source gives them


TRANSLAB_REFERENCES: tuple[TranslabReference, ...] = (
    TranslabReference(
        method="TransLab (Xie et al., ECCV 2020)",
        miou={"mix": 0.8763, "easy": 0.9223, "hard": 0.7210},
        source=(
            "as quoted in issue 13 and the seed's README table; the paper's table could not be opened from here to "
            "check it, nor its Acc/MAE/mBER. Scored by segmentron/utils/score.py, the code this protocol follows"
        ),
    ),
    TranslabReference(
        method="EBLNet (He et al., ICCV 2021), ResNet50 os8",
        miou={"mix": 0.9028},
        class_iou={"things": 0.9273, "stuff": 0.8782},
        source=(
            "github.com/hehao13/EBLNet README: things 92.73, stuff 87.82, mIoU 90.28 without background; "
            "scored by EBLNet's own evaluation code (NVIDIA semantic-segmentation based), not TransLab's"
        ),
    ),
    TranslabReference(
        method="RFENet (Fan et al., IJCAI 2023), ResNet50 os8",
        miou={"mix": 0.9125},
        source="github.com/VankouF/RFENet README: mIoU 91.25 without background; scored by its own EBLNet-based code",
    ),
)

PROTOCOL_NOTES = {
    "native": "each prediction resized (bilinear) to its ground truth's own size, then raw >= threshold",
    "square": "ground truth resized (PIL nearest) to the model's square resolution, raw >= threshold",
    "seed": (
        "the seed project's protocol (e2e_log_val.py): ground truth and prediction at the model's square "
        "resolution, binary = raw > 0.5, metrics averaged per image (compare the per-image mean rows); its "
        "proccess_metrics.py averages only images with IoU >= 0.4, see the IoU distribution"
    ),
    "translab": (
        "TransLab's protocol (segmentron/utils/score.py): ground truth classes from the mask's RGB mean "
        "(0/85/255 -> background/things/stuff) and predictions at 512 x 512 (PIL nearest for class maps, bilinear "
        "then raw >= threshold for raw masks); the binary metrics are scored at 512 x 512 too"
    ),
}


def protocol_note(protocol: str, resolution: int, threshold: float) -> str:
    return f"protocol: {protocol}, {resolution} px, threshold {threshold}: {PROTOCOL_NOTES[protocol]}."


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


def _percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.2f}"


def _plain(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def format_iou_distribution_table(subsets_summary: dict[str, dict]) -> str:
    """Per subset: quantiles of the per-image IoU, the share of images below 0.4, and the mean of the others."""
    first = next(iter(subsets_summary.values()))["per_image_iou"]
    quantile_names = list(first["quantiles"])
    header = ["Subset", "Images", *(f"IoU {name}" for name in quantile_names), "share < 0.4", "mean of IoU >= 0.4"]
    rows = []
    for subset, summary in subsets_summary.items():
        distribution = summary["per_image_iou"]
        quantiles = [_format_value(distribution["quantiles"][name]) for name in quantile_names]
        rows.append(
            [
                subset,
                str(summary["num_images"]),
                *quantiles,
                _format_value(distribution["share_below_0.4"]),
                _format_value(distribution["mean_of_images_at_least_0.4"]),
            ]
        )
    return markdown_table(header, rows)


def _translab_columns(classes: str) -> list[tuple[str, str]]:
    """(label, key) of the TransLab table's columns for a summary's classes."""
    if classes == "binary":
        return [
            ("IoU transparent (= mIoU)", "iou_transparent"),
            ("IoU background", "iou_background"),
            ("Acc", "acc"),
            ("MAE", "mae"),
            ("BER transparent (= mBER)", "ber_transparent"),
        ]
    return [
        ("mIoU", "miou"),
        ("IoU things", "iou_things"),
        ("IoU stuff", "iou_stuff"),
        ("IoU background", "iou_background"),
        ("Acc", "acc"),
        ("MAE", "mae"),
        ("mBER", "mber"),
        ("BER things", "ber_things"),
        ("BER stuff", "ber_stuff"),
    ]


def _translab_cell(key: str, value: float | None) -> str:
    if key.startswith(("iou", "miou", "acc")):
        return _percent(value)  # fractions in metrics.json, x100 as TransLab prints them
    return _plain(value, 3 if key == "mae" else 2)  # BER is already in percent


def format_translab_table(subsets_summary: dict[str, dict]) -> str:
    """This run's TransLab metrics per subset; the published 3-class rows beside them only for 3-class numbers."""
    classes = subsets_summary["mix"]["translab"]["classes"]
    columns = _translab_columns(classes)
    rows = [
        ["this run", subset, *(_translab_cell(key, summary["translab"][key]) for _, key in columns)]
        for subset, summary in subsets_summary.items()
    ]
    if classes == "things_stuff":
        for reference in TRANSLAB_REFERENCES:
            for subset, miou in reference.miou.items():
                known = {"miou": miou}
                if subset == "mix" and reference.class_iou:
                    known |= {f"iou_{name}": value for name, value in reference.class_iou.items()}
                rows.append(
                    [f"{reference.method}, published", subset, *(_translab_cell(k, known.get(k)) for _, k in columns)]
                )
    return markdown_table(["Method", "Subset", *(label for label, _ in columns)], rows)


def _translab_sections(subsets_summary: dict[str, dict]) -> list[str]:
    classes = subsets_summary["mix"]["translab"]["classes"]
    if classes == "binary":
        title = "## TransLab protocol, two-class version (background vs transparent)"
        note = (
            "A binary prediction scored with TransLab's code on two classes (transparent = things or stuff). These "
            "are NOT the published 3-class numbers (mIoU over things and stuff) and are not comparable with them: "
            "score a things/stuff class map (`--mask_classes things_stuff --predictions_dir DIR`) for those."
        )
        references = [
            f"- {r.method}: 3-class mIoU {_percent(r.miou['mix'])} (mix); {r.source}." for r in TRANSLAB_REFERENCES
        ]
        note += "\n\nPublished 3-class results, for orientation only:\n" + "\n".join(references)
    else:
        title = "## TransLab protocol (3 classes: background, things, stuff) beside published results"
        note = "IoU, mIoU and Acc x100; MAE over class indices; BER in percent. Sources:\n" + "\n".join(
            f"- {r.method}: {r.source}." for r in TRANSLAB_REFERENCES
        )
    return [title, format_translab_table(subsets_summary), note]


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
    translab = _translab_sections(subsets_summary) if "translab" in subsets_summary["mix"] else []
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
        *translab,
        "## All metrics of this run",
        format_summary_table(subsets_summary),
        "## Per-image IoU distribution",
        format_iou_distribution_table(subsets_summary),
        "A mean over a filtered set of images (e.g. only those with IoU >= 0.4, as the seed's proccess_metrics.py "
        "computes) is the last column; the share of images it leaves out is the one before.",
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
