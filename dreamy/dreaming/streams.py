"""Streamed picture jobs (a dream, a prompt sweep): each picture as it lands, then the sheet drawn from
the finished ones, Stop included. What the studio's gallery shows, as the core's one call."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Cancelled


@dataclass(frozen=True)
class Landed:
    """One finished picture of a streamed job."""

    item: Any  # a DreamImage (dream) or a SweepCell (prompt sweep), its PNG written
    done: int  # pictures finished so far, this one included
    total: int  # pictures the job makes when nothing stops it


@dataclass(frozen=True)
class Ended:
    """The last thing a streamed job yields: what it drew from the pictures it finished."""

    sheet: Path | None  # the contact sheet or grid (a single dream: its one PNG); None if nothing finished
    done: int
    total: int
    stopped: bool  # the cancel token ended it early; the finished pictures are kept


def stream(pictures: Iterable[Any], total: int, draw: Callable[[list[Any]], Path]) -> Iterator[Landed | Ended]:
    """Yield ``Landed`` per picture of ``pictures``, then ``Ended`` with ``draw(finished)``.

    A ``Cancelled`` from ``pictures`` ends the stream like its last picture does: the sheet of what
    finished is drawn and ``Ended.stopped`` says so. Any other error propagates, with nothing drawn.
    """
    done: list[Any] = []
    stopped = False
    try:
        for item in pictures:
            done.append(item)
            yield Landed(item, len(done), total)
    except Cancelled:
        stopped = True
    yield Ended(draw(done) if done else None, len(done), total, stopped)
