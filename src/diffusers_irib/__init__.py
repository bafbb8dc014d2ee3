"""diffusers-irib: extreme blind image restoration with a prompt-conditioned information bottleneck.

Data flow: ELQ image -> projector (one-step SD, LoRA set) -> LQ proxy -> restorer -> HQ.

The public names are imported on first use (as diffusers does), so ``import diffusers_irib`` and the
command lines' ``--help`` do not pay for torch, diffusers and transformers up front.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import logging_utils as _logging_utils  # the standard library's logging only: no torch

__version__ = "0.1.0.dev0"

_logging_utils.silence_empty_float32_warning()  # diffusers' "should be kept in float32: []" on every cast

#: public name -> the submodule that defines it
_LAZY_IMPORTS = {
    "DegradationConfig": ".degradations",
    "DegradationParams": ".degradations",
    "RealESRGANDegradation": ".degradations",
    "degrade_pair": ".degradations",
    "IRIBRestorationPipeline": ".pipeline_irib",
    "IRIBRestorationPipelineOutput": ".pipeline_irib",
    "CaptionPrompt": ".prompts",
    "CLIPTagger": ".prompts",
    "EmptyPrompt": ".prompts",
    "FixedPrompt": ".prompts",
    "PromptExtractor": ".prompts",
    "RAMTagger": ".prompts",
}

__all__ = [
    "CLIPTagger",
    "CaptionPrompt",
    "DegradationConfig",
    "DegradationParams",
    "EmptyPrompt",
    "FixedPrompt",
    "IRIBRestorationPipeline",
    "IRIBRestorationPipelineOutput",
    "PromptExtractor",
    "RAMTagger",
    "RealESRGANDegradation",
    "__version__",
    "degrade_pair",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_IMPORTS:
        value = getattr(importlib.import_module(_LAZY_IMPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_IMPORTS})


if TYPE_CHECKING:  # static type checkers and IDEs see the real imports
    from .degradations import DegradationConfig, DegradationParams, RealESRGANDegradation, degrade_pair
    from .pipeline_irib import IRIBRestorationPipeline, IRIBRestorationPipelineOutput
    from .prompts import CaptionPrompt, CLIPTagger, EmptyPrompt, FixedPrompt, PromptExtractor, RAMTagger
