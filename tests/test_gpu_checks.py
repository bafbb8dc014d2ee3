"""benchmarks/gpu_checks.sh, the one command for the first GPU, checked without one: --dry-run parses
every step's command; with a stand-in python, the table records every outcome (ok, a failure, a
timeout, a skip, an exhausted budget) and one step's failure does not stop the next."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_checks.sh"
STEPS = ["pipeline", "train-b1", "cuda-tests", "degradations", "train-b4", "xformers", "adam8bit", "offload"]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def run(script: Path, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "GPU_CHECKS_LOGS": str(tmp_path / "logs"), **env}
    return subprocess.run(["bash", str(script), *args], env=environ, capture_output=True, text=True, timeout=300)


def table(tmp_path: Path) -> dict[str, list[str]]:
    """check name -> its row's cells (#, check, status, s, result, goal), from summary.md."""
    rows = [line.strip("|").split(" | ") for line in (tmp_path / "logs" / "summary.md").read_text().splitlines()]
    return {
        cells[1].strip(): [c.strip() for c in cells]
        for cells in rows
        if len(cells) == 6 and cells[0].strip().isdigit()
    }


def test_dry_run_parses_every_command_in_a_second(tmp_path):
    result = run(SCRIPT, tmp_path, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(tmp_path)
    assert list(rows) == STEPS  # the order: the most important numbers first
    assert all(cells[2] == "parses" for cells in rows.values())
    assert "selects 3 test(s)" in rows["cuda-tests"][4]  # the CUDA-only tests, found by their skip


def test_dry_run_reports_a_command_that_does_not_parse_and_checks_the_others(tmp_path):
    """A copy of the script with a misspelt flag in one step, beside the real benchmarks and tests."""
    copy = tmp_path / "repo"
    (copy / "benchmarks").mkdir(parents=True)
    for name in ("src", "tests"):
        (copy / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / "benchmarks" / "bench_args.py", copy / "benchmarks")
    text = SCRIPT.read_text().replace("--batch-size 4", "--batch-sise 4")
    (copy / "benchmarks" / "gpu_checks.sh").write_text(text)
    result = run(copy / "benchmarks" / "gpu_checks.sh", tmp_path, "--dry-run")
    assert result.returncode == 1
    rows = table(tmp_path)
    assert rows["train-b4"][2] == "DOES NOT PARSE (exit 2)"
    assert [r[2] for name, r in rows.items() if name != "train-b4"] == ["parses"] * 7
    assert "unrecognized arguments: --batch-sise" in (tmp_path / "logs" / "05-train-b4.log").read_text()


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python on a GPU machine: each benchmark answers as the case under test asks.
case "$*" in
  -c* | -) echo "FakeGPU 80GB, torch 2.x" ;;
  *bench_pipeline.py*) echo "SUMMARY 512 px, float16: lfo 0: 210 ms; lfo 0 / one pass 2.05x (goal <= 2.2x: met)" ;;
  *bench_train_step.py*--batch-size\\ 1*) echo "Traceback (most recent call last):"
                                          echo "torch.OutOfMemoryError: CUDA out of memory"; exit 1 ;;
  *pytest*) echo "3 passed in 0.12s" ;;
  *bench_degradations.py*) [ -n "${FAKE_HANG:-}" ] && sleep 30; echo "SUMMARY lq 1.2% (bf16)" ;;
  *bench_train_step.py*) echo "SUMMARY batch 4: ours 30.1 GB; osediff 41.0 GB; ours/osediff 0.73" ;;
  *smoke_cuda.py\\ xformers*) echo "SUMMARY xformers: skipped: xformers is not installed"; exit 3 ;;
  *smoke_cuda.py\\ adam8bit*) echo "SUMMARY adam8bit: ok: relative difference 1.0e-03" ;;
  *smoke_cuda.py\\ offload*) echo "SUMMARY offload: FAILED: images max |offload - on GPU| 5.0e-01"; exit 1 ;;
esac
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    path = tmp_path / "python"
    path.write_text(FAKE_PYTHON)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_every_outcome_is_a_row_and_no_failure_stops_the_next_step(tmp_path, fake_python):
    result = run(SCRIPT, tmp_path, PYTHON=fake_python)
    assert result.returncode == 1  # a step failed
    rows = table(tmp_path)
    assert list(rows) == STEPS
    assert rows["pipeline"][2:5:2] == [
        "ok",
        "512 px, float16: lfo 0: 210 ms; lfo 0 / one pass 2.05x (goal <= 2.2x: met)",
    ]
    assert rows["train-b1"][2] == "FAIL (exit 1)" and "CUDA out of memory" in rows["train-b1"][4]
    assert rows["cuda-tests"][2:5:2] == ["ok", "3 passed in 0.12s"]
    assert rows["train-b4"][2] == "ok" and rows["degradations"][2] == "ok"
    assert rows["xformers"][2] == "SKIP" and "not installed" in rows["xformers"][4]
    assert rows["adam8bit"][2] == "ok"
    # a '|' in a result would break the table: it is shown as '/'
    assert rows["offload"][2] == "FAIL (exit 1)" and "images max /offload - on GPU/ 5.0e-01" in rows["offload"][4]
    assert "FakeGPU 80GB" in result.stdout


def test_a_step_past_its_time_is_stopped_and_the_budget_is_kept(tmp_path, fake_python):
    # The budget leaves the hanging step what the first three (instant) steps did not use.
    result = run(SCRIPT, tmp_path, PYTHON=fake_python, FAKE_HANG="1", GPU_CHECKS_BUDGET="6", GPU_CHECKS_MIN_STEP="1")
    assert result.returncode == 1
    rows = table(tmp_path)
    assert rows["degradations"][2].startswith("TIMEOUT") and int(rows["degradations"][3]) <= 7
    assert [rows[name][2] for name in STEPS[4:]] == ["SKIP"] * 4
    assert all("no time left in the 6 s budget" in rows[name][4] for name in STEPS[4:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine this would run the checks")
def test_without_cuda_it_stops_at_once_with_one_line(tmp_path):
    result = run(SCRIPT, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "CUDA is not available" in result.stderr and "--dry-run" in result.stderr
