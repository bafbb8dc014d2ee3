"""The results table's marks against the paper's own (Table 1, DIV2K), and its layout."""

from __future__ import annotations

import math

import pytest

from diffusers_irib.evaluation import PAPER_METRICS, markdown_table, paper_rows, rank_marks


def test_marks_follow_each_metrics_direction_ties_and_missing_values():
    assert rank_marks([20.1, 19.0, 20.5, None], higher_is_better=True) == ["second", "", "best", ""]
    assert rank_marks([62.9, 159.1, 63.1, math.nan], higher_is_better=False) == ["best", "", "second", ""]
    assert rank_marks([0.5, 0.5, 0.4], higher_is_better=True) == ["best", "best", "second"]
    assert rank_marks([None, None], higher_is_better=True) == ["", ""]


def test_our_marks_on_the_papers_numbers_match_the_papers_underlines():
    """In the paper's Table 1 (DIV2K) the second-best cell of each metric is underlined. Our marks on
    its numbers put "second" on the same rows for 7 of the 8 metrics; LPIPS is the exception, where
    the paper underlines its lowest value 0.4249 (its bold and underline are swapped there)."""
    rows = paper_rows("div2k", "Table 1")
    underlined = {  # the paper's <u>...</u> cells, as printed
        "psnr": 20.0488, "ssim": 0.4797, "dists": 0.2599, "fid": 62.9768, "niqe": 4.1814,
        "musiq": 70.6405, "clipiqa": 0.6844,
    }  # fmt: skip
    for metric, value in underlined.items():
        values = [r.as_dict()[metric] for r in rows]
        marks = rank_marks(values, higher_is_better=metric in ("psnr", "ssim", "musiq", "clipiqa"))
        assert [v for v, m in zip(values, marks) if m == "second"] == [value], metric


def test_the_markdown_table_has_the_papers_layout():
    rows = [
        {"method": "restorer", "training": "Pretrained", "lfo": "x", "convention": "y", "psnr": 19.5, "fid": 80.0},
        {"method": "irib", "training": "ELQ -> LQ -> HQ", "lfo": 2, "convention": "y", "psnr": 20.25, "fid": None},
    ]
    table = markdown_table(rows, metrics=("psnr", "fid"))
    lines = table.splitlines()
    assert lines[0] == "| Method | Training type | LFO | PSNR/SSIM on | PSNR ↑ | FID ↓ |"
    assert lines[2] == "| restorer | Pretrained | x | y | <u>19.5000</u> | **80.0000** |"
    assert lines[3] == "| irib | ELQ -> LQ -> HQ | 2 | y | **20.2500** | n/a |"
    assert len(PAPER_METRICS) == 8 and markdown_table(rows).count("n/a") == 6 + 7
    with pytest.raises(ValueError, match="unknown metric"):
        markdown_table(rows, metrics=("psnr", "maniqa"))


def test_the_papers_rows_are_complete():
    for dataset in ("div2k", "div8k"):
        rows = paper_rows(dataset)
        assert len(rows) == 6 + 4 + 5 and all(len(r.values) == 8 for r in rows)
        assert {r.source for r in rows} == {f"Table {t}, {dataset.upper()}" for t in (1, 2, 3)}
    # The same model appears in Tables 1 and 3 (lambda_blur = 0.5 is the main setting): same numbers.
    t1 = {r.method_key: r for r in paper_rows("div2k", "Table 1")}
    t3 = {r.method: r for r in paper_rows("div2k", "Table 3")}
    assert t1["irib"].values == t3["OSEDiff + Ours (blur 0.5)"].values
    assert t1["direct"].values == t3["OSEDiff Fine-tuned"].values
    with pytest.raises(ValueError, match="dataset"):
        paper_rows("div4k")
