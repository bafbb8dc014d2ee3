"""Kept so ``diffusers_irib.model_card`` imports keep working: the cards live in :mod:`.adapters.model_card`."""

from .adapters.model_card import (
    DEFAULT_LICENSE,
    LOCAL_BASE_MODEL_PLACEHOLDER,
    LOCAL_BASE_MODEL_TEXT,
    adapter_set_model_card,
    model_card_template,
)

__all__ = [
    "DEFAULT_LICENSE",
    "LOCAL_BASE_MODEL_PLACEHOLDER",
    "LOCAL_BASE_MODEL_TEXT",
    "adapter_set_model_card",
    "model_card_template",
]
