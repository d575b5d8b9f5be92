"""SUPIR's noise levels: SDXL's 1000-step DDPM grid, the sampler's sigma list, and the CFG ramp.

Values are computed the way sgm computes them (float64 betas and cumulative products, the ratio
rounded to float32 before the square root) so that every sigma, and therefore every quantised
timestep, is bit-identical to the official sampler's.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

DDPM_STEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
# The constant the official sampler divides by for the CFG ramp, restoration guidance and the linear
# control scale. It is the rounded largest sigma, not the exact one (14.614641...).
SIGMA_MAX = 14.6146


@lru_cache(maxsize=1)
def _alphas_cumprod() -> np.ndarray:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, DDPM_STEPS, dtype=torch.float64) ** 2
    return np.cumprod(1.0 - betas.numpy(), axis=0)


def _sigmas_at(alphas_cumprod: np.ndarray) -> torch.Tensor:
    return torch.tensor((1 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32) ** 0.5


@lru_cache(maxsize=1)
def _ddpm_sigmas() -> torch.Tensor:
    return _sigmas_at(_alphas_cumprod())


def ddpm_sigmas(device: torch.device | str = "cpu") -> torch.Tensor:
    """Sigma of every DDPM timestep 0..999, ascending (float32); one copy per device is kept, since a
    copy to a GPU waits for it (a host sync on every sampler step otherwise)."""
    return _ddpm_sigmas_on(str(torch.device(device)))


@lru_cache(maxsize=8)
def _ddpm_sigmas_on(device: str) -> torch.Tensor:
    return _ddpm_sigmas().to(device)


def sampling_timesteps(steps: int) -> np.ndarray:
    """The DDPM timesteps the sampler visits, descending: 999, 965, ... for 30 steps."""
    if not 1 <= steps < DDPM_STEPS:
        raise ValueError(f"steps must be between 1 and {DDPM_STEPS - 1}, got {steps}")
    return np.linspace(DDPM_STEPS - 1, 0, steps, endpoint=False).astype(int)


def sampling_sigmas(steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``steps + 1`` sigmas, descending, ending in 0 (sgm ``LegacyDDPMDiscretization``)."""
    sigmas = _sigmas_at(_alphas_cumprod()[sampling_timesteps(steps)])
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)


def quantize_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest DDPM timestep to each sigma and its grid sigma (what the UNet is actually run at)."""
    grid = ddpm_sigmas(sigma.device)
    index = (sigma - grid[:, None]).abs().argmin(dim=0).view(sigma.shape)
    return index, grid[index]


def linear_cfg_scale(sigma: torch.Tensor, start: float, end: float) -> torch.Tensor:
    """sgm ``LinearCFG``: ``start`` at ``SIGMA_MAX``, falling (or rising) linearly to ``end`` at sigma 0."""
    return (start - end) * sigma / SIGMA_MAX + end
