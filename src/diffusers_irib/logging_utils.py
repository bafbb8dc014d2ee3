"""Quieting one meaningless diffusers warning, and nothing else.

diffusers 0.42's ``ModelMixin.to`` warns "There are modules in <Model> that should be kept in float32:
[]. Casting directly with `to()` ..." on every dtype cast of every model, also when the list is empty
(the check is ``is not None``), so each load or ``pipe.to(dtype=...)`` printed it twice (UNet, VAE)
with nothing to act on. The filter drops exactly that record, with the empty list; the same warning
for a model that does keep modules in float32 still shows.
"""

from __future__ import annotations

import logging

#: The diffusers logger that emits the warning (``diffusers.utils.logging.get_logger(__name__)``).
DIFFUSERS_MODELING_LOGGER = "diffusers.models.modeling_utils"


class EmptyFloat32ListFilter(logging.Filter):
    """Drops diffusers' "should be kept in float32: []" warning when the list is empty."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("There are modules in ") and "should be kept in float32: []." in message)


_FILTER = EmptyFloat32ListFilter()


def silence_empty_float32_warning() -> None:
    """Install the filter on diffusers' modeling logger (idempotent; diffusers need not be imported yet)."""
    logger = logging.getLogger(DIFFUSERS_MODELING_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
