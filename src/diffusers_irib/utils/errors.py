"""One-line errors: what a command or the web page says when a run fails for an expected reason.

An ordinary mistake (a typo in a path, a bad number, a missing model) must end in one line,
``prog: error: what is wrong``, never a traceback; ``--debug`` brings the traceback back for bug
reports. Nothing here imports torch at module level.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

DEBUG_HINT = " (run with --debug for the full traceback)"


class CLIError(Exception):
    """A mistake the user can fix: printed as ``prog: error: message`` and exit ``code``.

    Code 2 (as argparse) means the command line or its inputs are wrong and nothing was done;
    code 1 means the run itself failed (a missing model, a full disk, images that failed).
    """

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class WriteError(CLIError):
    """An output file could not be written: stops a batch, since the next file would fail too."""

    def __init__(self, message: str):
        super().__init__(message, code=1)


# Failures of a run that are expected (bad files, models, memory) rather than bugs in this code.
EXPECTED_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ImportError, EOFError)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's can run to a page)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def describe_failure(err: BaseException, oom_hint: str, prefix: str = "") -> str:
    """One line for a failed restore: ``oom_hint`` (what to try instead) when memory ran out (the
    CUDA cache is emptied for the next try), else ``prefix`` and the error's first line."""
    if is_out_of_memory(err):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return oom_hint
    return prefix + first_line(err)


def fail(prog: str, message: str, code: int) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_guarded(prog: str, debug: bool, body: Callable[[], int]) -> int:
    """Run the command; turn expected exceptions into one line on stderr and an exit code."""
    if debug:
        return body()
    try:
        return body()
    except CLIError as err:
        fail(prog, str(err), err.code)
    except EXPECTED_ERRORS as err:
        fail(prog, first_line(err) + DEBUG_HINT, 1)
    except KeyboardInterrupt:
        fail(prog, "interrupted", 130)
    return 1  # not reached: fail() raises SystemExit
