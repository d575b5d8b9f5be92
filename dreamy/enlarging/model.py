"""Assemble SUPIR from a base SDXL UNet (and VAE) and a SUPIR checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..models.single_file import read_checkpoint
from .checkpoint import load_exact, split_supir_state_dict
from .connectors import Connectors
from .control import GLVControl
from .keys import DENOISE_ENCODER_PREFIX, connector_names, control_names, denoise_encoder_names
from .stage1 import DenoiseEncoder
from .unet import SupirUNet

CONTROL, CONNECTORS, DENOISE_ENCODER = "control", "connectors", "denoise_encoder"


@dataclass
class SupirModules:
    """SUPIR's parts around the base model. ``backbone``: SDXL weights the file carried (official names)."""

    control: GLVControl
    unet: SupirUNet
    denoise_encoder: DenoiseEncoder | None
    backbone: dict[str, torch.Tensor]


def supir_names(
    control: GLVControl, connectors: Connectors, vae: AutoencoderKL | None = None
) -> dict[str, tuple[str, str]]:
    """Official checkpoint name -> (part, our key) for every weight of the given modules."""
    names = {k: (CONTROL, v) for k, v in control_names(control.state_dict()).items()}
    names |= {k: (CONNECTORS, v) for k, v in connector_names(connectors.state_dict(), connectors.layout).items()}
    if vae is not None:
        names |= {k: (DENOISE_ENCODER, v) for k, v in denoise_encoder_names(vae.encoder.state_dict()).items()}
    return names


def assemble_supir(
    state: Mapping[str, torch.Tensor],
    unet: UNet2DConditionModel,
    vae: AutoencoderKL | None = None,
    dtype: torch.dtype | None = None,
    name: str = "The SUPIR checkpoint",
) -> SupirModules:
    """Build GLVControl, the connectors and (with ``vae``) the denoise encoder from an official state dict.

    Nothing is randomly initialised: modules are built on the meta device and take the file's
    tensors. Control and connectors are cast to ``dtype`` (the diffusion dtype) when given; the
    denoise encoder follows the VAE's dtype. Without ``vae`` the denoise encoder's weights are skipped.
    """
    if vae is None:
        state = {k: v for k, v in state.items() if not k.startswith(DENOISE_ENCODER_PREFIX)}
    control = GLVControl(unet.config)
    with torch.device("meta"):
        connectors = Connectors.for_unet(unet)
    names = supir_names(control, connectors, vae)
    weights = split_supir_state_dict(state, names, name)
    official: dict[str, dict[str, str]] = {}
    for key, (part, ours) in names.items():
        official.setdefault(part, {})[ours] = key
    load_exact(control, weights.part(CONTROL), "SUPIR control model", official[CONTROL])
    load_exact(connectors, weights.part(CONNECTORS), "SUPIR connector", official[CONNECTORS])
    denoise = None
    if vae is not None:
        denoise = DenoiseEncoder.from_vae(vae, weights.part(DENOISE_ENCODER), official[DENOISE_ENCODER])
    if dtype is not None:
        control.to(dtype)
        connectors.to(dtype)
    return SupirModules(control, SupirUNet(unet, connectors), denoise, weights.backbone)


def load_supir(
    path: str | os.PathLike,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    dtype: torch.dtype | None = None,
) -> SupirModules:
    """Read a SUPIR v0Q/v0F file (.ckpt or .safetensors) and build its modules around ``unet`` and ``vae``."""
    return assemble_supir(read_checkpoint(path), unet, vae, dtype, name=Path(path).name)
