"""What every console entry point shares: ``--debug``/``--version``, argument types, device and dtype.

A bad value is refused by its argument type, in one line naming the value, before any work starts.
Nothing here imports torch, diffusers or transformers at module level, so ``--help``, ``--version``
and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from .errors import CLIError, first_line

MAX_SEED = 2**63 - 1
DTYPE_NAMES = ("bf16", "fp16", "fp32")
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


# --------------------------------------------------------------------------- version, shared flags
def package_version() -> str:
    """``diffusers_irib.__version__`` when the package defines it, else the installed metadata."""
    version = getattr(sys.modules.get("diffusers_irib"), "__version__", None)
    if version:
        return str(version)
    from importlib import metadata

    try:
        return metadata.version("diffusers-irib")
    except metadata.PackageNotFoundError:
        return "unknown"


def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the module docstring, shown as written (minus RST quotes)."""
    return argparse.ArgumentParser(
        prog=prog, description=doc.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_common_arguments(parser: argparse.ArgumentParser, overwrite: bool = True) -> None:
    """``--overwrite`` (for commands that write files), ``--debug`` and ``--version``."""
    if overwrite:
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="Replace output files that already exist (never an input file). Default: refuse.",
        )
    parser.add_argument("--debug", action="store_true", help="Show the full traceback when something fails.")
    parser.add_argument("--version", action="version", version=f"%(prog)s diffusers-irib {package_version()}")


# --------------------------------------------------------------------------- argument types
def path_arg(text: str) -> str:
    """An argparse type for a file or folder path: an empty one (``-o ""``, an unset variable in a
    script) would silently mean the current folder, so it is refused; ``.`` says that on purpose."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty path {text!r}: give a file or folder (. for the current folder)")
    return text


def int_in(low: int, high: int, multiple_of: int = 1) -> Callable[[str], int]:
    """An argparse type: a base-10 integer in [low, high] (optionally a multiple of something)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {value}")
        if value % multiple_of:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple_of}, got {value}")
        return value

    return parse


def seed_value(text: str) -> int:
    """An argparse type: a seed torch accepts, so a typo like ``1e23`` never reaches torch."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1], got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 1 = {MAX_SEED}], got {value}")
    return value


def float_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number in (low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in ({low:g}, {high:g}], got {text!r}") from None
        if not math.isfinite(value) or not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be a number in ({low:g}, {high:g}], got {text}")
        return value

    return parse


def safe_name(text: str) -> str:
    """An argparse type for strings that become part of a file name (``--suffix``)."""
    if text and (not SAFE_NAME.fullmatch(text) or ".." in text):
        raise argparse.ArgumentTypeError(
            f"must be a plain file-name part (letters, digits, '_', '-', '.'; no '/' or '..'), got {text!r}"
        )
    return text


def is_safe_name(name: Any) -> bool:
    """A non-empty string usable as one component of a file name, with no way out of its folder."""
    return isinstance(name, str) and bool(SAFE_NAME.fullmatch(name)) and ".." not in name


# --------------------------------------------------------------------------- device and dtype
def resolve_device(spec: str | None):
    """The torch device asked for, checked to exist here, before any model is loaded."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"--device {spec!r} is not a torch device ({first_line(err)}); use e.g. cpu or cuda") from None
    if device.type == "cuda":
        check_cuda(spec, device.index)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {spec!r}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "meta", "mps"):
        backend = getattr(torch, device.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise CLIError(
                f"--device {spec!r}: this torch build has no usable {device.type!r} device; use --device cpu"
            )
    return device


def check_cuda(spec: str, index: int | None) -> None:
    import torch

    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise CLIError(
            f"--device {spec!r}: CUDA is not available on this machine (torch {torch.__version__}, {built}); use --device cpu"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise CLIError(f"--device {spec!r}: this machine has {count} CUDA device(s), numbered 0 to {count - 1}")


def resolve_dtype(name: str | None, device):
    """fp16 on CUDA and fp32 elsewhere by default; fp16 on the CPU is refused, not ignored."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type == "cpu":
        raise CLIError(
            "--dtype fp16 needs a GPU: diffusers does not run float16 pipelines on the CPU "
            "(many float16 operations are missing or very slow there); use --dtype fp32 or bf16 on the CPU"
        )
    return dtypes[name]
