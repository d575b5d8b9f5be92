"""The frozen SDXL UNet with SUPIR's connectors hooked in, without touching diffusers' files.

``SupirUNet`` keeps a stock ``UNet2DConditionModel`` (usable on its own as before) and runs it through
its own forward: the embeddings, down blocks and mid block are called as they are; the up blocks are
walked resnet by resnet so that a connector can replace each ``cat([hidden, skip])`` and sit in front
of each upsampler, exactly where SUPIR's ``LightGLVUNet`` has them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .connectors import Connectors
from .control import conditioning_embedding, run_down_path


class SupirUNet(nn.Module):
    """``unet`` (stock, frozen) + ``connectors``; predicts epsilon like the base UNet."""

    def __init__(self, unet: UNet2DConditionModel, connectors: Connectors | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.connectors = connectors if connectors is not None else Connectors.for_unet(unet)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        context: torch.Tensor,
        vector: torch.Tensor,
        control: Sequence[torch.Tensor],
        control_scale: float = 1.0,
    ) -> torch.Tensor:
        """Epsilon for c_in-scaled ``sample`` at integer DDPM ``timestep``.

        ``vector`` is SDXL's 2816-wide added conditioning; ``control`` is GLVControl's output.
        """
        unet, connectors = self.unet, self.connectors
        connectors.check_control(control)
        factor = 2 ** (len(unet.down_blocks) - 1)
        if sample.shape[-1] % factor or sample.shape[-2] % factor:
            raise ValueError(f"latent height and width must be multiples of {factor}, got {tuple(sample.shape)}")
        dtype = self.dtype
        emb = conditioning_embedding(unet, timestep, vector, dtype)
        context = context.to(dtype)
        control = [c.to(dtype) for c in control]

        first = unet.conv_in(sample.to(dtype))
        hidden, residuals = run_down_path(unet.down_blocks, first, emb, context)
        skips = [first, *residuals]
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=context)
        hidden = connectors.mid(control[-1], hidden, scale=control_scale)

        for b, block in enumerate(unet.up_blocks):
            attentions = getattr(block, "attentions", None)
            for j, resnet in enumerate(block.resnets):
                i = len(skips) - 1
                hidden = connectors.skips[i](control[i], skips.pop(), hidden, scale=control_scale)
                hidden = resnet(hidden, emb)
                if attentions is not None:
                    hidden = attentions[j](hidden, encoder_hidden_states=context, return_dict=False)[0]
            if block.upsamplers:
                attn, ctrl = connectors.upsampler_for(b)
                hidden = attn(control[ctrl], hidden, scale=control_scale)
                for upsampler in block.upsamplers:
                    hidden = upsampler(hidden)

        hidden = unet.conv_norm_out(hidden)
        hidden = unet.conv_act(hidden)
        return unet.conv_out(hidden)
