"""The Train tab: photos in (upload or a training set), a locked recipe, Start / Stop / Resume,
live loss and ETA, and the validation grid growing at each checkpoint."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from dreamy.errors import DreamyError
from dreamy.history import loss_history
from dreamy.layout import checkpoints, step_of
from dreamy.paths import check_name, within
from dreamy.recipes.presets import list_presets, load_preset
from dreamy.recipes.settings import DreamSettings, TrainSettings
from dreamy.training.corridor_report import read_rows
from dreamy.training.corridor_report import summary as corridor_summary
from dreamy.training.sets import (
    add_to_training_set,
    list_training_sets,
    remove_from_training_set,
    train_on_set,
    training_set_report,
)

from . import history
from .errors import user_errors
from .session import GPU, Studio
from .typed import typed
from .widgets import (
    field_widget,
    file_rows,
    lock_toggled,
    locked_updates,
    overrides_from,
    preset_description,
    preset_widget,
    watch_locks,
)

FIELDS = ["mode", "learning_rate", "max_train_steps", "checkpointing_steps", "resolution", "train_batch_size",
          "gradient_accumulation_steps", "instance_prompt", "class_prompt", "validation_seeds"]
VALIDATION = ["width", "height", "steps"]
UPDATE_EVERY_S = 0.5  # stream at most this often between checkpoints (loss plot, status)
PRESET = "sweet-spot"  # the preset the tab opens with
LOG_TO_END = ("() => { const t = document.querySelector('#train-log textarea');"
              " if (t) requestAnimationFrame(() => { t.scrollTop = t.scrollHeight; }); }")


EXPORTS = [("single file + model card", "single-file,card"), ("diffusers folder + model card", "diffusers,card"),
           ("LoRA files + model card", "lora,card"), ("model card", "card")]
LORA_EXPORT = "lora,card"
MERGED = ("single-file,card", "diffusers,card")  # a merged model: no SDXL run makes one (dreamy/training/exports.py)


@dataclass
class TrainTab:
    events: list  # the run events, for hand-offs (refresh the Dream pickers when a run ends)
    init: object  # page load: () -> updates for init_outputs
    init_outputs: list
    # The tab opened: () -> updates for shown_outputs (sets made meanwhile, e.g. by Dream's "Add to set")
    shown: object
    shown_inputs: list
    shown_outputs: list
    to_dream: gr.Button  # Dream the picked cell of the run's grid (app.py switches tabs)
    picked: list  # [run name, cell index]: what to_dream sends


def train_blocked() -> str | None:
    """Why Train is off here, or None. ZeroGPU gives visitors minutes a day; a run takes longer."""
    if os.environ.get("SPACE_ID") and (os.environ.get("SPACES_ZERO_GPU") or not _has_cuda()):
        return ("Training is off on this shared Space: a run takes longer than a visitor's GPU quota. "
                "Duplicate the Space onto a dedicated GPU, or run the studio on your own machine.")
    return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _set_view(report, skipped: Sequence[str] = ()) -> tuple[list, str, list[str], list[str]]:
    """A training set's report (dreamy.training.sets.SetReport) as the page shows it: the gallery's
    thumbnails, the notes under them, each thumbnail's file name (a click on one picks that file) and
    the files *Remove from set* offers. ``skipped``: an upload's files that were not added."""
    gone = "".join(f"\n- {note}" for note in skipped)
    if not report.exists or not report.checks:
        return [], f"Training set **{report.name}** is empty: upload photos to fill it.{gone}", [], []
    checks = report.checks
    usable = [c for c in checks if c.usable]
    refused = [c for c in checks if not c.usable]
    thumbs = [(str(c.path), ("⚠ " if c.notes else "") + c.line) for c in usable]
    # c.line already says "refused: <why>" for a refused file: no second "refused" in front of it
    flagged = [f"- ⚠ {c.line}" for c in usable if c.notes] + [f"- {c.line}" for c in refused]
    head = f"**{len(usable)}** usable photo(s) in `{report.name}`" + (
        f", {len(refused)} refused (never trained on: remove them below)" if refused else "")
    text = head + ("\n\n" + "\n".join(flagged) if flagged else "") + (
        f"\n\nNot added:{gone}" if skipped else "")
    return thumbs, text, [c.name for c in usable], [c.name for c in checks]


NO_SET = "Choose or name a training set, then add photos."
IDLE = "Not running. Stop saves a checkpoint; Resume continues from the newest one."


def build(studio: Studio) -> TrainTab:
    blocked = train_blocked()
    if blocked:
        gr.Markdown(f"⚠ {blocked}", elem_classes="dreamy-warning")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("**1 · Photos** — about eight of one subject", elem_classes="dreamy-step")
            sets = _set_names(studio)
            first_set = _pick_set(sets)
            with gr.Row():
                set_name = gr.Dropdown(sets, value=first_set, label="Training set", scale=3,
                                       allow_custom_value=True, info="outputs/training-sets/<name>/",
                                       elem_id="train-set")
            upload = gr.UploadButton("Add photos…", file_count="multiple", file_types=["image"], type="filepath",
                                     elem_id="train-upload", size="sm")
            thumbs = gr.Gallery(label="Photos", columns=3, height=240, object_fit="cover", format="png",
                                interactive=False, preview=False, elem_id="train-photos", fit_columns=False)
            problems = gr.Markdown(elem_classes="dreamy-note", elem_id="train-set-notes")
            # The file behind each thumbnail (gallery order), and every file of the set. States, so the
            # API's add_photos keeps its three outputs; the Remove list follows set_files.
            shown_names, set_files = gr.State([]), gr.State([])
            to_remove = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                    label="Photos to take out of the set", elem_id="train-remove-files",
                                    info="click a thumbnail, or pick a refused file")
            remove = gr.Button("Remove from set", size="sm", elem_id="train-remove")
        with gr.Column(scale=1, min_width=340):
            gr.Markdown("**2 · Recipe**", elem_classes="dreamy-step")
            with gr.Row():
                base = gr.Dropdown(base_choices(studio), value=studio.default_model, label="Base model",
                                   allow_custom_value=True, elem_id="train-base",
                                   info="SD 1.5 or SDXL; the preset says how (word-style: SDXL pivotal)")
                preset = gr.Dropdown(list_presets(), value=PRESET, label="Preset", elem_id="train-preset")
            description = gr.Markdown(preset_description(PRESET), elem_classes="dreamy-note")
            unlock = gr.Checkbox(False, label="Unlock the preset's locked settings (recorded in the run)",
                                 elem_id="train-unlock")
            with gr.Group():
                widgets = {}

                def field(n: str, **kwargs: Any) -> Any:
                    # the preset's values from the start (also the API's defaults), its locks marked
                    # under each field from the first paint on (widgets.lock_mark), as in Dream
                    return preset_widget(TrainSettings, n, PRESET, "train", marks=True, elem_id=f"train-{n}",
                                         **kwargs)

                # two abreast: a lock note under each field needs the width (three made it five lines)
                for row in (FIELDS[:2], FIELDS[2:4], FIELDS[4:6], FIELDS[6:7]):
                    with gr.Row():
                        widgets |= {n: field(n, min_width=90) for n in row}
                widgets |= {n: field(n) for n in FIELDS[7:]}
            fields = [widgets[n] for n in FIELDS]
            with gr.Accordion("Validation renders (Dream preset, same seeds each checkpoint)", open=False):
                gr.Markdown("Smaller renders are faster on a CPU; any change is recorded in each validation PNG.",
                            elem_classes="dreamy-note")
                with gr.Row():
                    v_fields = [field_widget(DreamSettings, n, value=getattr(load_preset(PRESET).dream, n),
                                             min_width=80, elem_id=f"train-validation-{n}") for n in VALIDATION]
        with gr.Column(scale=1, min_width=340):
            gr.Markdown("**3 · Run and watch the corridor**", elem_classes="dreamy-step")
            run_name = gr.Textbox("my-run", label="Run name", info="models/<run name>/", elem_id="train-run-name")
            with gr.Row():
                start = gr.Button("Start", variant="primary", interactive=not blocked, elem_id="train-start")
                resume = gr.Button("Resume", interactive=not blocked)
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            status = gr.Markdown(IDLE, elem_id="train-status")
            # What the status says now, for Stop with nothing running to leave it as it is. Stop is not
            # queued (a full queue must not refuse it), so it cannot toast; a State is no API parameter.
            shown_status = gr.State(IDLE)
            # The way back to a past run: its plots, grid, log and status from disk, its recipe in the form
            opened = gr.Dropdown(history.run_choices(studio), value=None, label="Open run", elem_id="train-open",
                                 info="a past run from models/, most recent first: loss, grid, corridor, log")
            # The newest lines at the bottom, scrolled into view (autoscroll follows them as they come)
            log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True,
                             elem_id="train-log")
            # Gradio's autoscroll follows only a box already scrolled to its end, and a whole log set at
            # once (an opened run) or while the tab was hidden stayed at its first lines: scroll on change
            log.change(None, None, None, js=LOG_TO_END, queue=False, api_visibility="private")
            with gr.Accordion("Export a checkpoint", open=False) as export_box:
                # a code span: bare <run> would be taken for an HTML tag and swallow the rest of the note
                gr.Markdown("Into `models/<run>/export/step-XXXX/`. Pick the step inside the corridor.",
                            elem_classes="dreamy-note")
                with gr.Row():
                    ex_step = gr.Dropdown([], label="Checkpoint", allow_custom_value=True, scale=2,
                                          info="blank: the newest")
                    # Every format here (the API may ask for any); the page offers what the checkpoint has
                    ex_what = gr.Dropdown(EXPORTS, value="single-file,card", label="What", scale=3,
                                          elem_id="train-export-what")
                ex_go = gr.Button("Export", size="sm")
                # an export is three files or more (the model, its card, the validation grid): three
                # rows whole, the rest (LoRA's kohya and diffusers files) scroll
                exported = gr.File(label="Exported files", interactive=False, file_count="multiple",
                                   height=file_rows(3), elem_id="train-exported")
    # The run view: loss and the corridor meter side by side, the grid and its cells (one opens in Dream)
    with gr.Row(equal_height=False):
        loss = gr.LinePlot(history.loss_frame([]), x="step", y="loss", height=280, label="Loss", show_label=True,
                           x_title="step", y_title="loss", elem_id="train-loss")
        with gr.Column():
            corridor = history.corridor_plot(elem_id="train-corridor")
            gr.Markdown(history.CORRIDOR_CAPTION, elem_classes="dreamy-note")
    with gr.Row(equal_height=False):
        # The whole grid, scaled down into the frame (app.py's CSS keeps it below the floating label);
        # the frame's full-screen button shows it large.
        grid = gr.Image(label="Validation grid: checkpoints × seeds", type="filepath", format="png",
                        interactive=False, height=400, elem_id="train-grid", scale=2)
        with gr.Column(scale=3):
            cells = gr.Gallery(label="Pick a checkpoint and seed", columns=4, height=400, object_fit="contain",
                               format="png", interactive=False, preview=False, elem_id="train-cells",
                               fit_columns=False)
            with gr.Row():
                cells_note = gr.Markdown(history.cell_note(None), elem_classes="dreamy-note", elem_id="train-cells-note")
                to_dream = gr.Button(history.DREAM_IT, size="sm", variant="primary", scale=0, min_width=120,
                                     elem_id="train-to-dream")
    # The grids of the run's other validation prompts (validation_prompts' lines after the first), if any
    more_grids = gr.Gallery(label="Other validation prompts: checkpoints × seeds", columns=2, height=360,
                            object_fit="contain", format="png", interactive=False, preview=False, visible=False,
                            elem_id="train-prompt-grids", fit_columns=False)
    # The run the view shows ("" none), and after each validation "<run>|<step>": its change re-reads the cells
    shown_run, validated, picked_cell = gr.State(""), gr.State(""), gr.State(None)

    def show_set(name: str, resolution: float):
        with user_errors("train"):
            if not name:
                return [], NO_SET, [], []
            return _set_view(training_set_report(studio.training_sets, name, int(resolution or 512)))

    def add_photos(files: list[str] | None, name: str, resolution: float):
        """Copy uploaded photos into a training set (names made safe; nothing leaves the set's folder;
        files Train would refuse are not copied and are listed instead)."""
        with user_errors("train"):
            if not name and not files:
                return [], NO_SET, gr.update(), [], []
            report = add_to_training_set(files or [], name, studio.training_sets, resolution=int(resolution or 512))
            if report.notes:
                gr.Warning(f"{report.notes[0]}." if len(report.notes) == 1 else
                           f"{len(report.notes)} files skipped: the list is under the photos.")
            thumbs, text, names, in_set = _set_view(report, report.notes)
            return thumbs, text, gr.update(choices=report.sets, value=name), names, in_set

    def remove_photos(name: str, files: list[str] | None, resolution: float):
        """Delete photos (file names in the set, as add_photos reports them) from a training set."""
        with user_errors("train"):
            if not files:
                raise gr.Error("Pick the photos to remove first: click a thumbnail, or choose files in the list.")
            report = remove_from_training_set(studio.training_sets, name, files, resolution=int(resolution or 512))
            gr.Info(f"Removed {len(files)} file(s) from training set {report.name}.")
            return _set_view(report)

    def pick_photo(names: list[str], chosen: list[str] | None, evt: gr.SelectData):
        """A click on a thumbnail adds its file to the ones *Remove from set* takes out."""
        if evt.index is None or not 0 <= int(evt.index) < len(names):
            return gr.update()
        name = names[int(evt.index)]
        return gr.update(value=[*(chosen or []), name] if name not in (chosen or []) else chosen)

    def sets_shown(current: str | None, resolution: float):
        """The tab opened: list the sets on disk now (a reload, or Dream's "Add selected to training set").
        The page's first pick (made when the studio was built), when it names no set on disk, becomes
        the first set there; a name the visitor typed stays."""
        names = _set_names(studio)
        chosen = _pick_set(names) if current == first_set and current not in names else current
        return gr.update(choices=names, value=chosen), *show_set(chosen or "", resolution)

    def training(resume: bool, doc: str):
        """The handler behind Start (``resume=False``) and Resume: one body, two API names. Gradio reads
        the parameters (and injects the request) from the signature, so they are spelled out here."""

        def handler(set_name: str, base: str, preset: str, name: str, unlock: bool, mode: str, learning_rate: float,
                    max_train_steps: float, checkpointing_steps: float, resolution: float, train_batch_size: float,
                    gradient_accumulation_steps: float, instance_prompt: str, class_prompt: str,
                    validation_seeds: str, validation_width: float, validation_height: float,
                    validation_steps: float, request: gr.Request, progress=gr.Progress()):
            from dreamy.training import (
                CheckpointSaved,
                Finished,
                Notice,
                Started,
                StepDone,
                ValidationDone,
            )
            from dreamy.training.validation import GRID_NAME

            with user_errors("train"):
                if blocked:
                    raise gr.Error(blocked)
                source = studio.model_source(base)
                values = (mode, learning_rate, max_train_steps, checkpointing_steps, resolution, train_batch_size,
                          gradient_accumulation_steps, instance_prompt, class_prompt, validation_seeds)
                overrides = overrides_from(FIELDS, values)
                validation = overrides_from(VALIDATION, (validation_width, validation_height, validation_steps))
                rows: list[dict] = []  # the plot: the run's whole history, resumed steps after the earlier ones
                lines: deque[str] = deque(maxlen=200)
                grid_path, last, meter, seen = None, 0.0, [], ""
                head = "Starting…"
                with studio.running(request, "train") as token:
                    for ev in train_on_set(studio.training_sets, set_name, name=name.strip(), preset=preset,
                                           base=source, overrides=overrides, unlock=unlock,
                                           models_dir=studio.models, resume=resume, validation=validation,
                                           cancel=token):
                        progress(ev.progress().fraction, desc=ev.describe())
                        if isinstance(ev, StepDone):
                            rows.append({"step": ev.step, "loss": ev.loss})
                            head = (f"Step **{ev.step} / {ev.total}** · loss {ev.loss:.4f} · lr {ev.lr:.2e} · "
                                    f"ETA {_duration(ev.eta_s)}")
                            lines.append(ev.describe())
                            if time.monotonic() - last < UPDATE_EVERY_S and ev.step < ev.total:
                                continue
                        elif isinstance(ev, ValidationDone):
                            grid_path = str(ev.grid)
                            lines.append(ev.describe())
                            run_dir = ev.grid.parent.parent
                            lines += [t for t in [corridor_summary(run_dir)] if t]  # before/inside/past
                            meter, seen = read_rows(run_dir), f"{run_dir.name}|{ev.step}"  # measured before this event
                        elif isinstance(ev, Started):
                            lines.extend(ev.images)
                            lines.append(ev.describe())
                            if ev.resumed_from is not None:  # the steps before this session, from the run's log
                                rows = loss_history(ev.run_dir, ev.resumed_from)
                                meter = [r for r in read_rows(ev.run_dir) if r["step"] <= ev.resumed_from]
                                earlier = ev.run_dir / "validation" / GRID_NAME
                                grid_path = str(earlier) if earlier.is_file() else grid_path
                        elif isinstance(ev, CheckpointSaved | Notice):
                            lines.append(ev.describe())
                        elif isinstance(ev, Finished):
                            head = _finished_line(ev, name.strip())
                            lines.append(ev.describe())
                        last = time.monotonic()
                        yield (head, history.loss_frame(rows), grid_path, "\n".join(lines),
                               history.corridor_frame(meter), seen)

        handler.__doc__ = doc
        return handler

    start_run = training(False, "Train a new run on a training set with the preset's recipe; streams status, "
                                "loss, grid, log.")
    resume_run = training(True, "Continue a run from its newest checkpoint (the recipe must match; steps may grow).")

    def stop_run(shown: str, request: gr.Request) -> str:
        """Stop this session's training after the current step; a checkpoint is saved. With nothing
        running, the status stays as it is ("Finished at step 16…", or "Not running…")."""
        if studio.stop(request, ["train"]):
            return ("Stopping: the step or validation picture in progress ends first, then the steps trained "
                    "are saved as a checkpoint…")
        return shown if isinstance(shown, str) and shown else IDLE

    def export_run(run_name: str, step: str | None, what: str):
        """Export a run's checkpoint (blank step: the newest): single file, diffusers folder, LoRA, model card."""
        from dreamy.training import export

        with user_errors("export"):
            run = within(studio.models / check_name(run_name, "run name"), [studio.models], "run")
            at = None if step in (None, "") else str(step).strip()
            if at is not None and not at.isdigit():
                raise gr.Error(f"Run '{run.name}' has no checkpoint at step {at[:20]}.")
            files = export(run, formats=[f for f in str(what).split(",") if f], step=None if at is None else int(at))
            shown = sorted(str(p) for p in files.values() if p.is_file())  # a diffusers folder cannot be downloaded
            where = next(iter(files.values())).parent if files else run
            return shown, f"Exported {', '.join(files)} into `{where.relative_to(studio.models.parent)}`."

    def steps_of(run_name: str, what: str | None):
        """The run's checkpoints to pick from, and what the newest can be exported as."""
        found = _checkpoints(studio, run_name)
        return gr.update(choices=[str(s) for s, _ in reversed(found)], value=None), _formats(found, None, what)

    def formats_of(run_name: str, step: str | None, what: str | None):
        return _formats(_checkpoints(studio, run_name), step, what)

    def formats_now(run_name: str, step: str | None, what: str | None):
        """The Export box opened: the run's checkpoints now (the picked one kept while it exists)."""
        found = _checkpoints(studio, run_name)
        steps = [str(s) for s, _ in reversed(found)]
        kept = step if step in steps else None
        return gr.update(choices=steps, value=kept), _formats(found, kept, what)

    opened_outputs = [status, loss, grid, log, corridor, cells, cells_note, run_name, shown_run, picked_cell,
                      to_dream, preset, description, unlock, *fields, *v_fields, set_name, more_grids]
    opened.input(lambda name, current: history.open_run_updates(studio, name, current, FIELDS, VALIDATION, PRESET),
                 [opened, set_name], opened_outputs, api_visibility="private")
    # listed afresh whenever it is opened: runs trained since the page loaded (or by the CLI) are there
    opened.focus(lambda: gr.update(choices=history.run_choices(studio)), None, opened, queue=False,
                 api_visibility="private")
    validated.change(lambda seen: history.cells_updates(studio, seen), validated,
                     [cells, cells_note, shown_run, picked_cell, to_dream, opened, more_grids], queue=False,
                     api_visibility="private")
    cells.select(history.picked, None, [picked_cell, to_dream], api_visibility="private")

    set_view = [thumbs, problems, shown_names, set_files]
    inputs = [set_name, base, preset, run_name, unlock, *fields, *v_fields]
    outputs = [status, loss, grid, log, corridor, validated]  # validated: a State, no API output
    gpu = {"concurrency_id": GPU, "concurrency_limit": 1}
    # typed(): each value must have its widget's type, so "false" is no unlock (studio/typed.py)
    ev_start = start.click(typed(start_run, inputs), inputs, outputs, api_name="train", **gpu)
    ev_resume = resume.click(typed(resume_run, inputs), inputs, outputs, api_name="resume_train", **gpu)
    # No Gradio cancels here: closing the generator would skip the checkpoint that Stop promises.
    stop.click(stop_run, shown_status, status, api_name="stop_train", concurrency_limit=None, queue=False)
    status.change(lambda text: text, status, shown_status, queue=False, api_visibility="private")
    for trigger in (set_name.change, widgets["resolution"].blur):  # flags depend on the training resolution
        trigger(show_set, [set_name, widgets["resolution"]], set_view, api_visibility="private")
    upload.upload(typed(add_photos, [upload, set_name, widgets["resolution"]]), [upload, set_name, widgets["resolution"]],
                  [thumbs, problems, set_name, shown_names, set_files],
                  api_name="add_photos")
    remove_inputs = [set_name, to_remove, widgets["resolution"]]
    remove.click(typed(remove_photos, remove_inputs), remove_inputs, set_view, api_name="remove_photos")
    thumbs.select(pick_photo, [shown_names, to_remove], to_remove, api_visibility="private")
    set_files.change(lambda files: gr.update(choices=files, value=[]), set_files, to_remove, queue=False,
                     api_visibility="private")
    preset.input(lambda name, u: [preset_description(name), *locked_updates(name, "train", FIELDS, u, marks=True),
                                  *_validation_defaults(name)],
                 [preset, unlock], [description, *fields, *v_fields], api_visibility="private", show_progress="hidden")
    unlock.input(lambda name, u, *now: lock_toggled(name, "train", FIELDS, u, now, marks=True),
                 [preset, unlock, *fields], fields, api_visibility="private", show_progress="hidden")
    watch_locks(preset, unlock, widgets, "train")  # an unlocked field that differs from the preset says so
    ex_go.click(typed(export_run, [run_name, ex_step, ex_what]), [run_name, ex_step, ex_what], [exported, status],
                api_name="export")
    run_name.change(steps_of, [run_name, ex_what], [ex_step, ex_what], api_visibility="private")
    ex_step.input(formats_of, [run_name, ex_step, ex_what], ex_what, api_visibility="private")
    for ev in (ev_start, ev_resume):
        ev.then(steps_of, [run_name, ex_what], [ex_step, ex_what], api_visibility="private")

    def init():
        """Page load: the lists on disk now (the page may be older than the newest set or run), never a
        value: a load answer that came late on a busy machine reset a preset, an Unlock or a set picked
        meanwhile. The form holds PRESET's values and locks from the build (preset_widget)."""
        return [gr.update(choices=_set_names(studio)), gr.update(choices=history.run_choices(studio))]

    # The Export box is read when opened: the run's checkpoints now, and what they can be exported as
    export_box.expand(formats_now, [run_name, ex_step, ex_what], [ex_step, ex_what], api_visibility="private",
                      show_progress="hidden")

    return TrainTab([ev_start, ev_resume], init, [set_name, opened],
                    sets_shown, [set_name, widgets["resolution"]], [set_name, *set_view], to_dream,
                    [shown_run, picked_cell])


def base_choices(studio: Studio) -> list:
    """What Train can start from: the offline demos (tiny: SD 1.5, tiny-sdxl: SDXL, for word-style) and
    the studio's model."""
    demos = [("tiny (offline demo)", "tiny"), ("tiny-sdxl (offline SDXL demo)", "tiny-sdxl")]
    return demos + ([studio.default_model] if studio.default_model not in {v for _, v in demos} else [])


def _validation_defaults(preset_name: str) -> list:
    """The validation renders' size and steps as the preset dreams (word-style: SDXL's 1024 px)."""
    try:
        dream = load_preset(preset_name).dream
    except DreamyError:  # the preset picker says why
        return [gr.update() for _ in VALIDATION]
    return [gr.update(value=getattr(dream, n)) for n in VALIDATION]


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _pick_set(names: list[str], current: str | None = None) -> str:
    """The set a fresh page shows: the one it had if it still exists, else the first on disk."""
    return current if current in names else (names[0] if names else current or "photos")


def _checkpoints(studio: Studio, run_name: str) -> list[tuple[int, Path]]:
    try:
        return checkpoints(studio.models / check_name(run_name, "run name"))
    except DreamyError:
        return []


def _formats(found: list[tuple[int, Path]], step: str | None, what: str | None) -> dict:
    """The export choices the chosen checkpoint (blank: the newest) supports, its default first: LoRA
    files only from a checkpoint that holds LoRA weights (lora and pivotal runs; the exporter's own
    test); an SDXL run's adapters only as LoRA files and a card (what ``--export-only`` exports for it:
    the exporter refuses a merged SDXL model)."""
    from dreamy.models.checkpoints import read_meta  # imports torch: only once a run is looked at

    at = {str(s): p for s, p in found}
    folder = at.get(str(step).strip()) if step not in (None, "") else (found[-1][1] if found else None)
    try:
        meta = read_meta(folder) if folder is not None else {}
    except DreamyError:  # a damaged checkpoint: Export says so when asked
        meta = {}
    lora = "lora_unet" in meta.get("parts", ())
    if meta.get("arch") == "sdxl":
        choices = [c for c in EXPORTS if c[1] not in MERGED]
    else:
        choices = [c for c in EXPORTS if lora or c[1] != LORA_EXPORT]
    return gr.update(choices=choices, value=what if what in {v for _, v in choices} else choices[0][1])


def _set_names(studio: Studio) -> list[str]:
    try:
        return list_training_sets(studio.training_sets)
    except DreamyError:  # training-sets/ leads out of outputs/: no sets to offer (each use says why)
        return []


def _finished_line(ev: Any, run: str) -> str:
    """What a run's end offers: only a checkpoint that exists (a Stop before the first step saves none)."""
    said = f"{'Stopped' if ev.stopped else 'Finished'} at step {ev.step} of {ev.total}."
    at = step_of(ev.checkpoint) if ev.checkpoint is not None else None
    if at is None:
        return f"{said} No checkpoint was saved (no step was trained yet); press Start to train."
    return (f"{said} Dream with it: pick **{run} · step {at}** in the Dream tab, "
            "or its run in *Checkpoint × seed grid*.")
