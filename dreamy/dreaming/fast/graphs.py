"""CUDA graphs over the Dream program: one capture per (recipe, batch size), replayed per batch.

Why whole-loop graphs: at batch 1 stock spends ~36 ms per step launching ~1000 small kernels from
Python while the GPU needs a fraction of that. A capture of all 50 steps (UNet, guidance, the
scheduler's arithmetic with its CPU scalars baked in as kernel arguments) plus the VAE decode turns
a dream into two graph launches. The kernels are the ones eager mode picks for the same shapes,
so the ``graph`` level is bit-identical to stock. The ``compile`` level captures Inductor's fused
kernels instead.

The loop and decode graphs share one memory pool (always replayed in capture order), so a capture
costs about one UNet call's activations plus one decode's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ...models.sources import SDModel
from ...recipes.recipe import Recipe
from .program import DecodeFn, DreamProgram, UNetFn, eager_decode

# Inductor options (torch.compile(options=...)): 1x1 convs as matmuls pay on SD's many 1x1 projections.
COMPILE_OPTIONS = {"conv_1x1_as_mm": True}


def set_layout(model: SDModel, channels_last: bool) -> None:
    """UNet and VAE weights to channels_last (compile level) or back to stock's layout."""
    if getattr(model, "_dreamy_channels_last", False) == channels_last:
        return
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.unet.to(memory_format=fmt)
    model.vae.to(memory_format=fmt)
    model._dreamy_channels_last = channels_last


def compiled_parts(model: SDModel) -> tuple[UNetFn, DecodeFn]:
    """torch.compile'd UNet and VAE decode, made once per model (Inductor compiles per shape on first call).

    A cold compile costs ~70-90 s per batch size on an H100; Inductor's on-disk caches (by default
    /tmp/torchinductor_$USER; set TORCHINDUCTOR_CACHE_DIR to keep them across reboots) cut a later
    process's to ~20 s.
    """
    parts = getattr(model, "_dreamy_compiled", None)
    if parts is None:
        unet = torch.compile(model.unet, dynamic=False, options=COMPILE_OPTIONS)
        decode = torch.compile(eager_decode(model), dynamic=False, options=COMPILE_OPTIONS)
        parts = model._dreamy_compiled = (unet, decode)
    return parts


def _fingerprint(model: SDModel) -> tuple:
    """Changes whenever the weights move (dtype or layout change): a graph holds raw pointers."""
    first = next(model.unet.parameters())
    return (model.dtype, first.data_ptr(), next(model.vae.parameters()).data_ptr())


def runner_key(model: SDModel, recipe: Recipe, n: int, embed_shape: tuple[int, ...], level: str) -> tuple:
    s = recipe.settings
    return (level, n, tuple(embed_shape), s.sampler, repr(sorted(s.scheduler.items())), s.steps, s.guidance,
            s.width, s.height, _fingerprint(model))


@dataclass
class Pending:
    """A launched batch: its images land in ``host`` (pinned) once ``done`` has fired."""

    host: torch.Tensor
    finite: torch.Tensor
    latents: torch.Tensor
    done: torch.cuda.Event


class GraphRunner:
    """Captured loop + decode for ``n`` seeds at one recipe; ``launch`` replays, ``finish`` collects."""

    def __init__(self, model: SDModel, recipe: Recipe, n: int, embed_shape: tuple[int, ...], level: str) -> None:
        self.model, self.level, self.n = model, level, n
        self.program = DreamProgram(model, recipe, n, embed_shape)
        self.stats: dict[str, float] = {}
        if level == "compile":
            set_layout(model, True)
            unet, decode = compiled_parts(model)
        else:
            set_layout(model, False)
            unet, decode = model.unet, eager_decode(model)
        self._capture(unet, decode, warmups=2 if level == "compile" else 1)
        shape = self.u8.shape
        # two pinned slots: batch k+1 is launched before batch k is read (one-deep pipeline)
        self._host = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self._finite = [torch.empty((), dtype=torch.bool, pin_memory=True) for _ in range(2)]
        self._slot = 0
        self.key = runner_key(model, recipe, n, embed_shape, level)  # after any layout switch moved the weights

    def _capture(self, unet: UNetFn, decode: DecodeFn, warmups: int) -> None:
        p, dev = self.program, self.model.device
        t0 = time.perf_counter()
        # Warm up outside the capture: cuDNN/cuBLAS handles and plans, lazily loaded kernels and
        # (compile level) Inductor's compilation and autotuning may not happen while capturing.
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(warmups):
                p.decode(decode, p.denoise(unet, max_steps=1))
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        # Fresh (a scheduler may keep per-run state), and kept: the graph reads its device timesteps.
        self._prepared = prepared = p.scheduler()
        self.loop = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.loop, capture_error_mode="thread_local"):
            self.latents = p.denoise(unet, prepared)
        self.decode = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.decode, pool=self.loop.pool(), capture_error_mode="thread_local"):
            self.u8, self.finite = p.decode(decode, self.latents)
        torch.cuda.synchronize(dev)
        self.stats = {"warmup_s": t1 - t0, "capture_s": time.perf_counter() - t1}

    def launch(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> Pending:
        """Queue one batch (no host sync): copy inputs in, replay, copy images out asynchronously."""
        self.program.load(noise, cond, uncond)
        self.loop.replay()
        self.decode.replay()
        slot, self._slot = self._slot, self._slot ^ 1
        host, finite = self._host[slot], self._finite[slot]
        host.copy_(self.u8, non_blocking=True)
        finite.copy_(self.finite, non_blocking=True)
        latents = self.latents.clone()  # kept for the fp32 re-decode should the fp16 one overflow
        done = torch.cuda.Event()
        done.record()
        return Pending(host, finite, latents, done)

    def finish(self, pending: Pending, count: int) -> tuple[list[Image.Image], bool]:
        """The first ``count`` images of a launched batch, and whether the VAE had to run in fp32."""
        pending.done.synchronize()
        if not bool(pending.finite):
            from ..blocks import decode

            images, _ = decode(self.model, pending.latents[:count])  # stock's fp16 try, then fp32
            return images, True
        arr = pending.host.numpy()
        # copies: PIL may share the buffer, and this pinned slot is refilled two batches later
        return [Image.fromarray(np.array(arr[i])) for i in range(count)], False

    def time_parts(self, repeats: int = 5) -> dict[str, float]:
        """Median GPU milliseconds of one loop replay and one decode replay (for the benchmark's profile)."""
        out: dict[str, list[float]] = {"loop_ms": [], "decode_ms": []}
        for _ in range(repeats):
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            ev[0].record()
            self.loop.replay()
            ev[1].record()
            self.decode.replay()
            ev[2].record()
            ev[2].synchronize()
            out["loop_ms"].append(ev[0].elapsed_time(ev[1]))
            out["decode_ms"].append(ev[1].elapsed_time(ev[2]))
        return {k: float(np.median(v)) for k, v in out.items()}

    def close(self) -> None:
        for name in ("loop", "decode", "latents", "u8", "finite", "program", "_prepared", "_host", "_finite"):
            self.__dict__.pop(name, None)


def runner_for(model: SDModel, recipe: Recipe, n: int, embed_shape: tuple[int, ...], level: str) -> GraphRunner:
    """The model's captured runner for this recipe and size, re-captured when anything that shapes it changed."""
    key = runner_key(model, recipe, n, embed_shape, level)
    current: GraphRunner | None = getattr(model, "_dreamy_runner", None)
    if current is not None and current.key == key:
        return current
    if current is not None:  # one capture per model: a new size or recipe replaces the old one
        current.close()
        model._dreamy_runner = None
        torch.cuda.empty_cache()
    runner = GraphRunner(model, recipe, n, embed_shape, level)
    model._dreamy_runner = runner
    return runner


def drop(model: SDModel) -> None:
    """Forget the model's capture and put its weights back in stock layout (generic path next)."""
    current = getattr(model, "_dreamy_runner", None)
    if current is not None:
        current.close()
        model._dreamy_runner = None
    if getattr(model, "_dreamy_channels_last", False):
        set_layout(model, False)
