"""Turning what goes wrong inside a job into one sentence for a person, out-of-memory included.

Dreamy's own errors already are such sentences. Running out of GPU (or CPU) memory is the other
failure people meet daily; it becomes a message with a suggestion that fits the job, the cache of
freed blocks is handed back, and the loaded model stays loaded so the next job can run.
"""

from __future__ import annotations

import gc

from .errors import DreamyError

SUGGESTIONS = {
    "dream": "lower the batch size or the image size, or close other programs using the GPU",
    "sweep": "lower the batch size or the image size, or close other programs using the GPU",
    "train": "use LoRA, turn on gradient checkpointing, or lower the resolution or batch size",
    "enlarge": "enlarge a smaller picture, lower the scale, or turn on the tiled VAE",
}


class OutOfMemory(DreamyError):
    """A job ran out of GPU or CPU memory; the message says what to try."""


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError | MemoryError) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError))


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def user_error(exc: BaseException, job: str) -> DreamyError | None:
    """A DreamyError to show for ``exc``, or None when it is a bug (to be logged with its traceback)."""
    if isinstance(exc, DreamyError):
        return exc
    if is_out_of_memory(exc):
        free_memory()
        where = "GPU memory" if "cuda" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError" else "memory"
        return OutOfMemory(f"Out of {where} during {job}: {SUGGESTIONS.get(job, 'try a smaller job')}. "
                           "The model is still loaded; the next job can run.")
    return None
