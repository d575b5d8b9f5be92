"""User-facing errors: each carries one sentence that names the thing and what to do.

Every user-facing error class is defined here, grouped by what it is about; the module that raises
one imports it from here, so the older spelling (``from dreamy.images import ImageError``) still works.

Every entry point (CLI, studio, Python API) lets these through unchanged; the CLI prints the
sentence without a traceback, the studio shows it in a `gr.Error`. Running out of GPU (or CPU)
memory is the other failure people meet daily: ``user_error`` turns it into such a sentence with a
suggestion that fits the job, hands the freed cache back, and leaves the loaded model loaded.
"""

from __future__ import annotations

import gc

# --- The base -----------------------------------------------------------------------------------

class DreamyError(Exception):
    """Base class: ``str(err)`` is the whole message a user needs."""


# --- Models and where they come from (models/, enlarging/sources.py) --------------------------------

class SourceError(DreamyError):
    """A model source is missing, unreachable, corrupt or of the wrong kind."""


class TokenizerMissing(SourceError):
    """No cached copy of the CLIP tokenizer and nothing installed to build it from."""


class HubUnreachable(SourceError):
    """Weights are not in the local Hugging Face cache and cannot be downloaded now (offline, no
    connection, downloads turned off): callers with a default may fall back to the tiny demo."""


# --- Presets, settings, seeds and recipes (recipes/, png/) --------------------------------------------

class PresetError(DreamyError):
    """A preset file or a setting is invalid (file, key, expected type or range)."""


class LockedFieldError(PresetError):
    """A call tried to change a field the preset locks, without unlocking it."""


class SeedSyntaxError(DreamyError):
    """A seeds string could not be parsed."""


class RecallError(DreamyError):
    """A PNG carries no usable Dreamy recipe."""


# --- Files: paths, pictures, outputs (paths.py, images.py) --------------------------------------------

class PathError(DreamyError):
    """A path given by a user is outside what the studio may touch, or malformed."""


class ImageError(DreamyError):
    """An image file cannot be used; the message names the file and why."""


class OutputError(DreamyError):
    """An output could not be written (disk full, read-only folder); earlier outputs are intact."""


# --- Training (training/) ----------------------------------------------------------------------------

class TrainSetupError(DreamyError):
    """A training run cannot be set up (a missing package, an impossible combination)."""


class TrainError(TrainSetupError):
    """A run cannot start or continue (name taken, nothing to resume, diverged)."""


class TrainDataError(DreamyError):
    """The training images cannot be used (none usable, bad captions folder, ...)."""


class ExportError(DreamyError):
    """An export was asked for something the checkpoint does not have."""


class NonFiniteOutput(DreamyError):
    """A model produced NaN/inf (damaged weights, a diverged sampler); nothing was saved."""


def check_finite(tensor, what: str = "model") -> None:
    """Raise :class:`NonFiniteOutput` when ``tensor`` holds NaN or inf: the one check every picture
    (dream, sweeps, validation renders, enlarge) passes before it is saved."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteOutput(f"The {what} produced NaN/inf values; its weights look damaged (or the settings "
                              "made the sampler diverge), so nothing was saved.")


# --- Any job: stopped, or out of memory ----------------------------------------------------------------

class Cancelled(DreamyError):
    """A job was stopped through its cancel token; whatever it had finished is kept."""


class OutOfMemory(DreamyError):
    """A job ran out of GPU or CPU memory; the message says what to try."""


SUGGESTIONS = {
    "dream": "lower the batch size or the image size, or close other programs using the GPU",
    "sweep": "lower the batch size or the image size, or close other programs using the GPU",
    "train": "use LoRA, turn on gradient checkpointing, or lower the resolution or batch size",
    "enlarge": "enlarge a smaller picture, lower the scale, or turn on the tiled VAE",
}


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
