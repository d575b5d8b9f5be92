"""Tiled sampling (sgm ``TiledRestoreEDMSampler``): bounded memory for large latents.

Every step draws one full-size noise tensor, runs a complete ``restore_step`` on each overlapping
tile (with its slices of the noise, of the stage-1 latent and of the restoration target), and blends
the results with fixed Gaussian weights. Tiles of a step are independent, so they run in batches.
Defaults are SUPIR's: 128-latent tiles (1024 px) every 64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .sampler import GuidedEpsilon, SamplerSettings, draw_noise, restore_step
from .schedule import sampling_sigmas

TILE_SIZE = 128
TILE_STRIDE = 64

Window = tuple[int, int, int, int]  # top, bottom, left, right


def sliding_windows(height: int, width: int, tile: int, stride: int) -> list[Window]:
    """Tile positions, row-major; a last tile flush with the edge is added when the stride leaves a gap.

    Where the latent is smaller than a tile, the tile shrinks to the latent (SUPIR would fail there).
    """
    if stride <= 0 or tile <= 0:
        raise ValueError("tile size and stride must be positive")

    def starts(size: int) -> list[int]:
        size_tile = min(tile, size)
        out = list(range(0, size - size_tile + 1, stride))
        if (size - size_tile) % stride:
            out.append(size - size_tile)
        return out

    th, tw = min(tile, height), min(tile, width)
    return [(top, top + th, left, left + tw) for top in starts(height) for left in starts(width)]


def gaussian_weights(height: int, width: int) -> torch.Tensor:
    """SUPIR's blending weights, float64, shape (height, width).

    Variance 0.01 of the tile size; the x centre is (width - 1) / 2 but the y centre is height / 2,
    as in the reference, which makes the weights very slightly asymmetric in y.
    """
    var = 0.01

    def profile(size: int, mid: float) -> list[float]:
        return [math.exp(-(i - mid) * (i - mid) / (size * size) / (2 * var)) / math.sqrt(2 * math.pi * var) for i in range(size)]

    ys = torch.tensor(profile(height, height / 2), dtype=torch.float64)
    xs = torch.tensor(profile(width, (width - 1) / 2), dtype=torch.float64)
    return torch.outer(ys, xs)


def _tiles(t: torch.Tensor, windows: list[Window]) -> torch.Tensor:
    """Stack the windows of ``t`` (B, C, H, W) tile-major: (len(windows) * B, C, h, w)."""
    return torch.cat([t[:, :, top:bottom, left:right] for top, bottom, left, right in windows])


def restore_sample_tiled(
    model: GuidedEpsilon,
    hint: torch.Tensor,
    settings: SamplerSettings,
    generator: torch.Generator,
    x_center: torch.Tensor | None = None,
    tile: int = TILE_SIZE,
    stride: int = TILE_STRIDE,
    tiles_per_batch: int = 4,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Like ``restore_sample`` but tile by tile. Draws the initial noise, then one tensor per step."""
    b, _, height, width = hint.shape
    windows = sliding_windows(height, width, tile, stride)
    th, tw = windows[0][1] - windows[0][0], windows[0][3] - windows[0][2]
    weights = gaussian_weights(th, tw).to(hint.device)
    sigmas = sampling_sigmas(settings.steps, hint.device)
    host = sampling_sigmas(settings.steps).tolist()
    x = draw_noise(hint, generator)
    x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    for i in range(settings.steps):
        noise = draw_noise(x, generator)  # drawn even without churn, as the reference does
        blended = torch.zeros_like(x)
        total = torch.zeros_like(x)
        for start in range(0, len(windows), tiles_per_batch):
            group = windows[start : start + tiles_per_batch]
            ones = x.new_ones([len(group) * b])
            out = restore_step(
                model,
                _tiles(x, group),
                ones * sigmas[i],
                ones * sigmas[i + 1],
                settings,
                _tiles(hint, group),
                _tiles(noise, group),
                None if x_center is None else _tiles(x_center, group),
                (host[i], host[i + 1]),
            )
            for k, (top, bottom, left, right) in enumerate(group):
                # float64 weights, accumulated into float32, exactly as the reference does it
                blended[:, :, top:bottom, left:right] += out[k * b : (k + 1) * b] * weights
                total[:, :, top:bottom, left:right] += weights
        x = blended / total
        if on_step is not None:
            on_step(i + 1, settings.steps, x)
    return x
