"""Stream a job's pictures into a gallery as they land, with Stop: the one loop behind Dream and the
prompt sweep."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from dreamy.dreaming.streams import Ended, Landed
from dreamy.events import CancelToken

from .session import Studio

UPDATE_EVERY_S = 0.5  # the longest a landed picture waits for its batch's update


def stream_into_gallery(
    studio: Studio,
    request: gr.Request | None,
    job: str,
    folder: str,
    pictures: Callable[[CancelToken, Path], Iterable[Landed | Ended]],
    caption: Callable[[Any], tuple[Path, str]],
    label: Callable[[Any], str] = lambda item: "",
    batch: int = 1,
) -> Iterator[tuple]:
    """Run ``pictures(cancel, out)`` (one core stream writing into a fresh ``outputs/<folder>/…``),
    yielding (gallery, sheet, status, paths, selected) after each picture and once more at the end.

    ``caption(item)`` gives a picture's (PNG path, caption), ``label(item)`` a note for the status
    line (from the first picture). Pictures that land together (a batch of ``batch`` seeds is decoded
    at once) go to the browser in one update at the batch's end, or after ``UPDATE_EVERY_S``: every
    update re-sends the whole gallery, which Gradio hashes file by file, so one update per picture
    made a batch's cost grow with the square of its size. Stop ends the job at its next step: the core draws the sheet of
    the finished pictures and says it stopped; the outcome is kept for the Stop button, and a job
    stopped before its first picture (or refused) leaves no folder behind.
    """
    done: list[Any] = []

    def gallery() -> list[tuple[str, str]]:
        return [(str(path), text) for path, text in map(caption, done)]

    def notes() -> str:
        said: list[str] = []
        for item in done:
            said += [n for n in getattr(item, "notes", []) if n not in said]
        return "".join(f"\n\n⚠ {n}" for n in said)

    def paths() -> list[str]:
        return [str(caption(item)[0]) for item in done]

    with studio.job_folder(folder) as out, studio.running(request, job) as token:
        end: Ended | None = None
        shown = time.monotonic()
        for event in pictures(token, out):
            if isinstance(event, Ended):
                end = event
                continue
            done.append(event.item)
            if event.done % max(1, batch) and event.done != event.total and time.monotonic() - shown < UPDATE_EVERY_S:
                continue  # more of this batch follow at once
            shown = time.monotonic()
            note = label(done[0])
            yield gallery(), None, f"{event.done} of {event.total} · `{studio.where(out)}`{note}{notes()}", paths(), None
        assert end is not None, "a core stream ends with Ended"
        if end.sheet is None:
            final = ([], None, "Stopped before the first image.", [], None)
        else:
            said = f"Stopped after {end.done} of {end.total}" if end.stopped else f"{end.done} dreamed"
            final = (gallery(), str(end.sheet), f"{said} · `{studio.where(out)}`{label(done[0])}{notes()}", paths(), None)
        if end.stopped:
            studio.record(request, job, (final[2], final[1]))
    yield final
