"""The low-quality input as SUPIR's demo prepares it, and the result back to 8 bits.

SUPIR's ``gradio_demo.py`` multiplies both sides by the upscale factor, raises the short side to
1024 if it is shorter (SDXL's native size), rounds each side to a multiple of 32 (``np.round``:
half to even) and resizes the uint8 picture with OpenCV: Lanczos-4 when the factor is above 1,
area interpolation otherwise. PIL's Lanczos is a different filter (3 lobes, antialiased), so OpenCV
is used when installed; without it PIL stands in and the recipe says so.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

UNIT = 32  # pixels: the latent must divide by the UNet's two downsamplings (8 * 4)
MIN_SIDE = 1024  # SUPIR's minimum short side of the output


def target_size(width: int, height: int, scale: float, min_side: int = MIN_SIDE, unit: int = UNIT) -> tuple[int, int]:
    """(width, height) of the output for an input of ``width`` x ``height``, as SUPIR computes it."""
    w, h = float(width) * scale, float(height) * scale
    if min(w, h) < min_side:
        factor = min_side / min(w, h)
        w, h = w * factor, h * factor
    # Python's round is half-to-even on floats, like np.round
    return max(unit, round(w / unit) * unit), max(unit, round(h / unit) * unit)


def resize_method() -> str:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return "PIL Lanczos (OpenCV not installed: not SUPIR's exact filter)"
    return "OpenCV Lanczos-4 (as SUPIR)"


def upscale(image: Image.Image, size: tuple[int, int], scale: float) -> Image.Image:
    """``image`` (8-bit RGB) resized to ``size``; the filter is chosen by ``scale`` as in SUPIR."""
    if image.size == size:
        return image.copy()
    try:
        import cv2
    except ImportError:
        return image.resize(size, Image.Resampling.LANCZOS if scale > 1 else Image.Resampling.BOX)
    flag = cv2.INTER_LANCZOS4 if scale > 1 else cv2.INTER_AREA
    return Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=flag))


def to_model_input(image: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (1, 3, H, W) float32 in [-1, 1], computed in float64 first as the demo does."""
    arr = np.asarray(image, dtype=np.uint8).astype(np.float64) / 255 * 2 - 1
    return torch.from_numpy(arr).float().permute(2, 0, 1).unsqueeze(0).contiguous()


def to_image(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] (unclipped) -> 8-bit RGB, rounded half to even like the demo."""
    arr = (x[0].float().permute(1, 2, 0) * 127.5 + 127.5).cpu().numpy()
    return Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))
