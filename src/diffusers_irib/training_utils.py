"""Kept so ``diffusers_irib.training_utils`` imports keep working: the objective lives in :mod:`.objective`."""

from .objective import (
    MODE_DEFAULT_WEIGHTS,
    MODES,
    OSEDIFF_NEGATIVE_PROMPT,
    PROMPT_DROPOUT_SCOPES,
    PROMPT_SOURCES,
    TRAINED_ROLE,
    IRIBBatch,
    IRIBLossConfig,
    IRIBObjective,
    IRIBStepLosses,
    IRIBTrainingStep,
)

__all__ = [
    "IRIBBatch",
    "IRIBLossConfig",
    "IRIBObjective",
    "IRIBStepLosses",
    "IRIBTrainingStep",
    "MODES",
    "MODE_DEFAULT_WEIGHTS",
    "OSEDIFF_NEGATIVE_PROMPT",
    "PROMPT_DROPOUT_SCOPES",
    "PROMPT_SOURCES",
    "TRAINED_ROLE",
]
