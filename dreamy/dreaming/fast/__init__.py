"""The CUDA fast path for Dream: whole-loop CUDA graphs (bit-exact), optionally over torch.compile.

``dream_iter`` asks ``select`` for a fast dream; ``None`` means the generic loop runs (CPU, MPS,
an old GPU, an unvalidated sampler, ``fast=False``/``DREAMY_FAST=0``, or a capture that failed).
policy.py decides, program.py is the captured op sequence, graphs.py captures and replays it.

One capture is kept per model (for the last recipe and batch size); a sweep with another size or
recipe re-captures. Progress is reported per batch and cancel is checked between batches, since
a replayed loop cannot call back into Python between steps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from PIL import Image

from ...events import CancelToken, Progress, ProgressCallback
from ...models.sources import SDModel
from ...recipes.recipe import Recipe
from .policy import DEFAULT_LEVEL, ENV, LEVELS, padded, plan_batches, resolve_level, unsupported_reason

__all__ = ["DEFAULT_LEVEL", "ENV", "LEVELS", "FastDream", "select", "drop_fast_state", "captured"]

log = logging.getLogger(__name__)
_LABELS = {"graph": "cuda-graph", "compile": "cuda-graph+compile"}


@dataclass
class FastDream:
    level: str
    runner: object  # graphs.GraphRunner (imported lazily: it needs CUDA only when used)
    chunks: list[list[int]]

    @property
    def label(self) -> str:
        """Recorded in the recipe's runtime: the compile level's bits differ from stock's."""
        return _LABELS[self.level]

    def batches(
        self,
        model: SDModel,
        recipe: Recipe,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[tuple[list[int], list[Image.Image], bool]]:
        """(seeds, images, vae_upcast) per batch. Batch k+1 is queued on the GPU before batch k is
        handed over, so saving PNGs overlaps the next batch's dreaming."""
        from ..blocks import initial_noise

        s = recipe.settings
        total = sum(len(c) for c in self.chunks)
        runner = self.runner
        pending = None
        start = 0
        for chunk in self.chunks:
            if cancel is not None:
                cancel.check()
            noise = torch.cat([initial_noise(model, seed, s.width, s.height) for seed in padded(chunk, runner.n)])
            launched = (start, chunk, runner.launch(noise, cond, uncond))
            start += len(chunk)
            if pending is not None:
                yield self._collect(*pending, total, s.steps, on_progress)
            pending = launched
        if pending is not None:
            yield self._collect(*pending, total, s.steps, on_progress)

    def _collect(self, start, chunk, launched, total, steps, on_progress):
        images, upcast = self.runner.finish(launched, len(chunk))
        if on_progress is not None:
            on_progress(Progress("dream", steps, steps, item=start, items=total,
                                 message=f"seeds {start + 1}-{start + len(chunk)} of {total}"))
        return chunk, images, upcast


def select(
    model: SDModel,
    recipe: Recipe,
    seeds: list[int],
    batch_size: int,
    embed_shape: tuple[int, ...],
    fast: bool | str | None = None,
) -> FastDream | None:
    """A captured fast dream for these seeds, or None for the generic path (the reason is logged)."""
    level = resolve_level(fast)
    if level == "off":
        drop_fast_state(model)
        return None
    reason = unsupported_reason(model.device, recipe.settings.sampler) or getattr(model, "_dreamy_fast_failed", None)
    if reason:
        (log.warning if fast else log.info)("Dreaming on the generic path: %s.", reason)
        drop_fast_state(model)
        return None
    from .graphs import runner_for

    n, chunks = plan_batches(seeds, batch_size)
    for lvl in (level, "graph") if level == "compile" else (level,):
        try:
            return FastDream(lvl, runner_for(model, recipe, n, embed_shape, lvl), chunks)
        except Exception as e:  # any capture or compile failure must still leave a working dream
            log.warning("The CUDA fast path (%s) failed and is skipped: %s: %s", lvl, type(e).__name__, e,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            drop_fast_state(model)
    model._dreamy_fast_failed = "its capture failed earlier in this session"
    return None


def captured(model: SDModel) -> bool:
    """Whether ``model`` holds a capture (its next dream with the same recipe and batch replays it).

    A capture must not overlap a device-wide synchronize from another thread (bitsandbytes' optimizers
    call one every step): Train renders a validation row beside its loop only once this is true."""
    return getattr(model, "_dreamy_runner", None) is not None


def drop_fast_state(model: SDModel) -> None:
    """Free a model's capture and restore stock weight layout; a no-op for models that never went fast."""
    if getattr(model, "_dreamy_runner", None) is None and not getattr(model, "_dreamy_channels_last", False):
        return
    from .graphs import drop

    drop(model)
