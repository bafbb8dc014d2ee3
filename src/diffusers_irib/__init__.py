"""diffusers-irib: extreme blind image restoration with a prompt-conditioned information bottleneck.

Data flow: ELQ image -> projector (one-step SD, LoRA set) -> LQ proxy -> restorer -> HQ.
"""

__version__ = "0.1.0.dev0"

from .degradations import (
    DegradationConfig,
    DegradationParams,
    RealESRGANDegradation,
    degrade_pair,
)
from .pipeline_irib import IRIBRestorationPipeline, IRIBRestorationPipelineOutput
from .prompts import (
    CaptionPrompt,
    CLIPTagger,
    EmptyPrompt,
    FixedPrompt,
    PromptExtractor,
    RAMTagger,
)

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
