"""The Dream op sequence that the fast path captures: stock's loop, written without host syncs.

Every tensor operation is the one stock ``StableDiffusionPipeline`` performs, on the same operands
in the same order, so replaying a capture of it gives stock's bits. Two things differ, and neither
changes a value:
- The scheduler is stepped with the timestep as a Python int. Stock passes the CUDA timestep, and
  DDIM then reads it back to index its CPU ``alphas_cumprod`` (a host sync each step); with the int
  it indexes the very same CPU scalars with no sync, and the device kernels get the same operands.
- The uint8 conversion runs on the GPU: stock's numpy ``(x * 255).round().astype(uint8)`` on
  float32 is IEEE multiply + round-half-even + exact cast, which the GPU computes identically.

Inputs live in static buffers (``noise``, ``cond``, ``uncond``) so a capture can be replayed with
new seeds and prompts. On the CPU the same program runs eagerly, which is how tests check it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...models.sources import SDModel
from ...recipes.recipe import Recipe
from ...recipes.samplers import make_scheduler

UNetFn = Callable[..., torch.Tensor]
DecodeFn = Callable[[torch.Tensor], torch.Tensor]


def latent_shape(model: SDModel, n: int, width: int, height: int) -> tuple[int, int, int, int]:
    scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    return (n, model.unet.config.in_channels, height // scale, width // scale)


class DreamProgram:
    """n seeds' noise + prompt embeddings in static buffers -> final latents -> uint8 images."""

    def __init__(self, model: SDModel, recipe: Recipe, n: int, embed_shape: tuple[int, ...]) -> None:
        s = recipe.settings
        self.model, self.recipe, self.n = model, recipe, n
        self.cfg = s.guidance > 1.0  # as stock: guidance <= 1 means a single conditional pass
        self.guidance = s.guidance
        kw = {"device": model.device, "dtype": model.dtype}
        self.noise = torch.zeros(latent_shape(model, n, s.width, s.height), **kw)
        self.cond = torch.zeros(embed_shape, **kw)
        self.uncond = torch.zeros(embed_shape, **kw)

    def load(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        self.noise.copy_(noise)
        self.cond.copy_(cond)
        self.uncond.copy_(uncond)

    def scheduler(self) -> tuple[object, list[int]]:
        """A fresh scheduler and its timesteps as ints. Made before a capture: ``set_timesteps``
        copies host->device and reading the timesteps back syncs, neither allowed while capturing."""
        s = self.recipe.settings
        sched = make_scheduler(s.sampler, s.scheduler)
        sched.set_timesteps(s.steps, device=self.model.device)
        return sched, [int(v) for v in sched.timesteps.cpu()]

    def context(self) -> torch.Tensor:
        """Stock's prompt_embeds: each embedding repeated per image, then [uncond, cond]."""
        def rep(e: torch.Tensor) -> torch.Tensor:
            return e.repeat(1, self.n, 1).view(e.shape[0] * self.n, e.shape[1], -1)

        return torch.cat([rep(self.uncond), rep(self.cond)]) if self.cfg else rep(self.cond)

    @torch.no_grad()
    def denoise(self, unet: UNetFn, prepared: tuple[object, list[int]] | None = None,
                max_steps: int | None = None) -> torch.Tensor:
        sched, host_steps = prepared or self.scheduler()
        timesteps = sched.timesteps
        ctx = self.context()
        latents = self.noise * sched.init_noise_sigma
        for i, t_int in enumerate(host_steps[:max_steps]):
            t = timesteps[i]  # the 0-d device tensor stock hands the UNet
            x = torch.cat([latents] * 2) if self.cfg else latents
            x = sched.scale_model_input(x, t)
            eps = unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
            if self.cfg:
                e_uncond, e_cond = eps.chunk(2)
                eps = e_uncond + self.guidance * (e_cond - e_uncond)
            latents = sched.step(eps, t_int, latents, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def decode(self, vae_decode: DecodeFn, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images NHWC, a 0-d bool: was the fp16 decode finite) - no host sync."""
        images = vae_decode(latents / self.model.vae.config.scaling_factor)
        finite = torch.isfinite(images).all()
        images = (images * 0.5 + 0.5).clamp(0, 1)  # stock's VaeImageProcessor.denormalize
        u8 = (images.permute(0, 2, 3, 1).float() * 255).round().to(torch.uint8)
        return u8, finite


def eager_decode(model: SDModel) -> DecodeFn:
    vae = model.vae
    return lambda z: vae.decode(z, return_dict=False)[0]
