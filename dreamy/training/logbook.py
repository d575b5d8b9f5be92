"""The loss/LR log (one JSON line per optimizer step) and its plot, drawn with Pillow."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..atomic import file_mode
from ..dreaming.contact_sheet import _font
from ..png.metadata import save_png

LOG_NAME = "loss.jsonl"
PLOT_NAME = "loss.png"


class LossLog:
    """Appends one row per step; a resumed run first drops the rows after its checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by a crash
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                out.append(row)
        return out

    def truncate(self, last_step: int) -> None:
        """Keep rows up to ``last_step`` (atomically rewritten)."""
        keep = [r for r in self.rows() if r["step"] <= last_step]
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".loss-", suffix=".tmp")
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; the log is an ordinary file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(tmp, self.path)

    def append(self, **row: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _ema(values: list[float], span: int) -> list[float]:
    alpha, out, acc = 2 / (span + 1), [], None
    for v in values:
        acc = v if acc is None else acc + alpha * (v - acc)
        out.append(acc)
    return out


def plot(rows: list[dict[str, Any]], path: Path, size: tuple[int, int] = (900, 420)) -> Path | None:
    """Loss per step (faint), its moving average (bold) and the LR (orange, right axis)."""
    rows = [r for r in rows if isinstance(r.get("loss"), int | float) and math.isfinite(r["loss"])]
    if not rows:
        return None
    w, h = size
    left, right, top, bottom = 70, 80, 30, 40
    img = Image.new("RGB", size, (250, 250, 250))
    d = ImageDraw.Draw(img)
    font = _font(13)
    steps = [r["step"] for r in rows]
    loss = [float(r["loss"]) for r in rows]
    lr = [float(r.get("lr", 0.0)) for r in rows]
    s0, s1 = min(steps), max(max(steps), min(steps) + 1)
    l0, l1 = min(loss), max(loss)
    l1 = l1 if l1 > l0 else l0 + 1e-6
    lr1 = max(lr) or 1.0

    def x(step: float) -> float:
        return left + (step - s0) / (s1 - s0) * (w - left - right)

    def y(v: float, lo: float, hi: float) -> float:
        return top + (1 - (v - lo) / (hi - lo)) * (h - top - bottom)

    d.rectangle((left, top, w - right, h - bottom), outline=(120, 120, 120))
    for frac in (0.0, 0.5, 1.0):
        v = l0 + frac * (l1 - l0)
        d.text((4, y(v, l0, l1) - 7), f"{v:.4g}", fill=(40, 40, 40), font=font)
        d.text((w - right + 6, y(frac * lr1, 0, lr1) - 7), f"{frac * lr1:.2g}", fill=(200, 110, 0), font=font)
    d.text((left, h - bottom + 8), f"step {s0}", fill=(40, 40, 40), font=font)
    d.text((w - right - 60, h - bottom + 8), f"step {s1}", fill=(40, 40, 40), font=font)
    d.text((left, 8), "loss (blue: per step, dark: moving average)   lr (orange)", fill=(40, 40, 40), font=font)
    pts = [(x(s), y(v, l0, l1)) for s, v in zip(steps, loss, strict=True)]
    if len(pts) > 1:
        d.line(pts, fill=(170, 190, 230), width=1)
        d.line([(x(s), y(v, l0, l1)) for s, v in zip(steps, _ema(loss, 25), strict=True)], fill=(20, 50, 140), width=2)
        d.line([(x(s), y(v, 0, lr1)) for s, v in zip(steps, lr, strict=True)], fill=(230, 130, 0), width=2)
    else:
        d.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=(20, 50, 140))
    return save_png(img, path)
