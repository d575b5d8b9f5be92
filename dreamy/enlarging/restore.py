"""One SUPIR restoration, from the upscaled picture to the colour-fixed result (SUPIR's ``batchify_sample``).

Order of work, as in the reference: stage-1 latent and its decoded reference (and, for restoration
guidance, the re-encoded center); sampling from fresh noise; decoding; colour fix against the
reference. Resizing the input (SUPIR: Lanczos to the target size, sides multiple of 32) happens
before this; clipping and conversion to 8 bit after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL

from .colourfix import ColourFix, colour_fix
from .conditioning import TextConditioning
from .epsilon import SupirEpsilon
from .model import SupirModules
from .sampler import SamplerSettings, restore_sample
from .stage1 import decode_latent, run_stage1
from .tiled_sampler import TILE_SIZE, TILE_STRIDE, restore_sample_tiled
from .tiled_vae import VaeTiling


@dataclass(frozen=True)
class SamplingTiles:
    """Tiled sampling (latent units): SUPIR's 128/64 by default; tiles of a step run in batches."""

    size: int = TILE_SIZE
    stride: int = TILE_STRIDE
    per_batch: int = 4


@dataclass(frozen=True)
class RestoreSettings:
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    colour_fix: ColourFix = "wavelet"
    sampling_tiles: SamplingTiles | None = None
    vae_tiles: VaeTiling | None = None


@torch.no_grad()
def restore(
    image: torch.Tensor,
    supir: SupirModules,
    vae: AutoencoderKL,
    cond: TextConditioning,
    uncond: TextConditioning,
    settings: RestoreSettings,
    generator: torch.Generator,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Restore ``image`` (B, 3, H, W) in [-1, 1], already at the output size; returns float32, unclipped.

    ``generator`` draws, in order: the restoration target's posterior sample (only when restoration
    guidance is on), the initial noise, then the per-step noise.
    """
    if supir.denoise_encoder is None:
        raise ValueError("restore needs the SUPIR denoise encoder (assemble_supir with the VAE)")
    guided = settings.sampler.restoration_scale > 0
    stage1 = run_stage1(image, supir.denoise_encoder, vae, generator, with_center=guided, tiled=settings.vae_tiles)
    model = SupirEpsilon(supir.control, supir.unet, cond, uncond)
    tiles = settings.sampling_tiles
    if tiles is None:
        latent = restore_sample(model, stage1.latent, settings.sampler, generator, stage1.center, on_step)
    else:
        latent = restore_sample_tiled(
            model, stage1.latent, settings.sampler, generator, stage1.center, tiles.size, tiles.stride, tiles.per_batch, on_step
        )
    result = decode_latent(vae, latent, settings.vae_tiles)
    return colour_fix(result, stage1.reference, settings.colour_fix)
