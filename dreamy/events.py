"""Progress events and the cancel token shared by every long job (dream, train, enlarge, sweep).

Data flows one way: a job calls ``on_progress(Progress)`` and checks ``cancel`` between steps;
it never reaches back into whoever started it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Cancelled


@dataclass(frozen=True)
class Progress:
    job: str  # dream | train | enlarge | sweep
    step: int  # steps done in the current item
    steps: int
    item: int = 0  # items (images, tiles, checkpoints) done before this one
    items: int = 1
    message: str = ""

    @property
    def fraction(self) -> float:
        per_item = 1.0 / max(self.items, 1)
        return min(1.0, (self.item + self.step / max(self.steps, 1)) * per_item)


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Set from any thread (a Stop button, a signal handler); jobs check it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("Stopped on request; everything finished before the stop was kept.")
