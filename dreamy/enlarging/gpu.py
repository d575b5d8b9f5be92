"""GPU choices for Enlarge that change no method: the attention kernel, and whether untiled sampling fits.

Attention: SUPIR at 2048 px runs self-attention over 16384 tokens; on Hopper, cuDNN's fused attention
is 1.5-1.8x faster than PyTorch's default (flash) kernel at SDXL's shapes (docs/benchmarks.md). It is
the same function; the outputs differ by fp16 rounding, like any two attention kernels.
``DREAMY_SDPA=default`` keeps PyTorch's own choice.

Tiling: SUPIR's demo samples the whole latent at once (``RestoreEDMSampler``); its tiled sampler is
the low-memory variant, and it is also slower at 2048 px (9 overlapping 1024-px tiles cover 2.25x the
area). So Enlarge samples untiled where the GPU has the memory and the latent is at most 256x256
(2048 px), and tiles otherwise; an untiled run that still runs out of memory is retried tiled.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

ENV = "DREAMY_SDPA"
UNTILED_MAX_AREA = 256 * 256  # latent pixels: past 2048 px, attention's quadratic cost favours tiles
# Peak memory of untiled sampling + untiled VAE beyond the weights, per latent pixel: measured on an
# H100 at 2048 px (17.2 GB allocated with 7.6 GB of weights), plus a quarter for safety.
UNTILED_BYTES_PER_LATENT_PX = 9.6 * 2**30 / (256 * 256) * 1.25


def attention_order(device: torch.device) -> list[str] | None:
    """SDPA backends in order of preference on ``device``, or None for PyTorch's default choice."""
    if device.type != "cuda" or os.environ.get(ENV, "auto").strip().lower() == "default":
        return None
    if torch.cuda.get_device_capability(device) < (9, 0):  # measured on Hopper only
        return None
    return ["cudnn", "flash", "efficient", "math"]


@contextlib.contextmanager
def preferred_attention(device: torch.device) -> Iterator[str]:
    """Run the block with cuDNN attention first where it pays; yields what the recipe records."""
    order = attention_order(device)
    if order is None:
        yield "default"
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    try:
        context = sdpa_kernel([names[n] for n in order], set_priority=True)
    except TypeError:  # a PyTorch without priorities: keep its default
        yield "default"
        return
    with context:
        yield ">".join(order)


def untiled_fits(device: torch.device, latent: tuple[int, int], tile: int) -> bool:
    """Whether to sample ``latent`` (height, width) in one piece: it fits in a ``tile``, or (CUDA) it
    is at most 2048 px and the GPU has the memory for it."""
    if max(latent) <= tile:
        return True
    area = latent[0] * latent[1]
    if device.type != "cuda" or area > UNTILED_MAX_AREA:
        return False  # elsewhere memory is not measured: tiles keep it bounded, as before
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + cached >= area * UNTILED_BYTES_PER_LATENT_PX
