"""Which Dream path runs: the CUDA fast path (and at which level) or the generic loop.

Levels (H100, SD1.5 512², 50 DDIM steps; docs/benchmarks.md):
- ``graph`` (the default): the whole 50-step loop and the VAE decode replayed as CUDA graphs over
  stock's own kernels. Bit-identical to stock diffusers; 0.66 s/image at batch 1 (stock 2.2 s); a
  capture costs ~3 s per batch size, so the first image comes within 30 s of a cold start.
- ``compile``: the same graphs over ``torch.compile``d UNet and VAE (channels_last). Within stock's
  own SDPA-backend spread, not bitwise (Inductor fuses fp16 arithmetic); 0.36 s/image at batch 1,
  4.3-4.5 images/s in sweeps; ~90 s of compile per batch size on a cold Inductor cache (~20 s warm).

``fast=False`` or ``DREAMY_FAST=0`` turns it off; an explicit argument beats the environment.
Everything here is pure policy, so it is tested on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ...errors import DreamyError

ENV = "DREAMY_FAST"
LEVELS = ("graph", "compile")
DEFAULT_LEVEL = "graph"
# Samplers whose step was checked to run without host syncs or random draws under capture, and to
# give stock's bits when handed the timestep as a Python int (see program.py). Others run generic.
GRAPH_SAMPLERS = frozenset({"ddim"})
MIN_CAPABILITY = (7, 0)  # Volta+: where CUDA graphs of cuDNN/cuBLAS work are routine

_OFF = {"0", "off", "false", "no"}
_ON = {"", "1", "on", "true", "yes", "auto"}


def env_level(env: Mapping[str, str] | None = None) -> str | None:
    """The level DREAMY_FAST asks for: None (unset/auto), "off", or one of LEVELS."""
    raw = (os.environ if env is None else env).get(ENV)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _OFF:
        return "off"
    if value in _ON:
        return None
    if value == "exact":
        return "graph"
    if value in LEVELS:
        return value
    raise DreamyError(f"{ENV}={raw!r} is not understood; use 0 (off), 1 (on), graph (bit-exact) or compile.")


def resolve_level(fast: bool | str | None, env: Mapping[str, str] | None = None) -> str:
    """"off" or a level, from the caller's ``fast`` and then the environment."""
    if fast is False:
        return "off"
    if isinstance(fast, str):
        if fast not in LEVELS:
            raise DreamyError(f"fast={fast!r} is not a level; use True, False, or one of {', '.join(LEVELS)}.")
        return fast
    wanted = env_level(env)
    if fast is True:
        return wanted if wanted not in (None, "off") else DEFAULT_LEVEL  # an explicit True beats DREAMY_FAST=0
    return wanted or DEFAULT_LEVEL


def unsupported_reason(device: torch.device, sampler: str, capability: tuple[int, int] | None = None) -> str | None:
    """Why the fast path cannot run here (None: it can). ``capability`` is read from the device if not given."""
    if device.type != "cuda":
        return f"the fast path needs a CUDA GPU; this dream runs on {device.type}"
    if sampler not in GRAPH_SAMPLERS:
        return f"sampler '{sampler}' is not validated for graph capture (only {', '.join(sorted(GRAPH_SAMPLERS))})"
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        return f"GPU compute capability {capability[0]}.{capability[1]} is below {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}"
    return None


def plan_batches(seeds: list[int], batch_size: int) -> tuple[int, list[list[int]]]:
    """(graph batch size, chunks of seeds): every chunk runs at the one captured size.

    A short last chunk is padded (by repeating its last seed) rather than captured anew: each
    row of a batched kernel depends only on its own inputs and the batch shape, so a seed's image
    in a padded batch equals its image in a full one, and no second capture (or compile) is paid.
    """
    n = max(1, min(batch_size, len(seeds)))
    return n, [seeds[i : i + n] for i in range(0, len(seeds), n)]


def padded(chunk: list[int], n: int) -> list[int]:
    return chunk + [chunk[-1]] * (n - len(chunk))
