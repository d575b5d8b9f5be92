"""SDXL weights carried inside a SUPIR checkpoint, applied over the base model as SUPIR does.

SUPIR's loader reads the SDXL file first and then the SUPIR file with ``strict=False``, so any
``model.diffusion_model.*``, ``first_stage_model.*`` or ``conditioner.*`` tensor in the SUPIR file
replaces the base model's. The released v0Q/v0F files hold none, but a full training export would.
Names are mapped with the exporter's diffusers -> LDM renamers run on placeholders (as in ``keys``);
every carried weight must find its place and shape, or a ``SourceError`` names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import SourceError
from ..models.ldm_keys import (
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    clip_to_ldm,
    openclip_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from .checkpoint import listing

# Bookkeeping tensors of SDXL files that no diffusers module holds.
_IGNORED_SUFFIXES = ("position_ids", "logit_scale")

Target = tuple[nn.Module, str, Callable[[torch.Tensor], torch.Tensor]]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _renamed(module: nn.Module, to_ldm: Callable[..., Mapping[str, torch.Tensor]], **kwargs) -> dict[str, Target]:
    """Official name -> (module, key, transform) for every weight the renamer maps without computing."""
    marks = {key: torch.empty(0, device="meta") for key in module.state_dict()}
    owner = {id(t): key for key, t in marks.items()}
    return {name: (module, owner[id(t)], _same) for name, t in to_ldm(marks, **kwargs).items() if id(t) in owner}


def _openclip_extras(module: nn.Module) -> dict[str, Target]:
    """The OpenCLIP weights that are not plain renames: fused q/k/v projections, transposed projection."""
    keys = set(module.state_dict())
    body = "text_model." if any(k.startswith("text_model.") for k in keys) else ""
    targets: dict[str, Target] = {SDXL_CLIP_G_PREFIX + "text_projection": (module, "text_projection.weight", torch.t)}
    layers = {int(k[len(body) :].split(".")[2]) for k in keys if "self_attn.q_proj.weight" in k}
    for n in layers:
        for kind in ("weight", "bias"):
            for i, q in enumerate("qkv"):
                key = f"{body}encoder.layers.{n}.self_attn.{q}_proj.{kind}"
                name = f"{SDXL_CLIP_G_PREFIX}transformer.resblocks.{n}.attn.in_proj_{kind}#{i}"
                targets[name] = (module, key, lambda t, i=i: t.chunk(3, dim=0)[i])
    return targets


def backbone_targets(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, text_encoder_2: nn.Module) -> dict[str, Target]:
    targets = _renamed(unet, unet_to_ldm) | _renamed(vae, vae_to_ldm)
    targets |= _renamed(text_encoder, clip_to_ldm, prefix=SDXL_CLIP_L_PREFIX)
    return targets | _renamed(text_encoder_2, openclip_to_ldm) | _openclip_extras(text_encoder_2)


@torch.no_grad()
def apply_backbone(
    backbone: Mapping[str, torch.Tensor],
    unet: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    text_encoder_2: nn.Module,
    name: str = "The SUPIR checkpoint",
) -> int:
    """Copy ``backbone`` (official SDXL names) into the base modules in place; returns how many tensors."""
    if not backbone:
        return 0
    targets = backbone_targets(unet, vae, text_encoder, text_encoder_2)
    fused = {k.rsplit("#", 1)[0] for k in targets if "#" in k}
    states = {id(m): m.state_dict() for m in (unet, vae, text_encoder, text_encoder_2)}
    unknown, wrong, copies = [], [], []
    for key, tensor in backbone.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        parts = [f"{key}#{i}" for i in range(3)] if key in fused else [key]
        if not all(p in targets for p in parts):
            unknown.append(key)
            continue
        for part in parts:
            module, ours, transform = targets[part]
            dest = states[id(module)][ours]
            value = transform(tensor)
            if value.numel() == dest.numel() and value.dim() != dest.dim():
                value = value.reshape(dest.shape)  # LDM stores the VAE attention as 1x1 convolutions
            if value.shape != dest.shape:
                wrong.append(f"{key} {tuple(tensor.shape)}")
                break
            copies.append((dest, value))
    if unknown or wrong:
        what = []
        if unknown:
            what.append(f"{len(unknown)} that the base model does not have ({listing(unknown)})")
        if wrong:
            what.append(f"{len(wrong)} of the wrong shape ({listing(wrong)})")
        raise SourceError(f"{name} carries SDXL weights that do not fit the base model: {'; '.join(what)}.")
    for dest, value in copies:  # only once everything fits: a refused file leaves the base untouched
        dest.copy_(value)
    return len(backbone) - sum(k.endswith(_IGNORED_SUFFIXES) for k in backbone)
