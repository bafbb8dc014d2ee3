"""Evaluation: the paper's metrics table (eight metrics, their directions, best/second marks) and its
published numbers, so a run's table can be read beside Tables 1-3 of the paper."""

from .paper import PAPER_METRICS, PAPER_ROWS, PaperRow, paper_rows
from .tables import METRIC_DIRECTIONS, markdown_table, rank_marks

__all__ = [
    "METRIC_DIRECTIONS",
    "PAPER_METRICS",
    "PAPER_ROWS",
    "PaperRow",
    "markdown_table",
    "paper_rows",
    "rank_marks",
]
