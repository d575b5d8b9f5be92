"""What ``train()`` yields while it runs: one small record per thing that happened.

A caller (CLI progress bar, studio tab, test) reads them in order; none of them reaches back into
the loop. ``progress()`` turns any of them into the shared ``Progress`` record for a bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..events import Progress


@dataclass(frozen=True)
class TrainEvent:
    step: int  # optimizer steps done so far
    total: int  # steps the run will do

    def progress(self) -> Progress:
        return Progress("train", self.step, self.total, message=self.describe())

    def describe(self) -> str:
        return f"step {self.step}/{self.total}"


@dataclass(frozen=True)
class Started(TrainEvent):
    run_dir: Path
    resumed_from: int | None
    images: tuple[str, ...]  # one line per file: what was done to it, or why it was skipped

    def describe(self) -> str:
        how = f"resumed at step {self.resumed_from}" if self.resumed_from is not None else "started"
        return f"{how}: {self.run_dir}"


@dataclass(frozen=True)
class Notice(TrainEvent):
    message: str

    def describe(self) -> str:
        return self.message


@dataclass(frozen=True)
class StepDone(TrainEvent):
    loss: float
    lr: float
    elapsed_s: float
    eta_s: float

    def describe(self) -> str:
        return f"step {self.step}/{self.total} loss {self.loss:.4f} lr {self.lr:.2e}"


@dataclass(frozen=True)
class CheckpointSaved(TrainEvent):
    path: Path

    def describe(self) -> str:
        return f"checkpoint {self.path.name}"


@dataclass(frozen=True)
class ValidationDone(TrainEvent):
    images: tuple[Path, ...]
    grid: Path

    def describe(self) -> str:
        return f"validation at step {self.step}: {len(self.images)} images"


@dataclass(frozen=True)
class Finished(TrainEvent):
    run_dir: Path
    checkpoint: Path | None  # the last checkpoint written (the trained model)
    stopped: bool  # True when a stop request ended the run early
    files: dict[str, Path] = field(default_factory=dict)  # grid, loss plot, log

    def describe(self) -> str:
        return f"{'stopped' if self.stopped else 'finished'} at step {self.step}"
