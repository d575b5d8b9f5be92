"""SUPIR's connectors: the trainable layers that feed GLVControl's features into the frozen SDXL UNet.

Two kinds exist. A ``ZeroSFT`` replaces the ``cat([hidden, skip])`` in front of each up-block resnet
(and, without a hidden state, follows the mid block); a ``ZeroCrossAttn`` sits in front of each
upsampler. Both blend with the stock path by ``control_scale``, so at 0 the UNet is unchanged.

The order of every floating-point operation follows SUPIR's ``SUPIR/modules/SUPIR_v0.py`` so that fp32
outputs match the official code to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn

_GROUPS = 32
_EPS = 1e-5
_SFT_HIDDEN = 128
_HEAD_DIM = 64


class ZeroSFT(nn.Module):
    """Spatial feature transform of ``cat([hidden, skip])`` by the control features.

    ``skip_proj`` adds a 1x1 projection of the control to the skip first; ``gamma``/``beta`` come from a
    shared 3x3 conv of the control. The official name ``param_free_norm`` is misleading: the norm is
    affine, so here it is plain ``norm``.
    """

    def __init__(self, control_channels: int, skip_channels: int, hidden_channels: int = 0) -> None:
        super().__init__()
        total = skip_channels + hidden_channels
        self.hidden_channels = hidden_channels
        self.norm = nn.GroupNorm(_GROUPS, total, eps=_EPS)
        self.control_conv = nn.Conv2d(control_channels, _SFT_HIDDEN, 3, padding=1)
        self.gamma = nn.Conv2d(_SFT_HIDDEN, total, 3, padding=1)
        self.beta = nn.Conv2d(_SFT_HIDDEN, total, 3, padding=1)
        self.skip_proj = nn.Conv2d(control_channels, skip_channels, 1)

    def forward(
        self,
        control: torch.Tensor,
        skip: torch.Tensor,
        hidden: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> torch.Tensor:
        if (hidden is None) != (self.hidden_channels == 0):
            raise ValueError("ZeroSFT needs a hidden state exactly when it was built with hidden channels")
        raw = skip if hidden is None else torch.cat([hidden, skip], dim=1)
        fused = skip + self.skip_proj(control)
        if hidden is not None:
            fused = torch.cat([hidden, fused], dim=1)
        features = F.silu(self.control_conv(control))
        gamma = self.gamma(features)
        beta = self.beta(features)
        out = self.norm(fused) * (gamma + 1) + beta
        return out * scale + raw * (1 - scale)


class ZeroCrossAttn(nn.Module):
    """Cross-attention from the UNet state (queries) to the control features (keys/values), full HxW tokens."""

    def __init__(self, control_channels: int, query_channels: int) -> None:
        super().__init__()
        self.norm_query = nn.GroupNorm(_GROUPS, query_channels, eps=_EPS)
        self.norm_control = nn.GroupNorm(_GROUPS, control_channels, eps=_EPS)
        self.attn = Attention(
            query_channels,
            cross_attention_dim=control_channels,
            heads=query_channels // _HEAD_DIM,
            dim_head=_HEAD_DIM,
            bias=False,
            out_bias=True,
        )

    def forward(self, control: torch.Tensor, hidden: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        b, c, h, w = hidden.shape
        query = self.norm_query(hidden).flatten(2).transpose(1, 2)
        context = self.norm_control(control).flatten(2).transpose(1, 2)
        attended = self.attn(query, encoder_hidden_states=context)
        attended = attended.transpose(1, 2).reshape(b, c, h, w)
        return hidden + attended * scale


@dataclass(frozen=True)
class ConnectorLayout:
    """Where each connector sits, derived from the UNet's own blocks.

    ``skip_channels[i]`` is the width of the i-th down-path residual (conv_in output first);
    ``hidden_channels[i]`` is the width of the decoder state it is concatenated with; ``upsample_blocks``
    lists the up blocks that own an upsampler, with the index of the last skip each one consumes
    (that residual's control features are the ZeroCrossAttn context).
    """

    skip_channels: tuple[int, ...]
    hidden_channels: tuple[int, ...]
    mid_channels: int
    upsample_blocks: tuple[tuple[int, int, int], ...]  # (up block index, control index, query channels)


def connector_layout(unet: nn.Module) -> ConnectorLayout:
    """Walk a diffusers ``UNet2DConditionModel`` the way its forward does and record each concat."""
    skips = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        for resnet in block.resnets:
            skips.append(resnet.out_channels)
        for down in block.downsamplers or ():
            skips.append(down.out_channels)
    skip_channels = tuple(skips)
    hidden = [0] * len(skips)
    upsample_blocks = []
    remaining = len(skips)
    for b, block in enumerate(unet.up_blocks):
        for resnet in block.resnets:
            remaining -= 1
            hidden[remaining] = resnet.in_channels - skip_channels[remaining]
        if block.upsamplers:
            upsample_blocks.append((b, remaining, block.resnets[-1].out_channels))
    if remaining != 0:
        raise ValueError("the UNet's up blocks do not consume every down-path residual")
    return ConnectorLayout(
        skip_channels=skip_channels,
        hidden_channels=tuple(hidden),
        mid_channels=unet.mid_block.resnets[-1].out_channels,
        upsample_blocks=tuple(upsample_blocks),
    )


class Connectors(nn.Module):
    """All connectors of one UNet: ``skips[i]`` for residual i, ``mid``, and ``upsamplers[k]``.

    Control feature i (GLVControl output i) has the width of down residual i, the last one being the
    mid block, so each connector is addressed by the residual it fuses.
    """

    def __init__(self, layout: ConnectorLayout) -> None:
        super().__init__()
        self.layout = layout
        self.skips = nn.ModuleList(
            ZeroSFT(ch, ch, hid) for ch, hid in zip(layout.skip_channels, layout.hidden_channels, strict=True)
        )
        self.mid = ZeroSFT(layout.mid_channels, layout.mid_channels)
        self.upsamplers = nn.ModuleList(
            ZeroCrossAttn(layout.skip_channels[ctrl], query) for _, ctrl, query in layout.upsample_blocks
        )

    @classmethod
    def for_unet(cls, unet: nn.Module) -> Connectors:
        return cls(connector_layout(unet))

    def upsampler_for(self, block_index: int) -> tuple[ZeroCrossAttn, int] | None:
        """The ZeroCrossAttn in front of up block ``block_index``'s upsampler and its control index."""
        for k, (b, ctrl, _) in enumerate(self.layout.upsample_blocks):
            if b == block_index:
                return self.upsamplers[k], ctrl
        return None

    def check_control(self, control: Sequence[torch.Tensor]) -> None:
        if len(control) != len(self.skips) + 1:
            raise ValueError(f"expected {len(self.skips) + 1} control features, got {len(control)}")
