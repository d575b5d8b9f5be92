"""Runs side by side: the checkpoint x seed grid of two or more training runs (say, AdamW vs Prodigy).

Rows are steps, matched across runs (the base model first, then every step any run has); each run is
one block of seed columns under its name, so a row reads "this step, run A's seeds | run B's seeds".
A step one run has and another lacks is a dark cell marked "no checkpoint". Every cell was dreamed
with the same seeds and the same recipe (one prompt: the runs' validation prompt, say), which is what
makes the comparison fair: the loss does not say which step is best, the pictures do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..png.metadata import save_png
from .contact_sheet import _font, grid

HEADER_H = 28  # px: the band that names each run above its block
GAP = 16  # px between two runs' blocks
CELL = 128  # px: a cell of the grid, as the one-run grid draws it


def step_order(label: str) -> tuple[int, str]:
    """Where a row goes: the base model (step 0) first, then by step number, unknown labels last."""
    m = re.search(r"step (\d+)", label)
    return (int(m.group(1)) if m else 1 << 62, label)


def draw_runs_grid(plan: Any, seeds: Sequence[int], path: Path, cell: int = CELL) -> Path:
    """The side-by-side grid of a sweep over several runs (a :class:`dreamy.dreaming.sweeps.SweepPlan`
    whose rows carry ``block`` and ``step``), written as a PNG at ``path`` whose ``dreamy_runs_grid``
    text chunk lists ``{"runs", "steps", "seeds"}``. Cells are ``cell`` px squares; a picture not on
    disk (a stopped sweep, a step the run lacks) is a dark square. Returns ``path``."""
    blocks = list(dict.fromkeys(r.block for r in plan.rows))
    steps = sorted(dict.fromkeys(r.step for r in plan.rows), key=step_order)
    where = {(r.block, r.step): m for m, r in enumerate(plan.rows)}
    blank = Image.new("RGB", (8, 8), (40, 40, 40))
    drawn = []
    for b, block in enumerate(blocks):
        cells = []
        for step in steps:
            m = where.get((block, step))
            for s in seeds:
                if m is None:
                    cells.append(("no checkpoint", blank))
                elif plan.path(m, s).exists():
                    with Image.open(plan.path(m, s)) as im:
                        cells.append((f"seed {s}", im.convert("RGB")))
                else:
                    cells.append((f"seed {s} (missing)", blank))
        # the step labels once, down the first block's left edge: rows line up across blocks
        drawn.append(grid(cells, columns=len(seeds), cell=cell, row_labels=steps if b == 0 else None))
    width = sum(g.width for g in drawn) + GAP * (len(drawn) - 1)
    sheet = Image.new("RGB", (width, HEADER_H + max(g.height for g in drawn)), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    font = _font(16)
    x = 0
    for b, (block, g) in enumerate(zip(blocks, drawn, strict=True)):
        sheet.paste(g, (x, HEADER_H))
        # a block's columns start after the row labels (first block only); its title is centred over them
        left = x + (g.width - len(seeds) * (cell + 4) - 4 if b == 0 else 0)
        span = g.width - (left - x)
        title = block if draw.textlength(block, font=font) <= span - 8 else block[: max(4, span // 9)] + "…"
        draw.text((left + (span - draw.textlength(title, font=font)) / 2, 6), title, fill=(250, 250, 250), font=font)
        draw.line([(left + 4, HEADER_H - 3), (x + g.width - 4, HEADER_H - 3)], fill=(120, 120, 120), width=1)
        x += g.width + GAP
    info = {"runs": blocks, "steps": steps, "seeds": list(seeds)}
    return save_png(sheet, Path(path), extra={"dreamy_runs_grid": json.dumps(info)})
