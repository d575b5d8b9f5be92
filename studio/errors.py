"""The studio's error boundary: a core error becomes the visitor's one sentence, a bug a short note."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from dreamy.errors import LockedFieldError, user_error

log = logging.getLogger("dreamy.studio")


@contextmanager
def user_errors(job: str) -> Iterator[None]:
    """Core errors (and out-of-memory) become a gr.Error with their one sentence; bugs are logged,
    and the visitor gets a short message instead of a traceback."""
    try:
        yield
    except gr.Error as e:
        e.print_exception = False  # a message for the visitor, not a bug: keep the log clean
        raise
    except Exception as e:  # noqa: BLE001 - this is the boundary where every failure gets a message
        err = user_error(e, job)
        if err is None:
            log.exception("Unexpected error during %s", job)
            raise gr.Error(f"Unexpected {type(e).__name__} during {job}; the details are in the studio's log.",
                           title="Something broke") from None
        hint = " In the studio: tick Unlock." if isinstance(err, LockedFieldError) else ""
        raise gr.Error(str(err) + hint, print_exception=False) from None


def on_gpu(fn, duration: int = 120):
    """``@spaces.GPU`` on Hugging Face ZeroGPU Spaces (a no-op elsewhere, and when spaces is absent)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
