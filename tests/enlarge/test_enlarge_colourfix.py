"""Colour fix parity with SUPIR's colorfix.py (wavelet and AdaIN), on a non-square batch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dreamy.enlarging.colourfix import colour_fix, wavelet_split

from .supir_synthetic import FIXTURES


@pytest.fixture(scope="module")
def oracle() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "small.safetensors"))


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_matches_official(method, oracle):
    out = colour_fix(oracle["colour.content"], oracle["colour.style"], method)
    torch.testing.assert_close(out, oracle[f"colour.{method}"], rtol=0, atol=1e-6)


def test_none_returns_the_image(oracle):
    assert colour_fix(oracle["colour.content"], oracle["colour.style"], "none") is oracle["colour.content"]


def test_wavelet_detail_and_coarse_add_up():
    image = torch.rand(1, 3, 33, 20)
    detail, coarse = wavelet_split(image)
    torch.testing.assert_close(detail + coarse, image, rtol=0, atol=1e-5)


def test_refusals():
    with pytest.raises(ValueError, match="differ in shape"):
        colour_fix(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 4))
    with pytest.raises(ValueError, match="unknown colour fix"):
        colour_fix(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), "histogram")
