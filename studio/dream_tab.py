"""The Dream tab: model and preset pickers, locked fields, seed sweeps streamed into a gallery, the
Word box (word -> picture -> particles, studio/dream_word.py), recall from a PNG, the checkpoint x seed
grid (one run, or several side by side), prompt sweeps, and hand-offs to Enlarge and Train (each kept
picture with its caption file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from dreamy.errors import Cancelled, DreamyError
from dreamy.layout import model_choices as layout_model_choices
from dreamy.layout import runs
from dreamy.models.sources import DEFAULT_MODEL, SD15
from dreamy.paths import check_tree, within
from dreamy.recipes.presets import list_presets
from dreamy.recipes.settings import DreamSettings

from . import dream_word, history
from .dream_form import (
    FIELDS,
    added_status,
    load_prompt_file,
    progress_line,
    quick_label,
    quick_try,
    sameness,
    settings_from,
)
from .errors import on_gpu, user_errors
from .gallery import stream_into_gallery
from .session import GPU, Studio
from .typed import typed
from .widgets import as_int, lock_toggled, locked_updates, preset_description, preset_widget, watch_locks

DREAM_JOBS = ("dream", "sweep", "grid", "recall", dream_word.JOB)
SEEDS_HELP = "7 · 0-15 · 1,5,9 · 100-200:10"
PRESET = "biased-dreams"  # the preset the tab opens with


@dataclass
class DreamTab:
    model: gr.Dropdown
    run: gr.Dropdown
    paths: gr.State
    selected: gr.State
    send_enlarge: gr.Button
    send_particles: gr.Button
    send: Any  # (paths, selected index) -> the selected picture's path
    init: Any  # page load: () -> updates for init_outputs (lists only, never a value the visitor may change)
    init_outputs: list
    seeds: Any = None  # set by a grid cell opened from Train (app.py)
    send_all_enlarge: Any = None  # "Send all to Enlarge": the gallery's pictures as Enlarge's batch (app.py)
    form: list = field(default_factory=list)  # [preset, unlock, *fields]: what a PNG's recipe sets (app.py)
    form_from: Any = None  # (png, current preset) -> updates for ``form``: the PNG's own settings


SD15_DOWNLOAD = f"SD 1.5 (download, {SD15.summary})"  # "~4.3 GB, CreativeML OpenRAIL-M": fp32 unet, vae, text encoder
SD15_ABSENT = "SD 1.5 (not on this machine)"


def sd15_label(studio: Studio) -> str:
    """Stable Diffusion 1.5 as the model list shows it: whether picking it means a download first."""
    from dreamy.models.hub import offline
    from dreamy.models.sources import on_this_machine

    if on_this_machine(DEFAULT_MODEL):
        return "Stable Diffusion 1.5"
    return SD15_ABSENT if studio.shared or offline() else SD15_DOWNLOAD


def model_choices(studio: Studio) -> list[tuple[str, str]]:
    base = [("tiny (offline demo)", "tiny"), ("tiny-sdxl (offline SDXL demo)", "tiny-sdxl"),
            (sd15_label(studio), DEFAULT_MODEL)]
    for extra in (studio.default_model, *studio.extra_models):
        if extra not in (v for _, v in base):
            base.append((extra, extra))
    return layout_model_choices(studio.models, base)


def build(studio: Studio) -> DreamTab:
    """Lay out the Dream tab and wire its events (call inside a gr.Tab)."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            with gr.Row():
                model = gr.Dropdown(model_choices(studio), value=studio.default_model, label="Model",
                                    allow_custom_value=True, scale=3, elem_id="dream-model",  # studio.model_source checks
                                    info="base, a trained model, or one checkpoint of a run")
                preset = gr.Dropdown(list_presets(), value=PRESET, label="Preset", scale=2, elem_id="dream-preset")
            description = gr.Markdown(preset_description(PRESET), elem_classes="dreamy-note")
            with gr.Row():
                seeds = gr.Textbox("0-3", label="Seeds", info=SEEDS_HELP, scale=2, elem_id="dream-seeds")
                batch = gr.Slider(1, 16, value=1, step=1, label="Batch size", info="GPU speed only; images do not change",
                                  scale=2)
            unlock = gr.Checkbox(False, label="Unlock the preset's locked settings (recorded in every image)",
                                 elem_id="dream-unlock")
            widgets: dict[str, Any] = {}

            def field(n: str, **kwargs: Any) -> Any:
                # the preset's values from the start (also the API's defaults), its locks marked (widgets.lock_mark)
                widgets[n] = preset_widget(DreamSettings, n, PRESET, "dream", marks=True, elem_id=f"dream-{n}", **kwargs)
                return widgets[n]

            with gr.Group():
                field("prompt", lines=2)
                field("negative_prompt")
                for pair in (("guidance", "steps"), ("width", "height")):  # two abreast: room for the lock notes
                    with gr.Row():
                        for n in pair:
                            field(n, min_width=120)
            with gr.Accordion("Sampler and prompt syntax", open=False):
                with gr.Group():
                    with gr.Row():
                        field("sampler", min_width=120)
                        field("prompt_syntax", min_width=120)
                    field("scheduler", info="the sampler's diffusers arguments (JSON)")
            fields = [widgets[n] for n in FIELDS]
            with gr.Row():
                go = gr.Button("Dream", variant="primary", elem_id="dream-go", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="dream-stop", scale=1)
            quick = gr.Button(f"Quick try: {quick_label()} (unlocked, recorded in every image)", size="sm",
                              elem_id="dream-quick")
            word_box = dream_word.build()
            with gr.Accordion("Recall: drop a PNG (or another tool's JPEG/WebP) to see and re-dream its recipe",
                              open=False):
                recall_png = gr.File(label="PNG, JPEG or WebP", file_types=[".png", ".jpg", ".jpeg", ".webp"],
                                     type="filepath", elem_id="dream-recall")  # no height: its row is not clipped
                recall_info = gr.Markdown()
                with gr.Row():
                    recall_use = gr.Button("Use its settings")
                    recall_go = gr.Button("Re-dream it exactly", variant="primary")
                recall_out = gr.Image(label="Re-dreamed", type="filepath", format="png", height=256, interactive=False)
                recall_status = gr.Markdown(elem_id="dream-recall-status")  # with its result, not under the gallery
            with gr.Accordion("Checkpoint × seed grid: find the window", open=False):
                gr.Markdown("Dreams the seeds above on every checkpoint of a training run (rows) with this preset. "
                            "Runs picked under *Side by side* get a block of their own beside it, rows matched by "
                            "step: the same seeds and prompt (put the runs' validation prompt in the form).",
                            elem_classes="dreamy-note")
                with gr.Row():
                    run = gr.Dropdown(runs(studio.models), label="Training run", scale=3, elem_id="dream-run",
                                      allow_custom_value=True)  # checked: must lie inside models/
                    which = gr.Textbox("all", label="Checkpoints", info="all, or steps: 200,400 · 0-1200:200", scale=2)
                compare = gr.Dropdown(runs(studio.models), value=[], multiselect=True, label="Side by side with",
                                      info="other runs to compare checkpoint by checkpoint (AdamW vs Prodigy ...)",
                                      allow_custom_value=True,  # checked: must lie inside models/
                                      elem_id="dream-compare")
                grid_go = gr.Button("Dream the grid", variant="primary", elem_id="dream-grid-go")
                grid_img = gr.Image(label="Checkpoints × seeds", type="filepath", format="png", interactive=False)
            with gr.Accordion("Prompt sweep: variants × seeds", open=False):
                gr.Markdown("One prompt per line; `{prompt}` stands for the preset's prompt. Changing the prompt "
                            "needs the preset unlocked, and every image records it.", elem_classes="dreamy-note")
                variants = gr.Textbox("", lines=4, label="Prompt variants", elem_id="dream-variants",
                                      placeholder="{prompt}, by J. M. W. Turner\n{prompt}, by Hiroshi Yoshida")
                prompt_file = gr.UploadButton("Load a prompt file (.txt, one prompt a line)", file_types=[".txt"],
                                              size="sm", elem_id="dream-prompt-file")
                sweep_go = gr.Button("Sweep the prompts", variant="primary", elem_id="dream-sweep-go")
                sweep_img = gr.Image(label="Variants × seeds", type="filepath", format="png", interactive=False)
        with gr.Column(scale=3, min_width=420):
            # fit_columns=False: one picture stays a quarter wide (Gradio's default widened it past the frame)
            gallery = gr.Gallery(label="Dreams", format="png", columns=4, height=480, object_fit="contain",
                                 elem_id="dream-gallery", preview=False, fit_columns=False)
            status = gr.Markdown(elem_id="dream-status")
            # a picture, not a file link: the PNG itself (recipe inside) is served and downloaded as it is
            sheet = gr.Image(label="Contact sheet / grid (PNG with recipe)", type="filepath", format="png",
                             interactive=False, height=360, elem_id="dream-sheet")
            with gr.Row():
                send_enlarge = gr.Button("Send to Enlarge", size="sm")
                send_all_enlarge = gr.Button("Send all to Enlarge", size="sm")
                send_particles = gr.Button("Send to Particles", size="sm")
            with gr.Row():
                set_name = gr.Textbox("candidates", label="Training set", scale=2, min_width=120)
                trigger = gr.Textbox("", label="Trigger word (captions)", scale=2, min_width=120,
                                     placeholder="the picture's preset's", elem_id="dream-set-trigger")
                add = gr.Button("Add selected to training set", size="sm", scale=2, elem_id="dream-add-to-set")
            past = history.past_dreams_picker(studio)  # a past job back in the gallery (studio/history.py)
    paths = gr.State([])
    selected = gr.State(None)
    history.wire_past_dreams(studio, past, gallery, sheet, status, paths, selected)

    # ---- handlers: each turns widget values into one core call ----

    def dream(model: str, preset: str, seeds: str, unlock: bool, batch_size: float, prompt: str,
              negative_prompt: str, guidance: float, steps: float, width: float, height: float,
              sampler: str | None = None, prompt_syntax: str | None = None, scheduler: str | None = None,
              request: gr.Request = None, progress=gr.Progress()):
        """Dream every seed with the preset (locked fields can only change with unlock=True); streams PNGs.
        ``sampler``, ``prompt_syntax`` and ``scheduler`` (JSON) may be left out: the preset's."""
        from dreamy.dreaming.dreams import dream_stream

        with user_errors("dream"):
            source = studio.model_source(model)
            bs = as_int(batch_size, "Batch size")
            on_disk(studio, source, progress)
            overrides = settings_from(FIELDS, (prompt, negative_prompt, guidance, steps, width, height, sampler,
                                               prompt_syntax, scheduler))
            yield from stream_into_gallery(
                studio, request, "dream", "dream",
                lambda token, out: dream_stream(source, preset, seeds, out_dir=out, overrides=overrides,
                                                unlock=unlock, batch_size=bs, keep_loaded=True, cancel=token,
                                                on_progress=progress_line(progress, bs)),
                caption=lambda r: (r.path, f"seed {r.seed}"),
                label=lambda r: f" · {r.recipe.model.label}" if r.recipe.model.kind == "tiny" else "",
                batch=bs)  # one gallery update per batch decoded, not one per picture

    def prompt_sweep(model: str, preset: str, seeds: str, unlock: bool, variants: str, negative_prompt: str,
                     guidance: float, steps: float, width: float, height: float, sampler: str | None = None,
                     prompt_syntax: str | None = None, scheduler: str | None = None,
                     request: gr.Request = None, progress=gr.Progress()):
        """Dream each prompt variant (one per line; {prompt} = the preset's) × every seed; a labelled grid."""
        from dreamy.dreaming.prompt_sweeps import prompt_sweep_stream

        with user_errors("sweep"):
            source = studio.model_source(model)
            on_disk(studio, source, progress)
            overrides = settings_from(FIELDS[1:], (negative_prompt, guidance, steps, width, height, sampler,
                                                   prompt_syntax, scheduler))
            for update in stream_into_gallery(
                    studio, request, "sweep", "prompt-sweep",
                    lambda token, out: prompt_sweep_stream(source, preset, variants, seeds, out, overrides=overrides,
                                                           unlock=unlock, keep_loaded=True, cancel=token,
                                                           on_progress=progress_line(progress)),
                    caption=lambda c: (c.image.path, f"{c.row + 1} · seed {c.image.seed}")):
                yield *update, update[1]  # the grid also shows in the sweep's own image

    def checkpoint_grid(run: str, checkpoints: str, preset: str, seeds: str, unlock: bool, prompt: str,
                        negative_prompt: str, guidance: float, steps: float, width: float, height: float,
                        sampler: str | None = None, prompt_syntax: str | None = None, scheduler: str | None = None,
                        compare: list[str] | None = None, request: gr.Request = None, progress=gr.Progress()):
        """Dream the seeds on every checkpoint of a training run (checkpoints as rows): the "find the window" grid.
        ``compare``: more runs, each a block of its own beside it (rows matched by step)."""
        from dreamy.dreaming.sweeps import sweep

        with user_errors("sweep"):
            if not run:
                raise gr.Error("Choose a training run (runs appear here once Train has saved a checkpoint).")
            # every checkpoint in each run is read: each run checked to lie inside models/
            folders = list(dict.fromkeys(check_tree(r, [studio.models], "training run")
                                         for r in [run, *(compare or [])]))
            overrides = settings_from(FIELDS, (prompt, negative_prompt, guidance, steps, width, height, sampler,
                                               prompt_syntax, scheduler))
            with studio.job_folder("checkpoint-grid") as out, studio.running(request, "grid") as token:
                try:
                    # the base row's source comes from the run's run.json: vetted like a picked model
                    drawn = sweep([str(f) for f in folders], preset, seeds, out, checkpoints=checkpoints.strip() or None,
                                  overrides=overrides, unlock=unlock, check_source=studio.model_source,
                                  on_progress=lambda e: progress(e.fraction, desc=f"batch {e.step} of {e.steps} · "
                                                                 f"{e.message}"), cancel=token)
                except Cancelled:
                    said = f"Stopped; the finished images are kept in `{studio.where(out)}`."
                    studio.record(request, "grid", (said, None))  # the browser cancels this event: Stop shows it
                    return [], None, said, [], None, None
            grid_path = str(drawn["grid"] or drawn["sheets"][0])  # one checkpoint: its contact sheet is the grid
            # the cells become the gallery, so a cell can be picked and sent on (Enlarge, a training set)
            cells = [(str(c["path"]), f"{c['row']} · seed {c['seed']}") for c in drawn["cells"]]
            notes = "".join(f"\n\n⚠ {n}" for n in drawn["notes"])
            names = " | ".join(f.name for f in folders)
            status = f"Grid of {names}: {len(cells)} images · `{studio.where(out)}`{notes}"
            return cells, grid_path, status, [c[0] for c in cells], None, grid_path

    def read_recipe(png: str | None) -> str:
        """What a PNG (or a JPEG/WebP) says about how it was made: a Dreamy recipe, or another tool's
        parameters (A1111/Forge, Fooocus, ComfyUI)."""
        from dreamy.png.info import describe_png

        if not png:
            return ""
        with user_errors("recall"):
            return _describe(describe_png(png))

    def recall(png: str | None, progress=gr.Progress()):
        """Re-create a Dreamy PNG from its recipe (same model, seed and settings)."""
        from dreamy.dreaming.dreams import recall as core_recall

        with user_errors("recall"):
            if not png:
                raise gr.Error("Drop a PNG made by Dreamy first.")
            progress(0, desc="re-dreaming")
            with studio.job_folder("recall") as out:  # the model a PNG names is checked: it may name any path
                r = core_recall(png, out_dir=out, device="auto", keep_loaded=True, check_source=studio.model_source)
            return str(r.path), f"Re-dreamed seed {r.seed}: {sameness(png, r.path)} · `{studio.where(out)}`"

    def use_settings(png: str | None, current_preset: str):
        from dreamy.png.info import dream_form

        with user_errors("recall"):
            if not png:
                raise gr.Error("Drop a PNG first.")
            form = dream_form(png, current_preset)
            seed = str(form.seed) if form.seed is not None else gr.update()
            mdl = form.model if form.model and _allowed(studio, form.model) else gr.update()
            return [seed, mdl, *form_updates(form)]

    def form_updates(form) -> list:
        """[preset, unlock, *fields] set to a PNG's settings (unlocked where they differ from its preset)."""
        needs_unlock = bool(form.unlock)
        return [gr.update(value=form.preset), needs_unlock,
                *locked_updates(form.preset, "dream", FIELDS, needs_unlock, form.values, marks=True)]

    def form_from(png: str, current_preset: str) -> list:
        from dreamy.png.info import dream_form

        return form_updates(dream_form(png, current_preset))

    def select(evt: gr.SelectData):
        return evt.index

    def send(paths: list[str], index: int | None):
        if index is None or not paths or index >= len(paths):
            raise gr.Error("Click a picture in the gallery first.")
        return paths[index]

    def add_to_set(paths: list[str], index: int | None, name: str, trigger: str = "") -> str:
        """The picked picture into a training set, beside its caption file (its prompt, the trigger applied)."""
        from dreamy.training.sets import add_to_training_set

        with user_errors("curation"):
            path = send(paths, index)
            within(path, [studio.outputs], "picture")
            kept = add_to_training_set([path], name, studio.training_sets, captions=True,
                                       trigger=trigger.strip() or None)
            return added_status(kept)

    # ---- wiring ----
    gpu = {"concurrency_id": GPU, "concurrency_limit": 1}
    outs = [gallery, sheet, status, paths, selected]
    # typed(): every value from the page or an API client must have its widget's type (studio/typed.py)
    # One progress bar per job, on the gallery (Gradio draws one on every output otherwise)
    on_gallery = {"show_progress_on": [gallery]}
    ins = [model, preset, seeds, unlock, batch, *fields]
    dream_ev = go.click(on_gpu(typed(dream, ins)), ins, outs, api_name="dream", **gpu, **on_gallery)
    # Quick try: the quick-try preset's changes go into the form, unlocked (so recorded), then it dreams
    quick_ev = quick.click(quick_try, [preset, *fields], [unlock, *fields], api_visibility="private",
                           queue=False, show_progress="hidden").success(on_gpu(typed(dream, ins)), ins, outs, api_visibility="private",
                                                **gpu, **on_gallery)
    ins = [model, preset, seeds, unlock, variants, *fields[1:]]
    sweep_ev = sweep_go.click(on_gpu(typed(prompt_sweep, ins)), ins, [*outs, sweep_img], api_name="prompt_sweep",
                              **gpu, **on_gallery)
    ins = [run, which, preset, seeds, unlock, *fields, compare]
    grid_ev = grid_go.click(on_gpu(typed(checkpoint_grid, ins)), ins, [*outs, grid_img],
                            api_name="checkpoint_grid", **gpu, **on_gallery)
    word_ev = dream_word.wire(word_box, studio, on_disk, model, preset, unlock, fields, gallery, paths, selected, gpu)
    recall_ev = recall_go.click(on_gpu(recall), [recall_png], [recall_out, recall_status], api_name="recall", **gpu,
                                show_progress_on=[recall_out])
    def stop_jobs(request: gr.Request):
        """Stop this session's running dream, sweep or grid at its next step; finished images are kept.
        Returns the stopped job's status and contact sheet once it has wound down."""
        if not studio.stop(request, DREAM_JOBS):
            return "Nothing of yours is running.", gr.update()
        outcome = studio.stopped_outcome(request, DREAM_JOBS)
        return outcome if outcome else ("Stopped.", gr.update())

    stop.click(stop_jobs, None, [status, sheet], api_name="stop",
               cancels=[dream_ev, quick_ev, sweep_ev, grid_ev, recall_ev, word_ev], concurrency_limit=None, queue=False)
    recall_png.change(read_recipe, recall_png, recall_info, api_name="read_recipe")
    recall_png.change(lambda: (None, ""), None, [recall_out, recall_status], api_visibility="private",
                      queue=False)  # another file: the last re-dream and its verdict go
    recall_use.click(use_settings, [recall_png, preset], [seeds, model, preset, unlock, *fields],
                     api_visibility="private", show_progress="hidden")
    preset.input(lambda name, u: [preset_description(name), *locked_updates(name, "dream", FIELDS, u, marks=True)],
                 [preset, unlock], [description, *fields], api_visibility="private", show_progress="hidden")
    unlock.input(lambda name, u, *now: lock_toggled(name, "dream", FIELDS, u, now, marks=True),
                 [preset, unlock, *fields], fields, api_visibility="private", show_progress="hidden")
    watch_locks(preset, unlock, widgets, "dream")  # an unlocked field that differs from the preset says so
    gallery.select(select, None, selected, api_visibility="private")
    add.click(add_to_set, [paths, selected, set_name, trigger], status, api_visibility="private")
    prompt_file.upload(load_prompt_file, prompt_file, variants, api_visibility="private")
    compare.focus(lambda: gr.update(choices=runs(studio.models)), None, compare, api_visibility="private",
                  queue=False, show_progress="hidden")  # runs trained since the page loaded
    # Page load: nothing. The form is drawn with PRESET's values and locks at build time (preset_widget),
    # and a load answer that came late on a busy machine reset a preset or an Unlock picked meanwhile.
    return DreamTab(model, run, paths, selected, send_enlarge, send_particles, send, list, [], seeds=seeds,
                    send_all_enlarge=send_all_enlarge, form=[preset, unlock, *fields], form_from=form_from)


def refresh_pickers(studio: Studio):
    """New runs and checkpoints appear in the pickers (after training, or on page load)."""
    return gr.update(choices=model_choices(studio)), gr.update(choices=runs(studio.models))


def on_disk(studio: Studio, source: str, progress: gr.Progress) -> None:
    """A hub model that is not on this machine yet is downloaded first, with its own progress; a
    shared studio downloads nothing (its visitors must not fill its disk), and says so."""
    from dreamy.models.sources import download_model, on_this_machine

    if on_this_machine(source):
        return
    if studio.shared:
        name = "Stable Diffusion 1.5" if source == DEFAULT_MODEL else f"'{source}'"
        raise gr.Error(f"{name} is not on this machine, and a shared studio downloads nothing; whoever runs it "
                       "can download it by picking it once in a studio of their own (without --share).")
    download_model(source, on_progress=lambda e: progress(e.fraction, desc=e.message))


def _allowed(studio: Studio, source: str) -> bool:
    try:
        studio.model_source(source)
        return True
    except DreamyError:
        return False


def _describe(info: Any) -> str:
    if info.kind == "none":
        return f"⚠ {info.message}"
    if info.kind == "foreign":
        from dreamy.png.info import reproducible

        rows = "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in info.parameters.items() if v not in ("", None))
        can, cannot = reproducible(info)
        uses = (f"\n\n*Use its settings* puts back its {', '.join(can) or 'nothing'}"
                + (f"; not its {', '.join(cannot)[:300]}" if cannot else "") + "."
                + "".join(f"\n\n⚠ {n}" for n in info.notes))
        return f"{info.message}{uses}\n\n| parameter | value |\n|---|---|\n{rows}"
    return info.recipe.summary(markdown=True)


def _cell(v: Any) -> str:
    """A foreign value as one Markdown table cell: one line, no pipes, at most 200 characters."""
    return " ".join(str(v).split()).replace("|", "\\|")[:200]
