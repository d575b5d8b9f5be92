"""One running studio: where it reads and writes, what it may load, and each visitor's Stop.

A job registers a cancel token under (session, job), so Stop reaches only that visitor's jobs; a
stopped job leaves its outcome here for the Stop button, because the browser cancels its stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from dreamy.events import CancelToken
from dreamy.layout import claim_run_dir, release_if_empty
from dreamy.models.sources import DEFAULT_MODEL
from dreamy.paths import check_model_source, within

GPU = "gpu"  # the one queue every GPU job (dream, sweeps, train, enlarge) waits in


@dataclass
class Studio:
    """One running studio: where it reads and writes, what it may load, and who asked to stop."""

    default_model: str
    outputs: Path
    models: Path
    shared: bool = False  # reachable by others (share link or network): no hub downloads, no run history
    extra_models: tuple[str, ...] = ()  # sources named on the command line, allowed as they are
    prompt_model: str | None = None  # a local transformers text model for the prompt helper
    max_queue: int = 64
    max_file_size: str = "64mb"
    _tokens: dict[tuple[str, str], CancelToken] = field(default_factory=dict, repr=False)
    _outcomes: dict[tuple[str, str], tuple] = field(default_factory=dict, repr=False)  # (session, job) -> result
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def training_sets(self) -> Path:
        """``outputs/training-sets``; PathError if it is a link that leads out of outputs/."""
        folder = self.outputs / "training-sets"
        within(folder, [self.outputs], "training-sets folder")
        return folder

    def model_source(self, spec: str) -> str:
        """A model source from a widget or an API call, refused unless the studio may load it."""
        allowed = (self.default_model, DEFAULT_MODEL, *self.extra_models)
        return check_model_source(spec, [self.models], allowed=allowed, allow_hub=not self.shared)

    @contextmanager
    def job_folder(self, job: str) -> Iterator[Path]:
        """A fresh ``outputs/<job>/<time>/`` for one job, removed again if the job leaves it empty
        (refused by the core, failed, or stopped before its first file)."""
        folder = claim_run_dir(self.outputs, job)
        try:
            yield folder
        finally:
            release_if_empty(folder)

    def where(self, folder: Path) -> str:
        """A job folder as the page shows it: relative to the project (``outputs/dream/…``)."""
        try:
            return str(folder.relative_to(self.outputs.parent))
        except ValueError:
            return str(folder)

    # Stop: a fresh token per job, kept under (session, job) so Stop reaches only this visitor's jobs.
    def start(self, request: gr.Request | None, job: str) -> CancelToken:
        token = CancelToken()
        with self._lock:
            self._tokens[(session(request), job)] = token
            self._outcomes.pop((session(request), job), None)  # a previous run's, which no Stop collected
        return token

    def finish(self, request: gr.Request | None, job: str, token: CancelToken) -> None:
        with self._lock:
            if self._tokens.get((session(request), job)) is token:
                del self._tokens[(session(request), job)]

    @contextmanager
    def running(self, request: gr.Request | None, job: str) -> Iterator[CancelToken]:
        """``start`` ... ``finish`` around one job: its cancel token, for Stop, while it runs."""
        token = self.start(request, job)
        try:
            yield token
        finally:
            self.finish(request, job, token)

    def stop(self, request: gr.Request | None, jobs: Sequence[str] | None = None) -> int:
        """Cancel this session's running jobs (all, or those named); returns how many were running."""
        with self._lock:
            hits = self._running(session(request), jobs)
        for t in hits:
            t.cancel()
        return len(hits)

    def is_running(self, request: gr.Request | None, jobs: Sequence[str]) -> bool:
        """Whether one of this session's named jobs is still running."""
        with self._lock:
            return bool(self._running(session(request), jobs))

    def _running(self, me: str, jobs: Sequence[str] | None) -> list[CancelToken]:
        return [t for (s, j), t in self._tokens.items() if s == me and (jobs is None or j in jobs)]

    def record(self, request: gr.Request | None, job: str, outcome: tuple) -> None:
        """Keep what a stopped job ended with, for the Stop button that waits for it (the browser may
        cancel the job's own answer). Kept per job, so a Stop elsewhere never shows it."""
        with self._lock:
            self._outcomes[(session(request), job)] = outcome

    def stopped_outcome(self, request: gr.Request | None, jobs: Sequence[str], timeout: float = 30.0) -> tuple | None:
        """Wait (bounded) until this session's named jobs have wound down; their recorded outcome, if any."""
        me = session(request)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running(me, jobs):
                    found = [self._outcomes.pop((me, j)) for j in jobs if (me, j) in self._outcomes]
                    return found[-1] if found else None
            time.sleep(0.05)
        return None


def session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"
