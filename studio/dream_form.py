"""The Dream form's pieces that are not layout: its settings in API order, the quick try, the plain
progress line, the form's values as core overrides, how a re-dream compares with its PNG, a prompt
file into the prompt sweep, and what "Add selected to training set" says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from dreamy.errors import DreamyError

from .errors import user_errors
from .widgets import locked_updates, overrides_from, quick_try_values

# the form's settings, in the order of the API's parameters (those after "height" came later: optional)
FIELDS = ["prompt", "negative_prompt", "guidance", "steps", "width", "height", "sampler", "prompt_syntax", "scheduler"]


def quick_try(preset: str, *now: Any) -> list:
    """Quick try: the quick-try preset's changes (size, steps) put into the form over ``preset``, with
    Unlock ticked, so the dream records them as unlocked changes of the preset the visitor chose."""
    with user_errors("dream"):
        values = dict(zip(FIELDS, now, strict=True)) | quick_try_values("dream")
        return [True, *locked_updates(preset, "dream", FIELDS, True, values, marks=True)]


def quick_label() -> str:
    try:
        q = quick_try_values("dream")
    except DreamyError:
        return "small and short"
    size = f"{q['width']} px" if q.get("width") == q.get("height") and "width" in q else ""
    return " · ".join(x for x in (size, f"{q['steps']} steps" if "steps" in q else "") if x) or "small and short"


def settings_from(names: list[str], values: tuple) -> dict[str, Any]:
    """The form's values as the core's overrides; sampler, prompt syntax and scheduler left out (an API
    client of before they were in the form) are the preset's."""
    later = ("sampler", "prompt_syntax", "scheduler")
    return overrides_from(*zip(*[(n, v) for n, v in zip(names, values, strict=True)
                                 if not (n in later and v is None)], strict=True))


def progress_line(progress: Any, batch: int = 1) -> Any:
    """The core's progress events as one plain line on the gallery's progress bar: "picture 2 of 4 ·
    step 12/50" (a batch: "pictures 1-4 of 16"), and, once the pace is known, the time left."""
    import time

    started = time.monotonic()

    def show(e: Any) -> None:
        first, last = e.item + 1, min(e.item + max(batch, 1), e.items)
        what = f"picture {first} of {e.items}" if first == last else f"pictures {first}-{last} of {e.items}"
        line = f"{what} · step {e.step}/{e.steps}"
        spent, f = time.monotonic() - started, e.fraction
        if spent > 3 and 0.02 < f < 1:  # this run's own pace, never an earlier run's
            line += f" · about {_duration(spent / f * (1 - f))} left"
        progress(f, desc=line)

    return show


def _duration(seconds: float) -> str:
    return f"{round(seconds)} s" if seconds < 90 else f"{round(seconds / 60)} min"


def sameness(dropped: str, again: str | Path) -> str:
    """How a re-dreamed PNG compares with the one dropped: byte-identical (same pixels and recipe), the
    same pixels, or how far its pixels are off."""
    import numpy as np
    from PIL import Image

    a, b = Path(dropped).read_bytes(), Path(again).read_bytes()
    if a == b:
        return "**byte-identical** to the PNG you dropped"
    with Image.open(dropped) as x, Image.open(again) as y:
        if x.size != y.size:
            return f"a different size from the PNG you dropped ({x.width}×{x.height} there)"
        diff = np.abs(np.asarray(x.convert("RGB"), np.int16) - np.asarray(y.convert("RGB"), np.int16))
    if not diff.any():
        return "the same pixels as the PNG you dropped (its file differs: another Dreamy version wrote the recipe)"
    return (f"**not identical**: {np.count_nonzero(diff.any(axis=-1)) / diff[..., 0].size:.1%} of the pixels differ, "
            f"by at most {int(diff.max())} of 255 (another device, dtype or library version)")


def load_prompt_file(path: str | None) -> str:
    """A prompt file's prompts into the prompt sweep's box, one a line (# lines and blank lines left out)."""
    from dreamy.dreaming.prompt_sweeps import read_prompt_file

    with user_errors("sweep"):
        if not path:
            raise gr.Error("Choose a text file of prompts, one a line.")
        return "\n".join(read_prompt_file(path))


def added_status(kept: Any) -> str:
    """What "Add selected to training set" says: the picture, its caption (or why none), the set."""
    if not kept.added:
        raise gr.Error("; ".join(kept.notes) or "Nothing was added.")
    caption = kept.added[0].with_suffix(".txt")
    said = f" with its caption *{caption.read_text('utf-8').strip()[:200]}*" if caption.is_file() else ""
    notes = "".join(f"\n\n⚠ {n}" for n in kept.notes)
    return (f"Added `{kept.added[0].name}`{said} to training set **{kept.name}** ({kept.files} files); "
            f"train on it in the Train tab with captions from files.{notes}")
