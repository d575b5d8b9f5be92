"""SUPIR's restoration sampler (sgm ``RestoreEDMSampler``), written out as one loop.

Per step: churn noise raises sigma to sigma_hat; the model runs at sigma_hat quantised to the DDPM grid
(with classifier-free guidance whose weight ramps linearly in sigma_hat); optional restoration guidance
pulls the prediction towards the stage-1 latent; an Euler step goes to the next sigma. diffusers'
``EulerDiscreteScheduler(s_churn=...)`` is not the same algorithm (it churns after the model call and
scales the input by the unchurned sigma), hence this loop.

Arithmetic is written in the same order as sgm so that fp32 runs match the official sampler to
rounding; the noise comes from an explicit ``torch.Generator`` so that a seed reproduces a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .schedule import SIGMA_MAX, linear_cfg_scale, quantize_sigma, sampling_sigmas


@dataclass(frozen=True)
class SamplerSettings:
    """SUPIR's sampling knobs under their official meaning (gradio names in brackets).

    ``cfg_scale`` [s_cfg] is reached as sigma -> 0, starting from ``cfg_scale_start``
    [spt_linear_CFG] at the largest sigma when ``linear_cfg`` is on. ``restoration_scale``
    [s_stage1] <= 0 turns restoration guidance off (it does not mean "automatic").
    ``control_scale`` [s_stage2] weights the connectors; with ``control_scale_start``
    [spt_linear_s_stage2] set, it ramps linearly from that value at the largest sigma.
    """

    steps: int = 30
    cfg_scale: float = 3.0
    cfg_scale_start: float = 4.0
    linear_cfg: bool = True
    churn: float = 5.0
    noise_scale: float = 1.003
    restoration_scale: float = -1.0
    restoration_sigma_min: float = 0.05
    control_scale: float = 0.9
    control_scale_start: float | None = None

    @property
    def gamma(self) -> float:
        """Churn per step; sgm applies it at every step (s_tmin 0, s_tmax inf)."""
        return min(self.churn / self.steps, 2**0.5 - 1)

    def control_scale_at(self, sigma: float) -> float:
        if self.control_scale_start is None:
            return self.control_scale
        return (sigma / SIGMA_MAX) * (self.control_scale_start - self.control_scale) + self.control_scale

    def cfg_at(self, sigma_hat: torch.Tensor) -> torch.Tensor:
        start = self.cfg_scale_start if self.linear_cfg else self.cfg_scale
        return linear_cfg_scale(sigma_hat, start, self.cfg_scale)


class GuidedEpsilon(Protocol):
    """The model: epsilon (uncond, cond) for c_in-scaled latents at integer timesteps."""

    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, hint: torch.Tensor, control_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def draw_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device.

    A CPU draw goes to a GPU through pinned memory without blocking: a plain copy would wait for
    all queued GPU work, and the GPU would then idle while the next step is launched.
    """
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    if noise.device.type == "cpu" and like.device.type == "cuda":
        return noise.pin_memory().to(like.device, non_blocking=True)
    return noise.to(like.device)


def restore_step(
    model: GuidedEpsilon,
    x: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    settings: SamplerSettings,
    hint: torch.Tensor,
    noise: torch.Tensor | None,
    x_center: torch.Tensor | None,
    host_sigmas: tuple[float, float] | None = None,
) -> torch.Tensor:
    """One churn + guided Euler step for a batch ``x`` (images or tiles); sigmas have shape (batch,).

    ``host_sigmas`` (this step's sigma and the next as Python floats, the same float32 values) lets
    the step decide the control scale and restoration guidance without reading the GPU back.
    """
    if host_sigmas is None:
        host_sigmas = (sigma[0].item(), next_sigma[0].item())
    gamma = settings.gamma
    sigma_hat = sigma * (gamma + 1.0)
    if gamma > 0:
        x = x + (noise * settings.noise_scale) * _dims(sigma_hat**2 - sigma**2) ** 0.5
    control_scale = settings.control_scale_at(host_sigmas[0])

    timestep, sigma_q = quantize_sigma(sigma_hat)
    c_in = 1 / (_dims(sigma_q) ** 2 + 1.0) ** 0.5
    eps_uncond, eps_cond = model(x * c_in, timestep, hint, control_scale)
    d_uncond = eps_uncond * -_dims(sigma_q) + x
    d_cond = eps_cond * -_dims(sigma_q) + x
    denoised = d_uncond + _dims(settings.cfg_at(sigma_hat)) * (d_cond - d_uncond)

    # compared in float32, as sgm compares its float32 sigma tensor with the Python threshold
    if host_sigmas[1] > np.float32(settings.restoration_sigma_min) and settings.restoration_scale > 0:
        if x_center is None:
            raise ValueError("restoration guidance needs x_center (the stage-1 latent)")
        denoised = denoised - (denoised - x_center) * ((_dims(sigma) / SIGMA_MAX) ** settings.restoration_scale)

    derivative = (x - denoised) / _dims(sigma_hat)
    return x + _dims(next_sigma - sigma_hat) * derivative


def restore_sample(
    model: GuidedEpsilon,
    hint: torch.Tensor,
    settings: SamplerSettings,
    generator: torch.Generator,
    x_center: torch.Tensor | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sample a latent shaped like ``hint`` (the stage-1 latent). Returns float32.

    Draws, in order: the initial noise, then one noise tensor per step when churn is on.
    ``on_step(done, total, x)`` runs after each step (progress, previews, cancellation by raising).
    """
    sigmas = sampling_sigmas(settings.steps, hint.device)
    host = sampling_sigmas(settings.steps).tolist()
    x = draw_noise(hint, generator)
    x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    ones = x.new_ones([x.shape[0]])
    for i in range(settings.steps):
        noise = draw_noise(x, generator) if settings.gamma > 0 else None
        x = restore_step(model, x, ones * sigmas[i], ones * sigmas[i + 1], settings, hint, noise, x_center,
                         (host[i], host[i + 1]))
        if on_step is not None:
            on_step(i + 1, settings.steps, x)
    return x


def _dims(t: torch.Tensor) -> torch.Tensor:
    """(batch,) -> (batch, 1, 1, 1), to broadcast per-sample sigmas over latents."""
    return t.view(-1, 1, 1, 1)
