"""Real-ESRGAN degradations: LQ and extreme (ELQ) presets, replayable and differentiable."""

from .config import KERNEL_TYPES, RESIZE_MODES, DegradationConfig
from .jpeg import differentiable_jpeg, jpeg_quality_to_tables
from .kernels import (
    anisotropic_gaussian_kernel,
    circular_lowpass_kernel,
    generalized_gaussian_kernel,
    isotropic_gaussian_kernel,
    plateau_kernel,
    random_mixed_kernels,
    sample_beta,
)
from .ops import add_noise, filter2d, quantize_8bit, resize
from .params import DegradationParams, FinalParams, StageParams
from .pipeline import DegradedPair, RealESRGANDegradation, degrade_pair

__all__ = [
    "KERNEL_TYPES",
    "RESIZE_MODES",
    "DegradationConfig",
    "DegradationParams",
    "DegradedPair",
    "FinalParams",
    "RealESRGANDegradation",
    "StageParams",
    "add_noise",
    "anisotropic_gaussian_kernel",
    "circular_lowpass_kernel",
    "degrade_pair",
    "differentiable_jpeg",
    "filter2d",
    "generalized_gaussian_kernel",
    "isotropic_gaussian_kernel",
    "jpeg_quality_to_tables",
    "plateau_kernel",
    "quantize_8bit",
    "random_mixed_kernels",
    "resize",
    "sample_beta",
]
