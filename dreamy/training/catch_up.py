"""What a resumed run completes before training on: the parts of its story a killed run left out.

A run killed between renaming a checkpoint into place and rendering its validation row (or drawing
the loss plot) resumes from that very checkpoint: the row would never be made, and the grid, the
product of a run, would stay a row short. So a resume first lists what is missing up to the step it
resumes at: step 0's and each kept checkpoint's validation PNGs (for today's validation seeds), a
grid that shows every row on disk, the loss plot. The loop then renders each missing row with that
step's own weights (step 0: the set-up's, before the resume state is restored), see ``load_params``.
Rows of checkpoints that ``checkpoints_total_limit`` removed are kept as they are, never rendered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..layout import checkpoints as list_checkpoints
from ..models.checkpoints import damage
from .checkpoints import PART_PATHS, has_resume_state, read_masters, read_parts
from .logbook import PLOT_NAME
from .modes import Trainables
from .validation import grid_rows, validation_images

__all__ = ["PART_PATHS", "LeftOut", "left_out", "load_params"]


@dataclass
class LeftOut:
    """What a run is missing up to the step it resumes at; false when nothing is."""

    # (step, its checkpoint or None for step 0's base model, the validation seeds without a PNG), oldest first
    rows: list[tuple[int, Path | None, list[int]]] = field(default_factory=list)
    grid: bool = False  # the grid does not show the rows on disk (killed between a render and the grid)
    plot: bool = False  # there is no loss plot

    def __bool__(self) -> bool:
        return bool(self.rows or self.grid or self.plot)

    def describe(self) -> str:
        """The missing parts as a phrase, e.g. "the validation images of steps 0 and 12, the loss plot"."""
        what = []
        if self.rows:
            steps = [str(step) for step, _, _ in self.rows]
            said = steps[0] if len(steps) == 1 else f"{', '.join(steps[:-1])} and {steps[-1]}"
            what.append(f"the validation images of step{'s' if len(steps) > 1 else ''} {said}")
        if self.grid or self.rows:
            what.append("the grid")
        if self.plot:
            what.append("the loss plot")
        return ", ".join(what)


def left_out(run_dir: Path, seeds: Sequence[int], start: int) -> LeftOut:
    """What run ``run_dir``, resuming at step ``start``, lacks: the validation rows for ``seeds`` of step 0 and of
    every kept checkpoint up to ``start`` (only the missing seeds), a current grid, the loss plot."""
    found = validation_images(run_dir / "validation")
    rows: list[tuple[int, Path | None, list[int]]] = []
    if seeds:
        kept: list[tuple[int, Path | None]] = [(0, None), *((s, p) for s, p in list_checkpoints(run_dir)
                                                           if 0 < s <= start)]
        for step, path in kept:
            missing = [seed for seed in seeds if seed not in found.get(step, {})]
            if missing:
                rows.append((step, path, missing))
    shown = grid_rows(run_dir / "validation")
    grid = bool(seeds) and not rows and shown != {"steps": sorted(found), "seeds": list(seeds)}
    return LeftOut(rows, grid, not (run_dir / "logs" / PLOT_NAME).is_file())


def load_params(path: Path, tr: Trainables) -> str | None:
    """Put checkpoint ``path``'s trained tensors into the live ones: its fp32 masters while it keeps a resume
    state (the very weights its step trained), else its fp16 parts (the weights Dream loads from it).

    Returns why it cannot (a phrase: the damage found, or parts that do not fit this run), else None.
    """
    masters = has_resume_state(path)
    why = damage(path, resume=masters, cached=True)
    if why is not None:
        return why
    try:
        tensors = read_masters(path, list(tr.params)) if masters else tr.params_from_parts(read_parts(path))
        with torch.no_grad():
            for key, p in tr.params.items():
                p.copy_(tensors[key].to(p.device, p.dtype))
    except KeyError as e:
        return f"it holds no {e.args[0]}, so it is not this run's"
    except RuntimeError as e:  # a shape that does not fit: another run's checkpoint moved in
        return f"its weights do not fit this run ({str(e).splitlines()[0][:80]})"
    return None
