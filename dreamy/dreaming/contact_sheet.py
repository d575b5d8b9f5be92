"""Contact sheets: a labelled grid of a sweep, one cell per image, its label (seed, step) underneath."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..png.metadata import save_png

_LABEL_H = 24
_PAD = 4


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def grid(
    cells: Sequence[tuple[str, Image.Image]],
    columns: int | None = None,
    cell: int = 256,
    row_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Images in a grid with ``label`` under each; optional labels down the left edge."""
    n = len(cells)
    if n == 0:
        raise ValueError("a contact sheet needs at least one image")
    columns = columns or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / columns)
    left = 0
    font = _font(14)
    if row_labels:
        left = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(lbl, font=font)) for lbl in row_labels) + 2 * _PAD
    w = left + columns * (cell + _PAD) + _PAD
    h = rows * (cell + _LABEL_H + _PAD) + _PAD
    sheet = Image.new("RGB", (w, h), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(cells):
        r, c = divmod(i, columns)
        x = left + _PAD + c * (cell + _PAD)
        y = _PAD + r * (cell + _LABEL_H + _PAD)
        thumb = image.convert("RGB")
        thumb.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        tw = draw.textlength(label, font=font)
        draw.text((x + (cell - tw) / 2, y + cell + 4), label, fill=(230, 230, 230), font=font)
    for r, lbl in enumerate(row_labels or ()):
        y = _PAD + r * (cell + _LABEL_H + _PAD) + cell // 2
        draw.text((_PAD, y), lbl, fill=(230, 230, 230), font=font)
    return sheet


def write_contact_sheet(results: Sequence[Any], path: Path, cell: int = 256) -> Path:
    """A sheet of DreamImages labelled by seed; its PNG lists the seeds and the shared recipe."""
    cells = [(f"seed {r.seed}", r.image) for r in results]
    sheet = grid(cells, cell=cell)
    shared = results[0].recipe.replace(seed=None)
    info = {"seeds": [r.seed for r in results], "files": [r.path.name if r.path else None for r in results]}
    return save_png(sheet, path, shared, extra={"dreamy_sheet": json.dumps(info)})
