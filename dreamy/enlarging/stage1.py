"""Stage 1: SUPIR's degradation-robust encoder, and the latents and reference image it yields.

SUPIR replaces nothing in the base VAE: it adds a second encoder (``denoise_encoder``, same
architecture, own weights) and reuses the base VAE's ``quant_conv`` after it. The latent is the
posterior mean, scaled by the VAE's scaling factor (0.13025 for SDXL). From it:

- ``latent`` drives the control model (the "hint"), for both CFG halves;
- ``reference`` (the base VAE decode of it) is what the colour fix matches;
- ``center`` (the base VAE re-encoding of the reference, a posterior sample) is the target of
  restoration guidance, so it is only computed when guidance is on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from .checkpoint import load_exact
from .tiled_vae import VaeTiling, tiled_forward


class DenoiseEncoder(nn.Module):
    """``quant_conv(encoder(image))`` -> scaled posterior mean; ``quant_conv`` is the base VAE's own."""

    def __init__(self, encoder: nn.Module, quant_conv: nn.Module | None, scaling_factor: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.quant_conv = quant_conv
        self.scaling_factor = scaling_factor

    @classmethod
    def from_vae(
        cls, vae: AutoencoderKL, weights: Mapping[str, torch.Tensor], official: Mapping[str, str] | None = None
    ) -> DenoiseEncoder:
        """A copy of ``vae.encoder``'s architecture with SUPIR's weights (diffusers names)."""
        encoder = copy.deepcopy(vae.encoder).to("meta")
        expected = encoder.state_dict()
        # LDM files store the mid attention's projections as 1x1 convolutions; diffusers uses Linear.
        weights = {
            k: v[:, :, 0, 0] if v.ndim == 4 and k in expected and expected[k].ndim == 2 else v
            for k, v in weights.items()
        }
        load_exact(encoder, weights, "SUPIR denoise encoder", official)
        encoder.to(dtype=vae.dtype)
        return cls(encoder, vae.quant_conv, vae.config.scaling_factor)

    def forward(self, image: torch.Tensor, tiled: VaeTiling | None = None) -> torch.Tensor:
        mean = DiagonalGaussianDistribution(_moments(self.encoder, self.quant_conv, image, tiled)).mean
        return self.scaling_factor * mean


def _moments(
    encoder: nn.Module, quant_conv: nn.Module | None, image: torch.Tensor, tiled: VaeTiling | None
) -> torch.Tensor:
    dtype = next(encoder.parameters()).dtype
    image = image.to(dtype)
    if tiled is None:
        moments = encoder(image)
    else:
        moments = tiled_forward(encoder, image, False, tiled.encoder_tile, storage=tiled.storage).to(dtype)
    return moments if quant_conv is None else quant_conv(moments)


@torch.no_grad()
def decode_latent(vae: AutoencoderKL, latent: torch.Tensor, tiled: VaeTiling | None = None) -> torch.Tensor:
    """Scaled latent -> image in [-1, 1] (float32, unclipped), optionally with the tiled decoder."""
    z = latent.to(vae.dtype) / vae.config.scaling_factor
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    if tiled is None:
        return vae.decoder(z).float()
    return tiled_forward(vae.decoder, z, True, tiled.decoder_tile, storage=tiled.storage)


@dataclass
class Stage1:
    latent: torch.Tensor
    reference: torch.Tensor
    center: torch.Tensor | None


@torch.no_grad()
def run_stage1(
    image: torch.Tensor,
    denoise_encoder: DenoiseEncoder,
    vae: AutoencoderKL,
    generator: torch.Generator | None = None,
    with_center: bool = False,
    tiled: VaeTiling | None = None,
) -> Stage1:
    """Stage-1 latent, its decoded reference image (float32, [-1, 1] range) and optionally the center.

    ``image`` is the upscaled low-quality picture in [-1, 1], (B, 3, H, W). With ``tiled``, every
    VAE pass goes through the tiled encoder/decoder (SUPIR's ``--use_tile_vae``).
    """
    latent = denoise_encoder(image, tiled=tiled)
    reference = decode_latent(vae, latent, tiled)
    center = None
    if with_center:
        posterior = DiagonalGaussianDistribution(_moments(vae.encoder, vae.quant_conv, reference, tiled))
        center = (posterior.sample(generator) * vae.config.scaling_factor).float()
    return Stage1(latent=latent.float(), reference=reference, center=center)
