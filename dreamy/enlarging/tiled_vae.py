"""Tiled VAE encoding/decoding with GroupNorm statistics shared across tiles (SUPIR's ``--use_tile_vae``).

The image is cut into padded tiles (encoder: 512 px tiles, 32 px padding; decoder: 64 latent tiles,
11 latent padding). The network is run as a flat list of operations; at every GroupNorm all tiles
stop, their per-group mean and (biased) variance are averaged weighted by tile area, and every tile
is normalised with those shared numbers, so the result is close to an untiled run. Each tile's
valid centre is then pasted into the output. The mid-block attention stays local to each tile, as in
the reference, so the output is near but not identical to the untiled one.

Between GroupNorms a tile can wait on another device (``storage``), which is what bounds memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_TILE, ENCODER_PAD = 512, 32  # pixels
DECODER_TILE, DECODER_PAD = 64, 11  # latent pixels

Box = tuple[int, int, int, int]  # top, bottom, left, right


@dataclass(frozen=True)
class VaeTiling:
    """Tile sizes for the VAE passes (SUPIR's defaults) and where tiles wait between GroupNorms."""

    encoder_tile: int = ENCODER_TILE  # pixels
    decoder_tile: int = DECODER_TILE  # latent pixels
    storage: str | None = None  # e.g. "cpu" to bound GPU memory


@dataclass
class _Op:
    kind: str  # "run", "norm", "save" (residual branch), "add" (residual join)
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    norm: nn.GroupNorm | None = None


def _resnet_ops(block: nn.Module) -> list[_Op]:
    shortcut = block.conv_shortcut if block.conv_shortcut is not None else (lambda x: x)
    return [
        _Op("save", shortcut),
        _Op("norm", norm=block.norm1),
        _Op("run", F.silu),
        _Op("run", block.conv1),
        _Op("norm", norm=block.norm2),
        _Op("run", F.silu),
        _Op("run", block.conv2),
        _Op("add"),
    ]


def _attention_core(attn: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The VAE mid-block attention after its GroupNorm: q/k/v, softmax attention, output projection."""

    def run(x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        heads = attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(attn.to_q(tokens)), split(attn.to_k(tokens)), split(attn.to_v(tokens)))
        out = attn.to_out[0](out.transpose(1, 2).reshape(b, -1, c))
        return out.transpose(1, 2).reshape(b, c, h, w)

    return run


def _mid_ops(mid: nn.Module) -> list[_Op]:
    ops = _resnet_ops(mid.resnets[0])
    for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
        if attn is not None:
            ops += [_Op("save", lambda x: x), _Op("norm", norm=attn.group_norm), _Op("run", _attention_core(attn)), _Op("add")]
        ops += _resnet_ops(resnet)
    return ops


def network_ops(net: nn.Module, is_decoder: bool) -> list[_Op]:
    """A diffusers VAE ``Encoder``/``Decoder`` as the flat op list its forward runs."""
    ops = [_Op("run", net.conv_in)]
    if is_decoder:
        ops += _mid_ops(net.mid_block)
    for block in net.up_blocks if is_decoder else net.down_blocks:
        for resnet in block.resnets:
            ops += _resnet_ops(resnet)
        for sampler in (block.upsamplers if is_decoder else block.downsamplers) or ():
            ops.append(_Op("run", sampler))
    if not is_decoder:
        ops += _mid_ops(net.mid_block)
    return ops + [_Op("norm", norm=net.conv_norm_out), _Op("run", F.silu), _Op("run", net.conv_out)]


def _scale_of(net: nn.Module, is_decoder: bool) -> int:
    blocks = net.up_blocks if is_decoder else net.down_blocks
    return 2 ** sum(1 for b in blocks if (b.upsamplers if is_decoder else b.downsamplers))


def _round_tile(size: int, limit: int) -> int:
    """Grow ``size`` to the next multiple of 32 (else 16, 8, 4, 2) that stays within ``limit``."""
    step = 32
    while step >= 2:
        if size % step == 0:
            return size
        if size - size % step + step <= limit:
            return size - size % step + step
        step //= 2
    return size


def tile_boxes(height: int, width: int, tile: int, pad: int, scale: int, is_decoder: bool) -> list[tuple[Box, Box]]:
    """(input box, output box) per tile, row-major. Input boxes include the padding; output boxes are
    in output pixels and reach the image edge for border tiles."""

    def spans(size: int) -> list[tuple[int, int, int, int]]:
        count = max(math.ceil((size - 2 * pad) / tile), 1)
        step = _round_tile(math.ceil((size - 2 * pad) / count), tile)
        out = []
        for k in range(count):
            lo, hi = pad + k * step, min(pad + (k + 1) * step, size)
            out_lo, out_hi = (lo if lo > pad else 0), (hi if hi < size - pad else size)
            out_lo, out_hi = (out_lo * scale, out_hi * scale) if is_decoder else (out_lo // scale, out_hi // scale)
            out.append((max(0, lo - pad), min(size, hi + pad), out_lo, out_hi))
        return out

    boxes = []
    for top, bottom, out_top, out_bottom in spans(height):
        for left, right, out_left, out_right in spans(width):
            boxes.append(((top, bottom, left, right), (out_top, out_bottom, out_left, out_right)))
    return boxes


def _group_stats(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (image, group) biased variance and mean, in float32."""
    grouped = x.float().reshape(1, x.shape[0] * groups, -1)
    return torch.var_mean(grouped, dim=[0, 2], unbiased=False)


def _shared_norm(x: torch.Tensor, norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    grouped = x.reshape(1, b * norm.num_groups, -1)
    out = F.batch_norm(grouped, mean.to(x.dtype), var.to(x.dtype), training=False, momentum=0.0, eps=norm.eps)
    out = out.reshape(x.shape)
    if norm.affine:
        out = out * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    return out


@torch.no_grad()
def tiled_forward(
    net: nn.Module,
    x: torch.Tensor,
    is_decoder: bool,
    tile: int | None = None,
    pad: int | None = None,
    storage: torch.device | str | None = None,
) -> torch.Tensor:
    """``net(x)`` for a diffusers VAE ``Encoder`` or ``Decoder``, tile by tile. Returns float32.

    Inputs no larger than one padded tile run untiled, as in the reference. ``storage`` is where
    tiles wait between GroupNorms (e.g. ``"cpu"`` to bound GPU memory; default: where they are).
    """
    if tile is None:
        tile = DECODER_TILE if is_decoder else ENCODER_TILE
    if pad is None:
        pad = DECODER_PAD if is_decoder else ENCODER_PAD
    n, _, height, width = x.shape
    if max(height, width) <= 2 * pad + tile:
        return net(x).float()
    device = x.device
    storage = torch.device(storage) if storage is not None else device
    scale = _scale_of(net, is_decoder)
    boxes = tile_boxes(height, width, tile, pad, scale, is_decoder)
    tiles = [x[:, :, t:b, le:r].to(storage) for (t, b, le, r), _ in boxes]
    residuals: list[torch.Tensor | None] = [None] * len(tiles)
    ops = network_ops(net, is_decoder)
    starts = [0] + [i for i, op in enumerate(ops) if op.kind == "norm"]
    shared: tuple[torch.Tensor, torch.Tensor] | None = None
    for seg_start, seg_end in zip(starts, starts[1:] + [len(ops)], strict=True):
        stats = []
        for i in range(len(tiles)):
            h = tiles[i].to(device)
            for op in ops[seg_start:seg_end]:
                if op.kind == "norm":
                    h = _shared_norm(h, op.norm, *shared)
                elif op.kind == "save":
                    residuals[i] = op.fn(h).to(storage)
                elif op.kind == "add":
                    h = h + residuals[i].to(device)
                    residuals[i] = None
                else:
                    h = op.fn(h)
            if seg_end < len(ops):  # the next op is a GroupNorm: it needs every tile's statistics
                stats.append((*_group_stats(h, ops[seg_end].norm.num_groups), h.shape[2] * h.shape[3]))
            tiles[i] = h.to(storage)
        if stats:
            shared = _combine(stats)
    size = (height * scale, width * scale) if is_decoder else (height // scale, width // scale)
    out = torch.zeros(n, tiles[0].shape[1], *size, device=device)
    for h, ((top, _, left, _), (out_top, out_bottom, out_left, out_right)) in zip(tiles, boxes, strict=True):
        # the tile's origin in output pixels, to cut its valid centre out of it
        top, left = (top * scale, left * scale) if is_decoder else (top // scale, left // scale)
        out[:, :, out_top:out_bottom, out_left:out_right] = h[
            :, :, out_top - top : out_bottom - top, out_left - left : out_right - left
        ].to(device)
    return out


def _combine(stats: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var): area-weighted averages of the tiles' (no between-tile term, as the reference)."""
    area = torch.tensor([s[2] for s in stats], dtype=torch.float32, device=stats[0][0].device)
    area = area / area.max()
    weight = (area / area.sum()).unsqueeze(1)
    var = (torch.stack([s[0] for s in stats]) * weight).sum(dim=0)
    mean = (torch.stack([s[1] for s in stats]) * weight).sum(dim=0)
    return mean, var
