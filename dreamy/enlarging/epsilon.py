"""The model as the sampler sees it: GLVControl + hooked UNet, uncond and cond in one batch."""

from __future__ import annotations

import torch

from .conditioning import TextConditioning
from .control import GLVControl
from .unet import SupirUNet


def _batch(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat per-image conditioning over ``n`` rows (images, or tiles x images, tile-major)."""
    if t.shape[0] == n:
        return t
    if n % t.shape[0]:
        raise ValueError(f"conditioning batch {t.shape[0]} does not divide latent batch {n}")
    return t.repeat(n // t.shape[0], *([1] * (t.ndim - 1)))


class SupirEpsilon:
    """Callable ``(sample, timestep, hint, control_scale) -> (eps_uncond, eps_cond)`` in float32.

    Both halves run as one batch ``[uncond, cond]`` through GLVControl and the UNet, as SUPIR's
    ``ControlWrapper`` does; the stage-1 latent ``hint`` goes to both halves.
    """

    def __init__(
        self, control: GLVControl, unet: SupirUNet, cond: TextConditioning, uncond: TextConditioning
    ) -> None:
        self.control = control
        self.unet = unet
        self.cond = cond
        self.uncond = uncond

    @torch.no_grad()
    def __call__(
        self, sample: torch.Tensor, timestep: torch.Tensor, hint: torch.Tensor, control_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = sample.shape[0]
        context = torch.cat([_batch(self.uncond.context, n), _batch(self.cond.context, n)])
        vector = torch.cat([_batch(self.uncond.vector, n), _batch(self.cond.vector, n)])
        x = torch.cat([sample, sample])
        t = torch.cat([timestep, timestep])
        control = self.control(torch.cat([hint, hint]), x, t, context, vector)
        eps = self.unet(x, t, context, vector, control, control_scale).float()
        return eps[:n], eps[n:]
