"""Which training step runs: the fastest exact one the device and its memory allow.

On CUDA a full fine-tune (``full``/``prior``) trains by default with ``fused_params`` (every trained
tensor in one flat fp32 buffer: one optimizer, clip and zero kernel instead of ~1100): 0.214 s/step
against 0.254 for the separate tensors and 0.238 for stock diffusers on an H100, at ~12.5 GB peak
instead of 9.6 (docs/benchmarks.md). ``torch.compile`` of the UNet makes a step faster still (0.161
s on an H200) but its first steps cost ~119 s of compiling on a cold Inductor cache (measured, H200):
it pays only for runs of ``COMPILE_PAYS_STEPS`` steps or more, so it goes on by itself only there.
The recipe's ``fused_params`` / ``compile_unet`` set to true force them anywhere; left false, this
module turns them on where they pay and fit. ``DREAMY_TRAIN_FAST=0`` keeps the plain step.

A run keeps the layout it started with: fused or not changes the optimizer state's shape, so a
resumed run reads it from run.json (``runtime.fused_params``), never from this machine's memory.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..recipes.settings import TrainSettings

ENV = "DREAMY_TRAIN_FAST"
# Peak of the fused + compiled step for SD1.5 at 512 px, batch 1 (12.9 GB measured) plus headroom for
# the validation model (Dream's fp16 copy, ~2 GB) and its fast-path capture.
MIN_FREE_BYTES = 18 * 2**30
# A cold compile (~119 s, H200) over what it saves a step (~0.05 s: H100 fused eager 0.214 s, compiled 0.163 s).
COMPILE_PAYS_STEPS = 2500


def _env_off() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no")


def has_triton() -> bool:
    """Inductor's GPU code generator; without it torch.compile cannot run on CUDA."""
    return importlib.util.find_spec("triton") is not None


def auto_fast(s: TrainSettings, device: torch.device, free_bytes: int | None = None) -> bool:
    """Whether fused params + a compiled UNet go on by themselves here: CUDA, a full fine-tune, no gradient
    checkpointing (asked for to save memory), Triton present for Inductor, and the memory free."""
    if _env_off() or device.type != "cuda" or s.mode not in ("full", "prior") or s.gradient_checkpointing:
        return False
    if not has_triton():
        return False
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return free_bytes >= MIN_FREE_BYTES


def choose(s: TrainSettings, device: torch.device, recorded: dict | None,
           free_bytes: int | None = None) -> tuple[bool, bool]:
    """(fused_params, compile_unet) for this run. ``recorded``: a resumed run's run.json ``runtime`` (None for
    a new run); a run from before this choice was recorded keeps what its recipe said. ``free_bytes``: the
    device's free memory (default: asked of CUDA)."""
    auto = auto_fast(s, device, free_bytes)
    fused = s.fused_params or auto if recorded is None else bool(recorded.get("fused_params", s.fused_params))
    return fused, s.compile_unet or (auto and s.max_train_steps >= COMPILE_PAYS_STEPS)


@contextmanager
def eager(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` uncompiled for a while (the corridor meter's eval batches: other shapes than training's,
    which would each cost a compile); ``module.compile()`` keeps its compiled call in ``_compiled_call_impl``."""
    saved = getattr(module, "_compiled_call_impl", None)
    module._compiled_call_impl = None
    try:
        yield
    finally:
        module._compiled_call_impl = saved
