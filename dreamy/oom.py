"""Out-of-memory on the GPU becomes a clear message; the loaded model stays and the next job runs."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch

from .errors import DreamyError


class OutOfMemory(DreamyError):
    """The accelerator ran out of memory; nothing was lost and the model is still loaded."""


_ADVICE = {
    "dream": "lower the batch size, or close other programs using the GPU",
    "sweep": "lower the batch size, or run fewer processes per GPU",
    "train": "use LoRA mode or a smaller resolution, or close other programs using the GPU",
    "enlarge": "turn tiling on or use a smaller tile size, or a smaller scale",
}


def _is_oom(err: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(err, oom_types) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


@contextlib.contextmanager
def explain_oom(job: str) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into OutOfMemory, after freeing cached memory."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - only OOM is translated; everything else re-raises unchanged
        if not _is_oom(err):
            raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(f"The GPU ran out of memory during {job}; {_ADVICE.get(job, 'try smaller settings')}. "
                          "The model is still loaded and the next job can run.") from None
