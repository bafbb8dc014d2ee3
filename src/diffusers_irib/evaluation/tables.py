"""The results table in the paper's layout: method, training type, LFO, then the eight metrics with
their arrows, the best value in bold and the second underlined (per column, in its own direction).

Values that print the same are equal (a reader cannot tell them apart, and a GPU rerun of the same
computation can differ in the last bits), and a row that repeats another row's images (``repeat_of``,
e.g. irib-lfo1 without a prompt extractor) is shown as such and never ranked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

__all__ = ["METRIC_DIRECTIONS", "markdown_table", "rank_marks"]

#: +1: higher is better; -1: lower is better.
METRIC_DIRECTIONS = {"psnr": 1, "ssim": 1, "lpips": -1, "dists": -1, "fid": -1, "niqe": -1, "musiq": 1, "clipiqa": 1}
_TITLES = {name: name.upper() for name in METRIC_DIRECTIONS}


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def rank_marks(values: Sequence[Any], higher_is_better: bool, digits: Optional[int] = None) -> list[str]:
    """ "best", "second" or "" for each value; equal values share a mark, missing values get none.
    With ``digits``, values equal once printed with that many decimals are equal."""
    numbers = [_number(v) for v in values]
    if digits is not None:
        numbers = [None if v is None else float(f"{v:.{digits}f}") for v in numbers]
    distinct = sorted({v for v in numbers if v is not None}, reverse=higher_is_better)
    marks = {v: m for v, m in zip(distinct, ("best", "second"))}
    return [marks.get(v, "") if v is not None else "" for v in numbers]


def _cell(value: Any, mark: str, digits: int) -> str:
    number = _number(value)
    text = f"{number:.{digits}f}" if number is not None else "n/a"
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)


def markdown_table(
    rows: Sequence[dict],
    metrics: Sequence[str] = tuple(METRIC_DIRECTIONS),
    columns: Sequence[tuple[str, str]] = (
        ("method", "Method"),
        ("training", "Training type"),
        ("lfo", "LFO"),
        ("convention", "PSNR/SSIM on"),
    ),
    digits: int = 4,
) -> str:
    """A Markdown table of ``rows`` (dicts with the ``columns`` keys and metric values; a metric that
    could not be computed is None or missing and shows as "n/a", never counted as best). A row with
    ``repeat_of`` shows "(= that method)" after its method and takes no part in the marks."""
    unknown = [m for m in metrics if m not in METRIC_DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRIC_DIRECTIONS)}")
    columns = [(key, title) for key, title in columns if any(key in row for row in rows)]
    ranked = [i for i, row in enumerate(rows) if not row.get("repeat_of")]
    marks = {m: [""] * len(rows) for m in metrics}
    for m in metrics:
        for i, mark in zip(ranked, rank_marks([rows[i].get(m) for i in ranked], METRIC_DIRECTIONS[m] > 0, digits)):
            marks[m][i] = mark
    header = [title for _, title in columns] + [
        f"{_TITLES[m]} {'↑' if METRIC_DIRECTIONS[m] > 0 else '↓'}" for m in metrics
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(columns) + ["---:"] * len(metrics)) + "|"]
    for i, row in enumerate(rows):
        cells = ["" if row.get(key) is None else str(row.get(key)) for key, _ in columns]
        if row.get("repeat_of") and columns and columns[0][0] == "method":
            cells[0] += f" (= {row['repeat_of']})"
        cells += [_cell(row.get(m), marks[m][i], digits) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
