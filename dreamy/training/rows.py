"""Validation rows beside the training loop: one render in flight at most, on its own CUDA stream.

A checkpoint's row used to hold the loop for 4–7 s on an H200 (issue #18): ~1.3 s of GPU work for
four pictures, the rest waiting for the checkpoint's content hash that the PNG recipes name. Now the
loop puts the checkpoint's fp16 parts into the validation model (on the training stream), hands the
render to ``RowRenderer`` and trains on; the render runs in a thread on a stream of its own (after
the put, in stream order), waits for the hash only when it saves its first PNG, and its
``ValidationDone`` is handed back to the loop, which yields it after the next step. The corridor
meter follows the render in the same job, on the same model (the checkpoint's fp16 parts).

The pictures are the same as a render in the loop: the validation model is a separate copy that
only this thread touches while a row is in flight (the loop waits for a row before it puts the next
checkpoint in), and kernels do not depend on what else runs on the GPU. On the CPU the rows render
in the loop as before (a second thread would only halve the cores each side gets); set
``DREAMY_VALIDATE_BACKGROUND=1`` to use the thread there too (the tests do). A row that captures
Dream's CUDA graphs (the run's first) renders in the loop: a capture fails if another thread
synchronizes the device meanwhile, as bitsandbytes' optimizers do every step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..errors import Cancelled
from .events import TrainEvent

Job = Callable[[], list[TrainEvent]]  # a row's ValidationDone, then the corridor meter's Notice if it failed


def background_rows(device: torch.device) -> bool:
    """Whether rows render beside the loop: on CUDA, or wherever ``DREAMY_VALIDATE_BACKGROUND`` says so."""
    env = os.environ.get("DREAMY_VALIDATE_BACKGROUND", "").strip()
    if env in ("0", "1"):
        return env == "1"
    return device.type == "cuda"


class RowRenderer:
    """Runs validation rows one at a time, beside the caller (``background``) or in its thread."""

    def __init__(self, device: torch.device, background: bool) -> None:
        self.device, self.background = device, background
        self._pool: ThreadPoolExecutor | None = None
        self._stream: torch.cuda.Stream | None = None
        self._future: Future | None = None

    def start(self, job: Job, inline: bool = False) -> None:
        """Render a row: ``job`` renders it and returns its events (Cancelled: a Stop cut it).

        Call ``results(wait=True)`` first: the model ``job`` renders on must be free. On CUDA the job
        starts after the work queued so far on the caller's stream (the checkpoint's parts put in).
        ``inline`` renders it in the caller's thread whatever ``background`` says (a row whose
        render captures Dream's CUDA graphs: no other thread may synchronize the device meanwhile)."""
        if self._future is not None:
            raise RuntimeError("a validation row is already in flight")
        if inline or not self.background:
            self._future = Future()
            try:
                self._future.set_result(job())
            except BaseException as e:  # noqa: BLE001 - handed to results(), as the thread's would be
                self._future.set_exception(e)
            return
        ready = None
        if self.device.type == "cuda":
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dreamy-validation")
        self._future = self._pool.submit(self._run, job, ready)

    def _run(self, job: Job, ready: torch.cuda.Event | None) -> list[TrainEvent]:
        if self._stream is None or ready is None:
            return job()
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            try:
                return job()
            finally:  # the loop may put the next checkpoint in once every kernel of this row is done
                self._stream.synchronize()

    def results(self, wait: bool = False) -> Iterator[TrainEvent]:
        """The events of the row that has finished (``wait``: once it has); none while it still renders.

        A row cut by a Stop gives nothing (the resume renders it); any other error is raised here."""
        f = self._future
        if f is None or not (wait or f.done()):
            return
        self._future = None
        try:
            events = f.result()
        except Cancelled:
            return
        yield from events

    def close(self) -> None:
        """Wait for the row in flight (its error dropped: the caller is already ending) and stop the thread."""
        if self._future is not None:
            self._future.exception()
            self._future = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
