"""Check a Trans10k folder before training: ``python -m dataset.check DATASET_PATH [--deep] [--splits ...]``.

Prints every problem (missing or empty folders, images without masks and masks without images, unreadable files,
image/mask size mismatches), then a table of pair counts against the official split sizes. Reads file headers only
unless --deep, which decodes every file and so also finds truncated ones. Exit status 1 if there is any problem,
0 if the data is clean; count differences from the official sizes are informational (e.g. a small local subset).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dataset.trans10k import (
    OFFICIAL_SPLIT_SIZES,
    SPLITS,
    SUBSETS,
    Sample,
    expected_layout,
    find_problems,
    scan_split,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dataset.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_path", type=Path, help="Trans10k root holding train/, validation/ and test/")
    parser.add_argument("--deep", action="store_true", help="decode every file (slow) to also catch truncated data")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="splits to check")
    return parser.parse_args(argv)


def count_rows(split: str, samples: Sequence[Sample]) -> list[tuple[str, str, int, str, str]]:
    """Table rows (split, subset, pairs, official, difference); the official size is known per split only."""
    official = OFFICIAL_SPLIT_SIZES[split]
    total = len(samples)
    if split == "train":
        return [(split, "-", total, str(official), f"{total - official:+d}")]
    rows = [(split, subset, sum(s.subset == subset for s in samples), "", "") for subset in SUBSETS]
    return [*rows, (split, "total", total, str(official), f"{total - official:+d}")]


_ROW_FORMAT = "{:<12}{:<8}{:>8}{:>10}{:>12}"


def format_table(rows: Sequence[tuple[str, str, int, str, str]]) -> str:
    lines = [_ROW_FORMAT.format("split", "subset", "pairs", "official", "difference")]
    lines += [_ROW_FORMAT.format(*row).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.dataset_path
    mode = "decoding every file" if args.deep else "headers only; --deep decodes every file"
    print(f"Checking Trans10k at {root} ({mode})", flush=True)

    problems: list[str] = []
    layout_broken = False
    rows: list[tuple[str, str, int, str, str]] = []
    for split in args.splits:
        scan = scan_split(root, split)
        problems += scan.problems
        layout_broken = layout_broken or bool(scan.layout_problems)
        problems += find_problems(scan.samples, deep=args.deep)
        rows += count_rows(split, scan.samples)

    if problems:
        print(f"\n{len(problems)} problem(s):")
        print("\n".join(f"  - {problem}" for problem in problems))
        if layout_broken:
            print("\n" + expected_layout(root))
    else:
        print("\nNo problems found.")
    print("\nImage/mask pairs found (differences from the official sizes are informational, not problems):")
    print(format_table(rows))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
