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
        "psnr": 20.0488,
        "ssim": 0.4797,
        "dists": 0.2599,
        "fid": 62.9768,
        "niqe": 4.1814,
        "musiq": 70.6405,
        "clipiqa": 0.6844,
    }
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


def test_values_that_print_the_same_share_a_mark():
    """A GPU rerun of one computation can differ in the last bits: 20.04881 and 20.04879 both print as
    20.0488, so neither may be "best" over the other and the next value is the second best."""
    assert rank_marks([20.04881, 20.04879, 19.6], higher_is_better=True) == ["best", "second", ""]
    assert rank_marks([20.04881, 20.04879, 19.6], higher_is_better=True, digits=4) == ["best", "best", "second"]
    assert rank_marks([0.42491, 0.42489, 0.5], higher_is_better=False, digits=4) == ["best", "best", "second"]
    table = markdown_table(
        [{"method": "a", "psnr": 20.04881}, {"method": "b", "psnr": 20.04879}, {"method": "c", "psnr": 19.6}],
        metrics=("psnr",),
    )
    assert table.count("**20.0488**") == 2 and "<u>19.6000</u>" in table


def test_a_row_that_repeats_another_is_shown_as_such_and_never_ranked():
    """Without a prompt extractor irib-lfo1/irib-lfo2 recompute irib's images: identical rows that must
    not take "second best" from the next real method, nor be marked themselves."""
    rows = [
        {"method": "restorer", "lfo": "x", "psnr": 19.5, "lpips": 0.50},
        {"method": "direct", "lfo": "x", "psnr": 19.9, "lpips": 0.44},
        {"method": "irib", "lfo": "x", "psnr": 20.0, "lpips": 0.43},
        {"method": "irib-lfo1", "lfo": "x1", "psnr": 20.0, "lpips": 0.43, "repeat_of": "irib"},
        {"method": "irib-lfo2", "lfo": "x2", "psnr": 20.00002, "lpips": 0.4299, "repeat_of": "irib"},  # GPU bits
    ]
    lines = markdown_table(rows, metrics=("psnr", "lpips")).splitlines()
    assert lines[0] == "| Method | LFO | PSNR ↑ | LPIPS ↓ |"
    assert lines[2:] == [
        "| restorer | x | 19.5000 | 0.5000 |",
        "| direct | x | <u>19.9000</u> | <u>0.4400</u> |",
        "| irib | x | **20.0000** | **0.4300** |",
        "| irib-lfo1 (= irib) | x1 | 20.0000 | 0.4300 |",
        "| irib-lfo2 (= irib) | x2 | 20.0000 | 0.4299 |",
    ]
