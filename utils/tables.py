"""Markdown tables, for metrics.md and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence


def _is_number(cell: str) -> bool:
    try:
        float(cell.strip("*").rstrip("x%").replace(",", ""))
    except ValueError:
        return False
    return True


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; columns whose cells are all numbers (or n/a, -, empty) are right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    numeric = [
        bool(cells) and all(_is_number(row[i]) or row[i] in ("n/a", "-", "") for row in cells)
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)
