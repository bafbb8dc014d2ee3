"""diffusers' "should be kept in float32: []" warning is silenced, and only with the empty list."""

import logging

import pytest
import torch

import diffusers_irib  # noqa: F401  (importing the package installs the filter)
from diffusers_irib.logging_utils import DIFFUSERS_MODELING_LOGGER
from diffusers_irib.tiny import make_tiny_pipeline, make_tiny_unet


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def records():
    logger = logging.getLogger(DIFFUSERS_MODELING_LOGGER)
    handler = Records()
    logger.addHandler(handler)  # sees what passes the logger's filters, as diffusers' own handler does
    yield handler.messages
    logger.removeHandler(handler)


def test_a_dtype_cast_of_a_model_with_nothing_to_keep_in_float32_is_quiet(records):
    unet = make_tiny_unet()
    assert unet._keep_in_fp32_modules in (None, [])  # diffusers 0.42 warns for [] too
    unet.to(torch.bfloat16)
    pipe = make_tiny_pipeline(with_adapter_sets=True)
    pipe.to("cpu", torch.bfloat16)  # what irib-demo --tiny --dtype bf16 does
    assert not [m for m in records if "float32" in m]


def test_the_warning_still_shows_when_a_model_does_keep_modules_in_float32(records):
    unet = make_tiny_unet()
    unet._keep_in_fp32_modules = ["conv_in"]
    unet.to(torch.bfloat16)
    assert any("should be kept in float32: ['conv_in']" in m for m in records)
