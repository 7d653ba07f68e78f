import csv
import json

import pytest
import torch

from evaluation.metrics import METRIC_NAMES, score_image, summarize_subsets
from evaluation.report import (
    CSV_FIELDS,
    format_summary_table,
    write_metrics_json,
    write_metrics_md,
    write_per_image_csv,
)


@pytest.fixture
def scores():
    generator = torch.Generator().manual_seed(0)
    result = []
    for stem, subset, size in [("b", "hard", (6, 7)), ("a", "hard", (5, 5)), ("z", "easy", (4, 9))]:
        raw = torch.rand(size, generator=generator)
        gt = torch.rand(size, generator=generator) < 0.5
        result.append(score_image(raw, gt, 0.5, stem=stem, subset=subset))
    return result


def test_metrics_json_has_exactly_the_required_shape(tmp_path, scores):
    path = tmp_path / "out" / "metrics.json"
    summaries = summarize_subsets(scores)
    write_metrics_json(path, 0.5, summaries, extra={"checkpoint": "step-100"})
    data = json.loads(path.read_text())
    assert list(data) == ["threshold", "subsets", "checkpoint"]
    assert data["threshold"] == 0.5 and data["checkpoint"] == "step-100"
    assert list(data["subsets"]) == ["easy", "hard", "mix"]
    for subset, summary in data["subsets"].items():
        assert set(summary) == {"num_images", "per_image_mean", "dataset", "per_image_iou"}
        assert list(summary["per_image_mean"]) == list(METRIC_NAMES)
        assert list(summary["dataset"]) == list(METRIC_NAMES)
        assert summary == summaries[subset]  # floats survive the JSON round trip exactly
    assert data["subsets"]["mix"]["num_images"] == 3
    with pytest.raises(ValueError, match="threshold"):
        write_metrics_json(path, 0.5, summaries, extra={"threshold": 0.4})


def test_per_image_csv_reads_back(tmp_path, scores):
    path = tmp_path / "per_image.csv"
    write_per_image_csv(path, scores)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        assert tuple(reader.fieldnames) == CSV_FIELDS
    assert [(r["subset"], r["stem"]) for r in rows] == [("easy", "z"), ("hard", "a"), ("hard", "b")]
    by_stem = {s.stem: s for s in scores}
    for row in rows:
        score = by_stem[row["stem"]]
        assert (int(row["height"]), int(row["width"])) == (score.height, score.width)
        assert [int(row[k]) for k in ("tp", "fp", "fn", "tn")] == [score.tp, score.fp, score.fn, score.tn]
        assert float(row["abs_err"]) == score.abs_err and float(row["sq_err"]) == score.sq_err
        for name, value in score.metrics().items():
            assert float(row[name]) == value, name


def test_metrics_md_has_reference_numbers_and_both_statistics(tmp_path, scores):
    path = tmp_path / "metrics.md"
    summaries = summarize_subsets(scores)
    write_metrics_md(path, summaries, title="Trans10k test", protocol_note="Native GT size, threshold 0.5.")
    text = path.read_text()
    for number in ("0.8819", "0.9214", "0.7346", "0.9456", "0.9675", "0.8641", "0.0312", "0.0189", "0.0772"):
        assert number in text, number
    for number in ("0.8763", "0.9223", "0.7210"):  # TransLab
        assert number in text, number
    assert "things" in text and "stuff" in text
    assert "per-image mean" in text and "dataset-pooled" in text
    assert "# Trans10k test" in text and "Native GT size, threshold 0.5." in text
    assert f"{summaries['hard']['per_image_mean']['iou']:.4f}" in text
    assert f"{summaries['mix']['dataset']['mse']:.4f}" in text


def test_metrics_md_oracle_rows_and_missing_subsets(tmp_path, scores):
    easy_only = summarize_subsets([s for s in scores if s.subset == "easy"])
    path = tmp_path / "metrics.md"
    write_metrics_md(path, easy_only, title="t", protocol_note="", oracle_summary=easy_only, oracle_label="GT oracle")
    text = path.read_text()
    assert "GT oracle" in text
    this_run = [line for line in text.splitlines() if line.startswith("| this run |")]
    assert len(this_run) == 2 and all("–" in line for line in this_run)  # hard column missing


def test_format_summary_table(scores):
    table = format_summary_table(summarize_subsets(scores))
    lines = table.splitlines()
    assert lines[0].startswith("| Subset | Statistic | Images | IoU |")
    assert len(lines) == 2 + 3 * 2  # header, rule, two statistics for easy/hard/mix
    assert all(line.count("|") == lines[0].count("|") for line in lines)
