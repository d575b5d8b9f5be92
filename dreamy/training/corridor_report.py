"""Reading a run's corridor.json for people: the CLI's table, the model card's section, the Train
tab's curves. No torch here: the studio and the CLI read the meter without loading an engine."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..layout import step_of

CORRIDOR_FILE = "corridor.json"
SIGNALS = ("drift", "gap", "diversity", "retention")  # these mark the corridor
DREAM_SIGNALS = ("dream_drift", "dream_diversity")  # read from the validation dreams: informational
_HEAD = {"drift": "drift", "gap": "gap", "diversity": "diversity", "retention": "retention",
         "dream_drift": "dream drift", "dream_diversity": "dream div."}


def read_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """corridor.json's rows, by step ([] when there is none, or it cannot be read)."""
    try:
        data = json.loads((Path(run_dir) / CORRIDOR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    rows = data.get("rows") if isinstance(data, dict) else None
    return sorted((r for r in rows or [] if isinstance(r, dict) and isinstance(r.get("step"), int)),
                  key=lambda r: r["step"])


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) and math.isfinite(v) else "-"


def table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A fixed-width table: step, the four signals, the two dream signals, the mark and why."""
    cols = ("step", *SIGNALS, *DREAM_SIGNALS)
    widths = [max(len(_HEAD.get(c, c)), 6) for c in cols]
    head = "  ".join(_HEAD.get(c, c).rjust(w) for c, w in zip(cols, widths, strict=True)) + "  mark"
    out = [head, "-" * len(head)]
    for r in rows:
        cells = [str(r["step"]).rjust(widths[0])] + [_num(r.get(c)).rjust(w) for c, w in zip(cols[1:], widths[1:], strict=True)]
        why = f" ({r['why']})" if r.get("why") else ""
        out.append("  ".join(cells) + f"  {r.get('mark', '-')}{why}")
    return out


MARK_LEVEL = {"before": 0.0, "inside": 0.5, "past": 1.0}  # the marks as a series on the signals' 0-1 scale
MARK_SERIES = "mark"  # its levels: MARK_LEVEL


def curves(rows: list[dict[str, Any]], marks: bool = True) -> list[dict[str, Any]]:
    """``rows`` (read_rows) in long form for a line plot: one {"step", "signal", "value", "mark"} per
    measured signal and step (None and non-finite values left out). With ``marks``, each marked step
    also gets a point of the series MARK_SERIES at 0 (before), 0.5 (inside) or 1 (past), so the plot
    shows where the run entered and left the corridor beside the signals that decided it."""
    out = []
    for r in rows:
        for name in SIGNALS:
            v = r.get(name)
            if isinstance(v, int | float) and math.isfinite(v):
                out.append({"step": r["step"], "signal": name, "value": float(v), "mark": r.get("mark", "")})
        if marks and r.get("mark") in MARK_LEVEL:
            out.append({"step": r["step"], "signal": MARK_SERIES, "value": MARK_LEVEL[r["mark"]], "mark": r["mark"]})
    return out


def curve_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The four signals of a run's corridor.json in long form (:func:`curves` without the marks)."""
    return curves(read_rows(run_dir), marks=False)


def marks_line(rows: list[dict[str, Any]]) -> str:
    """Each measured step's mark in words, e.g. "Marks: step 0 before · step 200 inside · step 400 past
    (retention 0.41 <= 0.5)." (the reason only where a step is past); "" when nothing is measured."""
    said = [f"step {r['step']} {r.get('mark', '-')}" + (f" ({r['why']})" if r.get("why") and r.get("mark") == "past"
                                                          else "") for r in rows]
    return f"Marks: {' · '.join(said)}." if said else ""


def summary(run_dir: str | Path) -> str:
    """One line for a status: the newest measured step and its mark, e.g. "Corridor: step 400 is inside
    (drift 0.31 >= 0.2)"; "" when nothing is measured."""
    rows = read_rows(run_dir)
    if not rows:
        return ""
    r = rows[-1]
    why = f" ({r['why']})" if r.get("why") else ""
    return f"Corridor: step {r['step']} is {r.get('mark', '-')}{why}."


def run_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint folder (``<run>/checkpoints/step-XXXX`` or ``<run>/step-XXXX``)."""
    p = Path(checkpoint)
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def card_section(checkpoint: str | Path) -> list[str]:
    """Markdown lines for a model card: the exported step's mark and the run's table (that step in
    bold); [] when the run has no corridor.json."""
    rows = read_rows(run_of(checkpoint))
    if not rows:
        return []
    step = step_of(checkpoint)
    this = next((r for r in rows if r["step"] == step), None)
    lines = ["## Corridor meter", ""]
    if this is not None:
        why = f" ({this['why']})" if this.get("why") else ""
        lines += [f"This checkpoint (step {step}) is marked **{this.get('mark', '-')}** the corridor{why}.", ""]
    lines += ["Signals against the base model (docs/corridor.md): drift and gap rise as the model is pulled "
              "toward its training photos; diversity and retention fall as it collapses and forgets language.", "",
              "| step | " + " | ".join(_HEAD[c] for c in (*SIGNALS, *DREAM_SIGNALS)) + " | mark |",
              "|---:|" + "---:|" * (len(SIGNALS) + len(DREAM_SIGNALS)) + ":---|"]
    for r in rows:
        b = "**" if r["step"] == step else ""
        cells = [f"{b}{r['step']}{b}", *(_num(r.get(c)) for c in (*SIGNALS, *DREAM_SIGNALS)), f"{b}{r.get('mark', '-')}{b}"]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]
