"""Colour correction of the enlarged image against the stage-1 reconstruction, as SUPIR applies it.

Both methods take images in [-1, 1] before any clipping; the reference is the decoded stage-1 latent,
not the raw upscaled input.

- wavelet: keep the result's detail (image minus a 5-level a-trous blur) and take the coarse part
  from the reference. The blur is a 3x3 [1 2 1] binomial kernel dilated by 1, 2, 4, 8, 16 with
  replicate padding.
- adain: match each channel's mean and (unbiased) standard deviation to the reference.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ColourFix = Literal["wavelet", "adain", "none"]
WAVELET_LEVELS = 5
_EPS = 1e-5


def _blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    channels = image.shape[1]
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device) / 4
    kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3)
    padded = F.pad(image, (dilation, dilation, dilation, dilation), mode="replicate")
    return F.conv2d(padded, kernel, groups=channels, dilation=dilation)


def wavelet_split(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(detail, coarse) with ``detail + coarse == image`` up to rounding.

    The detail is accumulated level by level, as the reference implementation does, so results
    match it to the last bit rather than to rounding.
    """
    detail = torch.zeros_like(image)
    coarse = image
    for level in range(levels):
        blurred = _blur(coarse, 2**level)
        detail += coarse - blurred
        coarse = blurred
    return detail, coarse


def wavelet_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    detail, _ = wavelet_split(image)
    _, coarse = wavelet_split(reference)
    return detail + coarse


def _mean_std(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = image.shape[:2]
    flat = image.reshape(b, c, -1)
    std = (flat.var(dim=2) + _EPS).sqrt().reshape(b, c, 1, 1)
    return flat.mean(dim=2).reshape(b, c, 1, 1), std


def adain_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    ref_mean, ref_std = _mean_std(reference)
    mean, std = _mean_std(image)
    return (image - mean) / std * ref_std + ref_mean


def colour_fix(image: torch.Tensor, reference: torch.Tensor, method: ColourFix = "wavelet") -> torch.Tensor:
    """Apply SUPIR's colour fix ``method`` to ``image`` (B, C, H, W) against ``reference`` of the same shape."""
    if image.shape != reference.shape:
        raise ValueError(f"image {tuple(image.shape)} and reference {tuple(reference.shape)} differ in shape")
    if method == "wavelet":
        return wavelet_fix(image, reference)
    if method == "adain":
        return adain_fix(image, reference)
    if method == "none":
        return image
    raise ValueError(f"unknown colour fix {method!r}; use 'wavelet', 'adain' or 'none'")
