"""The Train tab: photos in (upload or a training set), a locked recipe, Start / Stop / Resume,
live loss and ETA, and the validation grid growing at each checkpoint."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

import gradio as gr

from dreamy.errors import DreamyError
from dreamy.layout import checkpoints
from dreamy.paths import check_name, within
from dreamy.recipes.presets import list_presets, load_preset
from dreamy.recipes.settings import DreamSettings, TrainSettings
from dreamy.training.sets import add_to_training_set, list_training_sets, train_on_set, training_set_report

from .errors import user_errors
from .session import GPU, Studio
from .typed import typed
from .widgets import field_widget, lock_toggled, locked_updates, overrides_from, preset_description

FIELDS = ["mode", "learning_rate", "max_train_steps", "checkpointing_steps", "resolution", "train_batch_size",
          "gradient_accumulation_steps", "instance_prompt", "class_prompt", "validation_seeds"]
VALIDATION = ["width", "height", "steps"]
UPDATE_EVERY_S = 0.5  # stream at most this often between checkpoints (loss plot, status)


@dataclass
class TrainTab:
    events: list  # the run events, for hand-offs (refresh the Dream pickers when a run ends)
    init: object  # page load: () -> updates for init_outputs
    init_outputs: list


def train_blocked() -> str | None:
    """Why Train is off here, or None. ZeroGPU gives visitors minutes a day; a run takes longer."""
    if os.environ.get("SPACE_ID") and (os.environ.get("SPACES_ZERO_GPU") or not _has_cuda()):
        return ("Training is off on this shared Space: a run takes longer than a visitor's GPU quota. "
                "Duplicate the Space onto a dedicated GPU, or run the studio on your own machine.")
    return None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _thumbs(report) -> tuple[list, str]:
    """A training set's report (dreamy.training.sets.SetReport) as the gallery's thumbnails and its notes."""
    if not report.exists:
        return [], f"Training set **{report.name}** is empty: upload photos to fill it."
    checks = report.checks
    thumbs = [(str(c.path), ("⚠ " if c.notes else "") + c.line) for c in checks if c.usable]
    flagged = [f"- {'**refused**' if not c.usable else '⚠'} {c.line}" for c in checks if c.notes or not c.usable]
    head = f"**{report.usable}** usable photo(s) in `{report.name}`" + (
        f", {len(checks) - report.usable} refused" if report.usable < len(checks) else "")
    return thumbs, head + ("\n\n" + "\n".join(flagged) if flagged else "")


NO_SET = "Choose or name a training set, then add photos."


def build(studio: Studio) -> TrainTab:
    blocked = train_blocked()
    if blocked:
        gr.Markdown(f"⚠ {blocked}", elem_classes="dreamy-warning")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("**1 · Photos** — about eight of one subject", elem_classes="dreamy-step")
            sets = _set_names(studio)
            with gr.Row():
                set_name = gr.Dropdown(sets, value=sets[0] if sets else "photos", label="Training set", scale=3,
                                       allow_custom_value=True, info="outputs/training-sets/<name>/")
            upload = gr.UploadButton("Add photos…", file_count="multiple", file_types=["image"], type="filepath",
                                     elem_id="train-upload", size="sm")
            thumbs = gr.Gallery(label="Photos", columns=3, height=240, object_fit="cover", format="png",
                                interactive=False, preview=False)
            problems = gr.Markdown(elem_classes="dreamy-note")
        with gr.Column(scale=1, min_width=340):
            gr.Markdown("**2 · Recipe**", elem_classes="dreamy-step")
            with gr.Row():
                base = gr.Dropdown([("tiny (offline demo)", "tiny"), studio.default_model] if
                                   studio.default_model != "tiny" else [("tiny (offline demo)", "tiny")],
                                   value=studio.default_model, label="Base model", allow_custom_value=True)
                preset = gr.Dropdown(list_presets(), value="sweet-spot", label="Preset")
            description = gr.Markdown(preset_description("sweet-spot"), elem_classes="dreamy-note")
            unlock = gr.Checkbox(False, label="Unlock the preset's locked settings (recorded in the run)",
                                 elem_id="train-unlock")
            with gr.Group():
                widgets = {}
                for row in (FIELDS[:2], FIELDS[2:4], FIELDS[4:7]):
                    with gr.Row():
                        widgets |= {n: field_widget(TrainSettings, n, min_width=90, elem_id=f"train-{n}") for n in row}
                widgets |= {n: field_widget(TrainSettings, n, elem_id=f"train-{n}") for n in FIELDS[7:]}
            fields = [widgets[n] for n in FIELDS]
            with gr.Accordion("Validation renders (Dream preset, same seeds each checkpoint)", open=False):
                gr.Markdown("Smaller renders are faster on a CPU; any change is recorded in each validation PNG.",
                            elem_classes="dreamy-note")
                with gr.Row():
                    v_fields = [field_widget(DreamSettings, n, value=getattr(load_preset("sweet-spot").dream, n),
                                             min_width=80, elem_id=f"train-validation-{n}") for n in VALIDATION]
        with gr.Column(scale=1, min_width=340):
            gr.Markdown("**3 · Run and watch the corridor**", elem_classes="dreamy-step")
            run_name = gr.Textbox("my-run", label="Run name", info="models/<run name>/", elem_id="train-run-name")
            with gr.Row():
                start = gr.Button("Start", variant="primary", interactive=not blocked, elem_id="train-start")
                resume = gr.Button("Resume", interactive=not blocked)
                stop = gr.Button("Stop", variant="stop")
            status = gr.Markdown("Not running. Stop saves a checkpoint; Resume continues from the newest one.",
                                 elem_id="train-status")
            loss = gr.LinePlot(x="step", y="loss", height=200, label="Loss", show_label=True)
            grid = gr.Image(label="Validation grid: checkpoints × seeds", type="filepath", format="png",
                            interactive=False, height=300)
            log = gr.Textbox(label="Log", lines=5, max_lines=5, interactive=False, autoscroll=True)
            with gr.Accordion("Export a checkpoint", open=False):
                gr.Markdown("Into models/<run>/export/step-XXXX/. Pick the step inside the corridor.",
                            elem_classes="dreamy-note")
                with gr.Row():
                    ex_step = gr.Dropdown([], label="Checkpoint", allow_custom_value=True, scale=2,
                                          info="blank: the newest")
                    ex_what = gr.Dropdown([("single file + model card", "single-file,card"),
                                           ("diffusers folder + model card", "diffusers,card"),
                                           ("LoRA files + model card", "lora,card"), ("model card", "card")],
                                          value="single-file,card", label="What", scale=3)
                ex_go = gr.Button("Export", size="sm")
                exported = gr.File(label="Exported files", interactive=False, file_count="multiple", height=80)

    def show_set(name: str, resolution: float):
        with user_errors("train"):
            if not name:
                return [], NO_SET
            return _thumbs(training_set_report(studio.training_sets, name, int(resolution or 512)))

    def add_photos(files: list[str] | None, name: str, resolution: float):
        """Copy uploaded photos into a training set (names made safe; nothing leaves the set's folder)."""
        with user_errors("train"):
            if not name and not files:
                return [], NO_SET, gr.update()
            report = add_to_training_set(files or [], name, studio.training_sets, resolution=int(resolution or 512))
            if report.notes:
                gr.Warning("; ".join(report.notes)[:300])
            return *_thumbs(report), gr.update(choices=report.sets, value=name)

    def training(resume: bool, doc: str):
        """The handler behind Start (``resume=False``) and Resume: one body, two API names. Gradio reads
        the parameters (and injects the request) from the signature, so they are spelled out here."""

        def handler(set_name: str, base: str, preset: str, name: str, unlock: bool, mode: str, learning_rate: float,
                    max_train_steps: float, checkpointing_steps: float, resolution: float, train_batch_size: float,
                    gradient_accumulation_steps: float, instance_prompt: str, class_prompt: str,
                    validation_seeds: str, validation_width: float, validation_height: float,
                    validation_steps: float, request: gr.Request, progress=gr.Progress()):
            import pandas as pd

            from dreamy.training import (
                CheckpointSaved,
                Finished,
                Notice,
                Started,
                StepDone,
                ValidationDone,
            )

            with user_errors("train"):
                if blocked:
                    raise gr.Error(blocked)
                source = studio.model_source(base)
                values = (mode, learning_rate, max_train_steps, checkpointing_steps, resolution, train_batch_size,
                          gradient_accumulation_steps, instance_prompt, class_prompt, validation_seeds)
                overrides = overrides_from(FIELDS, values)
                validation = overrides_from(VALIDATION, (validation_width, validation_height, validation_steps))
                rows: list[dict] = []
                lines: deque[str] = deque(maxlen=200)
                grid_path, last = None, 0.0
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
                        elif isinstance(ev, Started):
                            lines.extend(ev.images)
                            lines.append(ev.describe())
                        elif isinstance(ev, CheckpointSaved | Notice):
                            lines.append(ev.describe())
                        elif isinstance(ev, Finished):
                            head = (f"{'Stopped' if ev.stopped else 'Finished'} at step {ev.step} of {ev.total}. "
                                    f"Dream with it: pick **{name.strip()} · step {ev.step}** in the Dream tab, "
                                    "or its run in *Checkpoint × seed grid*.")
                            lines.append(ev.describe())
                        last = time.monotonic()
                        yield head, pd.DataFrame(rows, columns=["step", "loss"]), grid_path, "\n".join(lines)

        handler.__doc__ = doc
        return handler

    start_run = training(False, "Train a new run on a training set with the preset's recipe; streams status, "
                                "loss, grid, log.")
    resume_run = training(True, "Continue a run from its newest checkpoint (the recipe must match; steps may grow).")

    def stop_run(request: gr.Request) -> str:
        """Stop this session's training after the current step; a checkpoint is saved."""
        n = studio.stop(request, ["train"])
        return "Stopping after this step; a checkpoint will be saved…" if n else "No training of yours is running."

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

    def steps_of(run_name: str):
        try:
            found = checkpoints(studio.models / check_name(run_name, "run name"))
        except DreamyError:
            found = []
        return gr.update(choices=[str(s) for s, _ in reversed(found)], value=None)

    inputs = [set_name, base, preset, run_name, unlock, *fields, *v_fields]
    outputs = [status, loss, grid, log]
    gpu = {"concurrency_id": GPU, "concurrency_limit": 1}
    # typed(): each value must have its widget's type, so "false" is no unlock (studio/typed.py)
    ev_start = start.click(typed(start_run, inputs), inputs, outputs, api_name="train", **gpu)
    ev_resume = resume.click(typed(resume_run, inputs), inputs, outputs, api_name="resume_train", **gpu)
    # No Gradio cancels here: closing the generator would skip the checkpoint that Stop promises.
    stop.click(stop_run, None, status, api_name="stop_train", concurrency_limit=None, queue=False)
    for trigger in (set_name.change, widgets["resolution"].blur):  # flags depend on the training resolution
        trigger(show_set, [set_name, widgets["resolution"]], [thumbs, problems], api_visibility="private")
    upload.upload(typed(add_photos, [upload, set_name, widgets["resolution"]]), [upload, set_name, widgets["resolution"]],
                  [thumbs, problems, set_name],
                  api_name="add_photos")
    preset.input(lambda name, u: [preset_description(name), *locked_updates(name, "train", FIELDS, u)],
                 [preset, unlock], [description, *fields], api_visibility="private")
    unlock.input(lambda name, u: lock_toggled(name, "train", FIELDS, u), [preset, unlock], fields,
                 api_visibility="private")
    ex_go.click(typed(export_run, [run_name, ex_step, ex_what]), [run_name, ex_step, ex_what], [exported, status],
                api_name="export")
    run_name.change(steps_of, run_name, ex_step, api_visibility="private")
    for ev in (ev_start, ev_resume):
        ev.then(steps_of, run_name, ex_step, api_visibility="private")
    def init():
        return [*locked_updates("sweet-spot", "train", FIELDS, False), *show_set(set_name.value, 512)]

    return TrainTab([ev_start, ev_resume], init, [*fields, thumbs, problems])


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"



def _set_names(studio: Studio) -> list[str]:
    try:
        return list_training_sets(studio.training_sets)
    except DreamyError:  # training-sets/ leads out of outputs/: no sets to offer (each use says why)
        return []
