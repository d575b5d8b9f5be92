"""History in the studio: Train's *Open run* (a past run's loss, corridor curves, validation grid and
its cells, log and status, read back from disk) with a cell opening its checkpoint and seed in Dream,
and Dream's *Past dreams* (a past dream, prompt sweep, checkpoint grid or word back in the gallery).

The listing and reading is dreamy.history's; this module shapes it for widgets and wires the pickers.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from dreamy import history
from dreamy.errors import DreamyError
from dreamy.training.corridor_report import MARK_SERIES, SIGNALS, curves, marks_line

from .errors import user_errors
from .session import Studio

PAST_DREAMS_SHOWN = 100  # the newest this many jobs are offered


# ------------------------------------------------------------------------------------------ plots


def loss_frame(rows: list[dict]):
    """The loss plot's data, numeric even when empty. Gradio's LinePlot takes a column of dtype object
    for categories; a run's first frame (no step yet) was one, and the page kept those axes for the
    whole run: one evenly spaced tick per loss value."""
    import pandas as pd

    return pd.DataFrame([{"step": r["step"], "loss": r["loss"]} for r in rows],
                        columns=["step", "loss"]).astype({"step": "int64", "loss": "float64"})


def corridor_frame(rows: list[dict]):
    """The corridor meter's rows (corridor.json) as the curves plot's long-form data: step, value,
    signal (drift, gap, diversity, retention and the marks' series), mark; None while nothing is
    measured (a LinePlot with a color column that once held an empty frame never draws later lines)."""
    import pandas as pd

    if not rows:
        return None
    return pd.DataFrame(curves(rows), columns=["step", "value", "signal", "mark"]).astype(
        {"step": "int64", "value": "float64", "signal": "str", "mark": "str"})


CORRIDOR_COLORS = {"drift": "#d97706", "gap": "#dc2626", "diversity": "#2563eb", "retention": "#16a34a",
                   MARK_SERIES: "#6b7280"}


def corridor_plot(**kwargs: Any) -> gr.LinePlot:
    """The corridor meter's curves (docs/corridor.md): four signals against the base model and each
    checkpoint's mark as a fifth series (0 before, 0.5 inside, 1 past); hovering a point names its mark.
    No label on the frame: Gradio's label pushes the legend out of the plot's fixed height."""
    return gr.LinePlot(None, x="step", y="value", color="signal", height=280,
                       label="Corridor meter", show_label=False, x_title="step", y_title="corridor meter",
                       color_map=CORRIDOR_COLORS, colors_in_legend=[*SIGNALS, MARK_SERIES],
                       tooltip=["step", "signal", "value", "mark"], **kwargs)


CORRIDOR_CAPTION = ("**Corridor meter**, measured at each checkpoint against the base model: drift and gap rise as "
                    "the model is pulled toward the photos; diversity and retention fall as it collapses and forgets "
                    "language. The grey *mark* line: 0 before, 0.5 inside, 1 past the corridor (docs/corridor.md).")


# -------------------------------------------------------------------------------------- Open run


def run_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, run name) of every run in models/, the most recently trained first."""
    return [(r.label, r.name) for r in history.list_runs(studio.models)]


def read_run(studio: Studio, name: str) -> history.RunView:
    with user_errors("train"):
        if not name:
            raise gr.Error("Pick a run to open.")
        return history.open_run(name, studio.models)


def cells_gallery(view: history.RunView) -> list[tuple[str, str]]:
    """The validation grid's cells for a Gallery laid out like the grid (columns = seeds)."""
    return [(str(c.path), c.caption) for c in view.cells]


def cell_note(view: history.RunView | None) -> str:
    if view is None or not view.cells:
        return "Each checkpoint's pictures appear here as it is saved (step 0: the base model)."
    marks = marks_line(view.corridor)
    return (f"Rows: checkpoints (step 0 = the base model); columns: seeds {', '.join(map(str, view.seeds))}. "
            "Click a picture, then *Dream it*: Dream opens with that checkpoint and seed."
            + (f"\n\n{marks}" if marks else ""))


def gallery_update(view: history.RunView | None) -> Any:
    cells = cells_gallery(view) if view is not None else []
    return gr.update(value=cells, columns=max(1, min(8, len(view.seeds))) if view and view.seeds else 4)


def prompt_grids_update(view: history.RunView | None) -> Any:
    """The other validation prompts' grids (validation/prompt-N/grid.png), each captioned with its
    prompt; hidden for a run with one prompt."""
    grids = view.prompt_grids if view is not None else []
    return gr.update(value=[(str(g.path), g.caption) for g in grids], visible=bool(grids))


DREAM_IT = "Dream it"  # the button under the cells; once one is picked: "Dream step 400 · seed 2"


def picked(evt: gr.SelectData) -> tuple:
    """A click on a cell: (its index, the Dream button naming it)."""
    caption = evt.value.get("caption") if isinstance(evt.value, dict) else None
    return evt.index, gr.update(value=f"Dream {caption}" if caption else DREAM_IT)


def cell_of(studio: Studio, run: str, index: int | None) -> tuple[str, history.Cell, str]:
    """The picked cell of run ``run``'s grid: (what Dream loads for its step, the cell, the run's folder)."""
    with user_errors("train"):
        if not run:
            raise gr.Error("Open a run (or train one) first.")
        view = history.open_run(run, studio.models)
        if index is None or not 0 <= int(index) < len(view.cells):
            raise gr.Error("Click a picture of the run's grid first.")
        cell = view.cells[int(index)]
        source = history.checkpoint_source(view.summary.folder, cell.step)
        studio.model_source(source)  # a base model this studio may not load is refused here, in one sentence
        return source, cell, str(view.summary.folder)


def open_run_updates(studio: Studio, name: str | None, current_set: str | None, fields: list[str],
                     validation: list[str], default_preset: str) -> list:
    """Train's *Open run*: [status, loss (the whole history), grid, log, corridor curves, cells, cells'
    note, run name, shown run, picked cell, the Dream button, preset, its description, unlock, *fields,
    *validation fields, training set, the other prompts' grids], the run's recipe back in the form so Resume
    and Export work on it."""
    from dreamy.recipes.presets import list_presets

    from .widgets import locked_updates, preset_description

    view = read_run(studio, name or "")
    rec = view.record.get("recipe") if isinstance(view.record.get("recipe"), dict) else {}
    chosen = view.summary.preset if view.summary.preset in list_presets() else default_preset
    unlocked = bool(rec.get("unlocked"))
    settings = view.settings
    form = locked_updates(chosen, "train", fields, unlocked, {n: settings[n] for n in fields if n in settings},
                          marks=True)  # as the Train form draws its locks (widgets.lock_mark)
    shown = [gr.update(value=view.validation[n]) if n in view.validation else gr.update() for n in validation]
    photos = history.training_set_of(view.record, studio.training_sets)  # the set to resume on, if one holds them
    return [view.status, loss_frame(view.losses), str(view.grid) if view.grid else None, "\n".join(view.log_lines()),
            corridor_frame(view.corridor), gallery_update(view), cell_note(view), view.summary.name,
            view.summary.name, None, gr.update(value=DREAM_IT), chosen, preset_description(chosen), unlocked, *form,
            *shown,
            gr.update(value=photos or current_set), prompt_grids_update(view)]


def cells_updates(studio: Studio, seen: str) -> tuple:
    """A validation of a live run ended (``seen`` = "<run>|<step>"): [cells, cells' note, shown run,
    picked cell, the Dream button, the Open run picker's choices, the other prompts' grids]."""
    name = seen.split("|")[0] if seen else ""
    try:
        view = history.open_run(name, studio.models) if name else None
    except DreamyError:
        view = None
    return (gallery_update(view), cell_note(view), name, None, gr.update(value=DREAM_IT),
            gr.update(choices=run_choices(studio)), prompt_grids_update(view))


# ---------------------------------------------------------------------------------- Past dreams


def dream_choices(studio: Studio) -> list[tuple[str, str]]:
    """(label, folder relative to outputs/) of past dreams, sweeps, grids and words, newest first."""
    try:
        jobs = history.list_dreams(studio.outputs, limit=PAST_DREAMS_SHOWN)
    except OSError:
        return []
    return [(j.label, str(j.folder.relative_to(studio.outputs))) for j in jobs]


def past_dreams_picker(studio: Studio) -> gr.Dropdown:
    """Dream's *Past dreams* picker (call where it should appear; wire it with :func:`wire_past_dreams`)."""
    # a shared studio keeps each visitor's dreams to themselves (as it keeps no run history in the browser)
    return gr.Dropdown(dream_choices(studio) if not studio.shared else [], value=None, label="Past dreams",
                       elem_id="dream-past", visible=not studio.shared,
                       info="dreams, prompt sweeps, checkpoint grids and words in outputs/, newest first")


def wire_past_dreams(studio: Studio, picker: gr.Dropdown, gallery: Any, sheet: Any, status: Any, paths: Any,
                     selected: Any) -> None:
    """Picking a past job puts its pictures back in ``gallery`` (Send to Enlarge, Particles and training
    sets work on them, as on a new dream), its grid or contact sheet in ``sheet``, its recipe in ``status``."""

    def reopen(folder: str | None):
        with user_errors("dream"):
            if studio.shared:
                raise gr.Error("A shared studio does not reopen past dreams: they may be another visitor's.")
            if not folder:
                raise gr.Error("Pick a past dream to reopen.")
            view = history.open_dreams(studio.outputs / folder, studio.outputs)
            pictures = [(str(p), caption) for p, caption in view.pictures]
            said = f"{view.status}\n\n`{studio.where(view.job.folder)}`"
            return pictures, str(view.sheet) if view.sheet else None, said, [p for p, _ in pictures], None

    picker.input(reopen, picker, [gallery, sheet, status, paths, selected], api_visibility="private")
    # listed afresh whenever it is opened: jobs finished since the page loaded are there
    if not studio.shared:
        picker.focus(lambda: gr.update(choices=dream_choices(studio)), None, picker, api_visibility="private",
                     queue=False)
