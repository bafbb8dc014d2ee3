"""diffusers-irib: extreme blind image restoration with a prompt-conditioned information bottleneck.

Data flow: ELQ image -> projector (one-step SD, LoRA set) -> LQ proxy -> restorer -> HQ.
"""

__version__ = "0.1.0.dev0"

from .degradations import DegradationConfig, DegradationParams, RealESRGANDegradation, degrade_pair

__all__ = ["DegradationConfig", "DegradationParams", "RealESRGANDegradation", "degrade_pair", "__version__"]
