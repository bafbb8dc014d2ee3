"""The example training script, loaded as a module so that tests can call its functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_irib_lora.py"


def load_script() -> ModuleType:
    """A fresh module of ``examples/train_irib_lora.py`` (not registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location("train_irib_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
