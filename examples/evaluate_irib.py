#!/usr/bin/env python
"""Evaluate restoration methods on a test set and write the paper's results table.

The same program as the ``irib-evaluate`` command (``diffusers_irib.evaluation.evaluate``); run it
with ``python``, ``accelerate launch`` or ``torchrun`` (each process restores its share of the
images). See ``python examples/evaluate_irib.py --help`` and examples/README.md.
"""

import sys

from diffusers_irib.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
