"""Checkpoint writes beside the training loop: one background thread, at most one write in flight.

The loop hands a job (a function that writes one checkpoint from its snapshot) to ``submit`` and
trains on. ``wait`` blocks only while a previous write is still running, and raises what that write
raised (OutputError "Cannot write ...", a TrainError) in the loop's thread, as the synchronous write
did. A write tells the loop its content hash as soon as the inference files are on disk
(``PendingWrite.content_sha256``), so the validation PNGs can name the checkpoint before its resume
state is written. Each write is itself atomic (a hidden temporary folder renamed into place), so a
process killed mid-write leaves the earlier checkpoints as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PendingWrite:
    """A checkpoint being written to ``path``."""

    step: int
    path: Path
    future: Future = field(default_factory=Future)  # the path once the folder is in place
    _hash: Future = field(default_factory=Future)  # the checkpoint's content hash (checkpoint_sha256)

    def publish_hash(self, sha: str) -> None:
        if not self._hash.done():
            self._hash.set_result(sha)

    def content_sha256(self) -> str:
        """The checkpoint's content hash as Dream computes it; waits for its inference files (not the resume
        state). Raises the write's error if the write failed before it got there."""
        done = threading.Event()
        for f in (self._hash, self.future):
            f.add_done_callback(lambda _f: done.set())
        done.wait()
        if self._hash.done():
            return self._hash.result()
        self.future.result()  # raises the write's error
        raise RuntimeError("the checkpoint write ended without a content hash")  # pragma: no cover

    def done(self) -> bool:
        return self.future.done()


class CheckpointWriter:
    """One writer thread; ``submit`` a write, ``wait`` for the one in flight (re-raising its error)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self.pending: PendingWrite | None = None

    def submit(self, pending: PendingWrite, job: Callable[[PendingWrite], Path]) -> PendingWrite:
        """Start ``job(pending)`` in the background once the previous write is complete."""
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dreamy-checkpoint")
        inner = self._pool.submit(job, pending)

        def relay(f: Future) -> None:
            if f.exception() is not None:
                pending.future.set_exception(f.exception())
            else:
                pending.future.set_result(f.result())

        inner.add_done_callback(relay)
        self.pending = pending
        return pending

    def check(self) -> None:
        """Raise the error of a write that has already failed; never blocks."""
        if self.pending is not None and self.pending.done():
            self.wait()

    def wait(self) -> Path | None:
        """Block until no write is in flight; returns the last write's path (None if none), raises its error."""
        pending, self.pending = self.pending, None
        return None if pending is None else pending.future.result()

    def close(self, raising: bool = True) -> None:
        """Wait for the write in flight (a run that ends for any reason keeps its last checkpoint whole)
        and stop the thread; ``raising=False`` drops its error (another one is already on its way)."""
        try:
            if raising:
                self.wait()
            elif self.pending is not None:
                self.pending.future.exception()  # waits; the error is not raised
                self.pending = None
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
