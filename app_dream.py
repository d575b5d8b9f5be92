"""The Dream tab: model and preset pickers, locked fields, seed sweeps streamed into a gallery,
recall from a PNG, the checkpoint x seed grid, prompt sweeps, and hand-offs to Enlarge and Train."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app_common import (
    GPU,
    Studio,
    as_int,
    field_widget,
    lock_toggled,
    locked_updates,
    on_gpu,
    overrides_from,
    preset_description,
    user_errors,
)
from dreamy import catalog
from dreamy.errors import Cancelled, DreamyError
from dreamy.layout import release_if_empty
from dreamy.models.sources import DEFAULT_MODEL
from dreamy.paths import within
from dreamy.recipes.presets import list_presets, load_preset
from dreamy.recipes.recipe import resolve
from dreamy.recipes.seeds import parse_seeds
from dreamy.recipes.settings import DreamSettings

FIELDS = ["prompt", "negative_prompt", "guidance", "steps", "width", "height"]
DREAM_JOBS = ("dream", "sweep", "grid", "recall")
SEEDS_HELP = "7 · 0-15 · 1,5,9 · 100-200:10"


@dataclass
class DreamTab:
    model: gr.Dropdown
    run: gr.Dropdown
    gallery: gr.Gallery
    paths: gr.State
    selected: gr.State
    send_enlarge: gr.Button
    send_particles: gr.Button
    status: gr.Markdown
    fields: list
    send: Any  # (paths, selected index) -> the selected picture's path
    init: Any  # page load: () -> updates for init_outputs
    init_outputs: list


def model_choices(studio: Studio) -> list[tuple[str, str]]:
    base = [("tiny (offline demo)", "tiny"), ("Stable Diffusion 1.5", DEFAULT_MODEL)]
    for extra in (studio.default_model, *studio.extra_models):
        if extra not in (v for _, v in base):
            base.append((extra, extra))
    return catalog.model_choices(studio.models, base)


def _gallery(results: list) -> list[tuple[str, str]]:
    return [(str(r.path), f"seed {r.seed}") for r in results]


def _cells(cells: list) -> list[tuple[str, str]]:
    return [(str(c.image.path), f"{c.row + 1} · seed {c.image.seed}") for c in cells]


def _cell_paths(cells: list) -> list[str]:
    return [str(c.image.path) for c in cells]


def _where(studio: Studio, folder: Path) -> str:
    try:
        return str(folder.relative_to(studio.outputs.parent))
    except ValueError:
        return str(folder)


def _prepare(studio: Studio, model: str, preset: str, seeds: str, unlock: bool, values: tuple) -> tuple:
    """Everything checked before a model is loaded or a folder made: source, locks, seeds."""
    source = studio.model_source(model)
    p = load_preset(preset)
    recipe = resolve(p, "dream", overrides_from(FIELDS, values), bool(unlock))
    seed_list = parse_seeds(seeds)
    return source, p, recipe, seed_list


def build(studio: Studio) -> DreamTab:
    """Lay out the Dream tab and wire its events (call inside a gr.Tab)."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            with gr.Row():
                model = gr.Dropdown(model_choices(studio), value=studio.default_model, label="Model",
                                    allow_custom_value=True, scale=3,  # checked by studio.model_source
                                    info="base, a trained model, or one checkpoint of a run")
                preset = gr.Dropdown(list_presets(), value="biased-dreams", label="Preset", scale=2)
            description = gr.Markdown(preset_description("biased-dreams"), elem_classes="dreamy-note")
            with gr.Row():
                seeds = gr.Textbox("0-3", label="Seeds", info=SEEDS_HELP, scale=2, elem_id="dream-seeds")
                batch = gr.Slider(1, 16, value=1, step=1, label="Batch size", info="GPU speed only; images do not change",
                                  scale=2)
            unlock = gr.Checkbox(False, label="Unlock the preset's locked settings (recorded in every image)",
                                 elem_id="dream-unlock")
            with gr.Group():
                prompt = field_widget(DreamSettings, "prompt", lines=2, elem_id="dream-prompt")
                negative = field_widget(DreamSettings, "negative_prompt", elem_id="dream-negative_prompt")
                with gr.Row():
                    guidance, steps, width, height = (
                        field_widget(DreamSettings, n, min_width=80, elem_id=f"dream-{n}")
                        for n in ("guidance", "steps", "width", "height"))
            fields = [prompt, negative, guidance, steps, width, height]
            with gr.Row():
                go = gr.Button("Dream", variant="primary", elem_id="dream-go", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="dream-stop", scale=1)
            with gr.Accordion("Prompt helper", open=False, visible=bool(studio.prompt_model)):
                with gr.Row():
                    word = gr.Textbox(label="One word", scale=3)
                    grow = gr.Button("Grow a prompt", scale=1)
            with gr.Accordion("Recall: drop a PNG to see and re-dream its recipe", open=False):
                recall_png = gr.File(label="PNG", file_types=[".png"], type="filepath", height=120,
                                     elem_id="dream-recall")
                recall_info = gr.Markdown()
                with gr.Row():
                    recall_use = gr.Button("Use its settings")
                    recall_go = gr.Button("Re-dream it exactly", variant="primary")
                recall_out = gr.Image(label="Re-dreamed", type="filepath", format="png", height=256, interactive=False)
            with gr.Accordion("Checkpoint × seed grid: find the window", open=False):
                gr.Markdown("Dreams the seeds above on every checkpoint of a training run (rows) with this preset.",
                            elem_classes="dreamy-note")
                with gr.Row():
                    run = gr.Dropdown(catalog.runs(studio.models), label="Training run", scale=3,
                                      allow_custom_value=True)  # checked: must lie inside models/
                    which = gr.Textbox("all", label="Checkpoints", info="all, or steps: 200,400 · 0-1200:200", scale=2)
                grid_go = gr.Button("Dream the grid", variant="primary")
                grid_img = gr.Image(label="Checkpoints × seeds", type="filepath", format="png", interactive=False)
            with gr.Accordion("Prompt sweep: variants × seeds", open=False):
                gr.Markdown("One prompt per line; `{prompt}` stands for the preset's prompt. Changing the prompt "
                            "needs the preset unlocked, and every image records it.", elem_classes="dreamy-note")
                variants = gr.Textbox(lines=4, label="Prompt variants",
                                      placeholder="{prompt}, by J. M. W. Turner\n{prompt}, by Hiroshi Yoshida")
                sweep_go = gr.Button("Sweep the prompts", variant="primary")
                sweep_img = gr.Image(label="Variants × seeds", type="filepath", format="png", interactive=False)
        with gr.Column(scale=3, min_width=420):
            gallery = gr.Gallery(label="Dreams", format="png", columns=4, height=480, object_fit="contain",
                                 elem_id="dream-gallery", preview=False)
            status = gr.Markdown(elem_id="dream-status")
            sheet = gr.File(label="Contact sheet / grid (PNG with recipe)", interactive=False, height=60)
            with gr.Row():
                send_enlarge = gr.Button("Send to Enlarge", size="sm")
                send_particles = gr.Button("Send to Particles", size="sm")
            with gr.Row():
                set_name = gr.Textbox("candidates", label="Training set", scale=2, min_width=120)
                add = gr.Button("Add selected to training set", size="sm", scale=2)
    paths = gr.State([])
    selected = gr.State(None)

    # ---- handlers: each turns widget values into one core call ----

    def dream(model: str, preset: str, seeds: str, unlock: bool, batch_size: float, prompt: str,
              negative_prompt: str, guidance: float, steps: float, width: float, height: float,
              request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """Dream every seed with the preset (locked fields can only change with unlock=True); streams PNGs."""
        from dreamy.dreaming.contact_sheet import write_contact_sheet
        from dreamy.dreaming.dreams import dream_iter
        from dreamy.models.sources import cached_model

        with user_errors("dream"):
            values = (prompt, negative_prompt, guidance, steps, width, height)
            source, p, recipe, seed_list = _prepare(studio, model, preset, seeds, unlock, values)
            bs = as_int(batch_size, "Batch size")
            m = cached_model(source, precision=p.dream.precision)
            out = studio.run_dir("dream")
            token = studio.start(request, "dream")
            results, stopped = [], False
            demo = f" · {m.ref.label}" if m.is_demo else ""
            try:
                try:
                    for r in dream_iter(m, seeds=seed_list, recipe=recipe, out_dir=out, batch_size=bs,
                                        on_progress=lambda e: progress(e.fraction, desc=e.message), cancel=token):
                        results.append(r)
                        yield _gallery(results), None, f"{len(results)} of {len(seed_list)} · " \
                            f"`{_where(studio, out)}`{demo}", [str(r.path) for r in results], None
                except Cancelled:
                    stopped = True
                if not results:
                    release_if_empty(out)
                    final = ([], None, "Stopped before the first image.", [], None)
                else:
                    sheet_path = (write_contact_sheet(results, out / "contact-sheet.png") if len(results) > 1
                                  else results[0].path)
                    note = f"Stopped after {len(results)} of {len(seed_list)}" if stopped else f"{len(results)} dreamed"
                    final = (_gallery(results), str(sheet_path), f"{note} · `{_where(studio, out)}`{demo}",
                             [str(r.path) for r in results], None)
                if stopped:
                    studio.record(request, (final[2], final[1]))
            finally:
                studio.finish(request, "dream", token)
            yield final

    def prompt_sweep(model: str, preset: str, seeds: str, unlock: bool, variants: str, negative_prompt: str,
                     guidance: float, steps: float, width: float, height: float,
                     request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """Dream each prompt variant (one per line; {prompt} = the preset's) × every seed; a labelled grid."""
        from dreamy.dreaming.prompt_sweeps import expand_prompts, prompt_sweep_iter, write_prompt_grid
        from dreamy.models.sources import cached_model

        with user_errors("sweep"):
            p = load_preset(preset)
            prompts = expand_prompts(variants, p.dream.prompt)
            overrides = overrides_from(FIELDS[1:], (negative_prompt, guidance, steps, width, height))
            source = studio.model_source(model)
            for prompt in prompts:  # every variant passes the locks before any work
                resolve(p, "dream", {**overrides, "prompt": prompt}, bool(unlock))
            seed_list = parse_seeds(seeds)
            m = cached_model(source, precision=p.dream.precision)
            out = studio.run_dir("prompt-sweep")
            token = studio.start(request, "sweep")
            cells, stopped = [], False
            total = len(prompts) * len(seed_list)
            try:
                try:
                    for c in prompt_sweep_iter(m, p, prompts, seed_list, out, overrides=overrides,
                                               unlock=bool(unlock), cancel=token,
                                               on_progress=lambda e: progress(e.fraction, desc=e.message)):
                        cells.append(c)
                        yield _cells(cells), None, f"{len(cells)} of {total}", _cell_paths(cells), None, None
                except Cancelled:
                    stopped = True
                if not cells:
                    release_if_empty(out)
                    final = ([], None, "Stopped before the first image.", [], None, None)
                else:
                    grid_path = str(write_prompt_grid(cells, out / "prompt-grid.png"))
                    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
                    note = f"Stopped after {len(cells)} of {total}" if stopped else f"{len(cells)} dreamed"
                    final = (_cells(cells), grid_path, f"{note} · `{_where(studio, out)}`", _cell_paths(cells), None,
                             grid_path)
                if stopped:
                    studio.record(request, (final[2], final[1]))
            finally:
                studio.finish(request, "sweep", token)
            yield final

    def checkpoint_grid(run: str, checkpoints: str, preset: str, seeds: str, unlock: bool, prompt: str,
                        negative_prompt: str, guidance: float, steps: float, width: float, height: float,
                        request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """Dream the seeds on every checkpoint of a training run (checkpoints as rows): the "find the window" grid."""
        from dreamy.dreaming.sweeps import sweep

        with user_errors("sweep"):
            if not run:
                raise gr.Error("Choose a training run (runs appear here once Train has saved a checkpoint).")
            folder = within(run, [studio.models], "training run")
            overrides = overrides_from(FIELDS, (prompt, negative_prompt, guidance, steps, width, height))
            resolve(load_preset(preset), "dream", overrides, bool(unlock))
            parse_seeds(seeds)
            out = studio.run_dir("checkpoint-grid")
            token = studio.start(request, "grid")
            try:
                sweep(str(folder), preset, seeds, out, checkpoints=checkpoints.strip() or None, overrides=overrides,
                      unlock=bool(unlock), on_progress=lambda e: progress(e.fraction, desc=e.message), cancel=token)
            except Cancelled:
                return None, None, "Stopped; the finished images are kept in " + f"`{_where(studio, out)}`."
            finally:
                studio.finish(request, "grid", token)
            grid_path = out / "grid.png"
            if not grid_path.exists():  # a single checkpoint: its contact sheet is the grid
                grid_path = next(out.glob("*/contact-sheet*.png"))
            return str(grid_path), str(grid_path), f"Grid of {folder.name} · `{_where(studio, out)}`"

    def read_recipe(png: str | None) -> str:
        """What a PNG says about how it was made (Dreamy recipe, or a foreign tool's parameters)."""
        from dreamy.png.info import describe_png

        if not png:
            return ""
        with user_errors("recall"):
            return _describe(describe_png(png))

    def recall(png: str | None, progress=gr.Progress()):  # noqa: B008
        """Re-create a Dreamy PNG from its recipe (same model, seed and settings)."""
        from dreamy.dreaming.dreams import recall as core_recall
        from dreamy.models.sources import cached_model
        from dreamy.png.metadata import read_recipe as core_read

        with user_errors("recall"):
            if not png:
                raise gr.Error("Drop a PNG made by Dreamy first.")
            recipe = core_read(Path(png))
            if recipe.job != "dream" or recipe.model is None:
                raise gr.Error("Only dreamed images can be re-dreamed.")
            source = studio.model_source(recipe.model.source)  # a PNG may name any path: check it
            m = cached_model(source, precision=recipe.settings.precision)
            progress(0, desc="re-dreaming")
            out = studio.run_dir("recall")
            try:
                r = core_recall(png, out_dir=out, model=m)
            finally:
                release_if_empty(out)
            return str(r.path), f"Re-dreamed seed {r.seed} · `{_where(studio, out)}`"

    def use_settings(png: str | None, current_preset: str):
        from dreamy.png.info import describe_png

        with user_errors("recall"):
            if not png:
                raise gr.Error("Drop a PNG first.")
            info = describe_png(png)
            if info.kind == "none":
                raise gr.Error(info.message)
            name = info.preset if info.preset in list_presets() else current_preset
            p = load_preset(name)
            base = {k: getattr(p.dream, k) for k in FIELDS}
            values = {**base, **info.values}
            needs_unlock = any(values[k] != base[k] for k in FIELDS if k in p.locked.get("dream", ()))
            seed = str(info.seed) if info.seed is not None else gr.update()
            mdl = info.model if info.model and _allowed(studio, info.model) else gr.update()
            return [gr.update(value=name), seed, needs_unlock, mdl,
                    *locked_updates(name, "dream", FIELDS, needs_unlock, values)]

    def select(evt: gr.SelectData):
        return evt.index

    def send(paths: list[str], index: int | None):
        if index is None or not paths or index >= len(paths):
            raise gr.Error("Click a picture in the gallery first.")
        return paths[index]

    def add_to_set(paths: list[str], index: int | None, name: str) -> str:
        from dreamy.training.sets import add_to_training_set

        with user_errors("curation"):
            path = send(paths, index)
            within(path, [studio.outputs], "picture")
            added, _ = add_to_training_set([path], name, studio.training_sets)
            count = len([f for f in (studio.training_sets / name.strip()).iterdir() if not f.name.startswith(".")])
            return f"Added `{Path(path).name}` to training set **{name.strip()}** ({count} files); train on it in the Train tab."

    def grow_prompt(word: str, unlock: bool):
        from dreamy.prompt_helper import expand

        with user_errors("prompt helper"):
            if not studio.prompt_model:
                raise gr.Error("No prompt model is configured (DREAMY_PROMPT_MODEL).")
            text = expand(word, studio.prompt_model)
            return gr.update(value=text), ("" if unlock else "Unlock the preset to dream with the new prompt.")

    # ---- wiring ----
    gpu = {"concurrency_id": GPU, "concurrency_limit": 1}
    outs = [gallery, sheet, status, paths, selected]
    dream_ev = go.click(on_gpu(dream), [model, preset, seeds, unlock, batch, *fields], outs, api_name="dream", **gpu)
    sweep_ev = sweep_go.click(on_gpu(prompt_sweep), [model, preset, seeds, unlock, variants, *fields[1:]],
                              [*outs, sweep_img], api_name="prompt_sweep", **gpu)
    grid_ev = grid_go.click(on_gpu(checkpoint_grid), [run, which, preset, seeds, unlock, *fields],
                            [grid_img, sheet, status], api_name="checkpoint_grid", **gpu)
    recall_ev = recall_go.click(on_gpu(recall), [recall_png], [recall_out, status], api_name="recall", **gpu)
    def stop_jobs(request: gr.Request):
        """Stop this session's running dream, sweep or grid at its next step; finished images are kept.
        Returns the stopped job's status and contact sheet once it has wound down."""
        if not studio.stop(request, DREAM_JOBS):
            return "Nothing of yours is running.", gr.update()
        outcome = studio.stopped_outcome(request, DREAM_JOBS)
        return outcome if outcome else ("Stopped.", gr.update())

    stop.click(stop_jobs, None, [status, sheet], api_name="stop",
               cancels=[dream_ev, sweep_ev, grid_ev, recall_ev], concurrency_limit=None, queue=False)
    recall_png.change(read_recipe, recall_png, recall_info, api_name="read_recipe")
    recall_use.click(use_settings, [recall_png, preset], [preset, seeds, unlock, model, *fields],
                     api_visibility="private")
    preset.input(lambda name, u: [preset_description(name), *locked_updates(name, "dream", FIELDS, u)],
                 [preset, unlock], [description, *fields], api_visibility="private")
    unlock.input(lambda name, u: lock_toggled(name, "dream", FIELDS, u), [preset, unlock], fields,
                 api_visibility="private")
    gallery.select(select, None, selected, api_visibility="private")
    add.click(add_to_set, [paths, selected, set_name], status, api_visibility="private")
    grow.click(grow_prompt, [word, unlock], [prompt, status], api_visibility="private")
    def init():
        return locked_updates("biased-dreams", "dream", FIELDS, False)

    return DreamTab(model, run, gallery, paths, selected, send_enlarge, send_particles, status, fields, send,
                    init, fields)


def refresh_pickers(studio: Studio):
    """New runs and checkpoints appear in the pickers (after training, or on page load)."""
    return gr.update(choices=model_choices(studio)), gr.update(choices=catalog.runs(studio.models))


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
        rows = "\n".join(f"| {k} | {str(v)[:200]} |" for k, v in info.parameters.items() if v not in ("", None))
        return f"{info.message}\n\n| parameter | value |\n|---|---|\n{rows}"
    r = info.recipe
    s = r.settings
    model = "?"
    if r.model:
        step = f", step {r.model.checkpoint_step}" if r.model.checkpoint_step is not None else ""
        model = f"{r.model.label} (`{r.model.short_hash}`{step})"
    lines = [f"**Dreamy recipe** · preset **{r.preset}** · seed **{r.seed}** · model {model}",
             f"> {s.prompt}" if getattr(s, "prompt", "") else "",
             f"negative: {s.negative_prompt}" if getattr(s, "negative_prompt", "") else "",
             f"guidance {s.guidance} · {s.steps} {s.sampler} steps · {s.width}×{s.height} · {s.precision}"
             if r.job == "dream" else f"a {r.job} recipe"]
    if r.unlocked:
        lines.append("unlocked: " + ", ".join(f"{k} {v.get('preset')!r} → {v.get('value')!r}" for k, v in r.unlocked.items()))
    rt = r.runtime
    if rt:
        lines.append(f"made on {rt.get('device', '?')} in {rt.get('dtype', '?')}")
    return "\n\n".join(x for x in lines if x)
