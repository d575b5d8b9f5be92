"""GLVControl: a trainable copy of the SDXL UNet's encoder half that reads the low-quality latent.

It is the down path and mid block of the base UNet (same config, own weights) plus one extra 3x3 conv,
``hint_conv``, whose output is added to ``conv_in(x_t)``. It returns every down-path residual and the
mid-block output: the features the connectors fuse into the frozen UNet.

The blocks are diffusers' own, built from the base UNet's config, so key names follow diffusers and the
arithmetic is the UNet's. Construction happens on the meta device; weights arrive by ``load_state_dict
(..., assign=True)``, so a 1.2 B parameter model is never initialised twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn


def run_down_path(
    blocks: nn.ModuleList, hidden: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run diffusers down blocks; return the last state and every residual they emit, in order."""
    residuals: list[torch.Tensor] = []
    for block in blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, res = block(hidden_states=hidden, temb=emb, encoder_hidden_states=context)
        else:
            hidden, res = block(hidden_states=hidden, temb=emb)
        residuals.extend(res)
    return hidden, residuals


def conditioning_embedding(
    model: nn.Module, timestep: torch.Tensor, vector: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """SDXL's ``time_embedding(t) + add_embedding(y)``, with ``y`` the ready 2816-wide vector."""
    t_emb = model.time_proj(timestep).to(dtype)
    return model.time_embedding(t_emb) + model.add_embedding(vector.to(dtype))


class GLVControl(nn.Module):
    """SUPIR's control encoder, built to mirror a given SDXL UNet config."""

    def __init__(self, unet_config: Mapping[str, Any]) -> None:
        super().__init__()
        # Build a whole UNet on the meta device (no memory) and keep its encoder half: this reuses
        # diffusers' own config handling instead of re-deriving block arguments here.
        with torch.device("meta"):
            template = UNet2DConditionModel.from_config(dict(unet_config))
        if template.config.addition_embed_type != "text_time":
            raise ValueError("GLVControl needs an SDXL-style UNet config (addition_embed_type 'text_time')")
        self.time_proj = template.time_proj
        self.time_embedding = template.time_embedding
        self.add_embedding = template.add_embedding
        self.conv_in = template.conv_in
        self.hint_conv = nn.Conv2d(
            template.config.in_channels, template.conv_in.out_channels, 3, padding=1, device="meta"
        )
        self.down_blocks = template.down_blocks
        self.mid_block = template.mid_block
        self.config = template.config

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel) -> GLVControl:
        """A control model initialised as SUPIR's training starts: a copy of the UNet's encoder, zero hint conv.

        For building small test/demo models; real use loads a SUPIR checkpoint instead.
        """
        control = cls(unet.config)
        own = control.state_dict()
        state = {k: v.detach().clone() for k, v in unet.state_dict().items() if k in own}
        state["hint_conv.weight"] = torch.zeros(own["hint_conv.weight"].shape, dtype=unet.dtype, device=unet.device)
        state["hint_conv.bias"] = torch.zeros(own["hint_conv.bias"].shape, dtype=unet.dtype, device=unet.device)
        control.load_state_dict(state, strict=True, assign=True)
        return control

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(
        self,
        hint: torch.Tensor,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        vector: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Control features for noisy input ``sample`` (already c_in-scaled) and LQ latent ``hint``.

        ``hint`` is the stage-1 latent (VAE scaling factor applied, no c_in scaling). Returns the
        down residuals followed by the mid-block output (10 tensors for SDXL).
        """
        dtype = self.dtype
        emb = conditioning_embedding(self, timestep, vector, dtype)
        context = context.to(dtype)
        first = self.conv_in(sample.to(dtype)) + self.hint_conv(hint.to(dtype))
        hidden, residuals = run_down_path(self.down_blocks, first, emb, context)
        mid = self.mid_block(hidden, emb, encoder_hidden_states=context)
        return [first, *residuals, mid]
