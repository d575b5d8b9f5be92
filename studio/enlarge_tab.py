"""The Enlarge tab: pictures from Dream (or uploads), locked SUPIR settings under plain names, the
output size before running, per-picture progress, before/after slider and a gallery of results.

Two endpoints, one core call each: ``/enlarge`` (one picture: ``dreamy.enlarging.enlarge`` -> before/
after, status, PNG; unchanged for API clients) and ``/enlarge_many`` (the page's Enlarge button: the
picture and the batch through ``dreamy.enlarging.enlarge_iter``, models loaded once, one PNG each,
a bad picture reported while the others go on). Stop ends either between or within pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from dreamy.errors import Cancelled, DreamyError
from dreamy.recipes.presets import list_presets
from dreamy.recipes.settings import EnlargeSettings

from .errors import on_gpu, user_errors
from .session import GPU, Studio
from .typed import typed
from .widgets import (
    file_rows,
    lock_toggled,
    locked_updates,
    overrides_from,
    preset_description,
    preset_widget,
    watch_locks,
)

PRESET = "biased-dreams"  # the preset the tab opens with
STOPPED = "Stopped; nothing was saved."
FIELDS = ["supir_model", "upscale", "steps", "s_cfg", "spt_linear_cfg", "control_scale", "s_stage1", "s_churn",
          "s_noise", "color_fix", "positive_prompt", "negative_prompt"]
# Plain names as the SUPIR demo and its users say them; the info line keeps the technical name (the
# API's parameter and the recipe's key) and the demo's own label, so either can be looked up.
LABELS = {
    "supir_model": ("SUPIR model", "supir_model · v0Q quality, v0F fidelity"),
    "upscale": ("Upscale ×", "upscale · then the short-side rule"),
    "steps": ("Steps", "steps"),
    "s_cfg": ("Guidance (CFG)", "s_cfg · demo: Text Guidance Scale"),
    "spt_linear_cfg": ("Guidance ramp start", "spt_linear_cfg · demo: CFG Start"),
    "control_scale": ("Restoration control", "control_scale · demo: Stage2 Guidance"),
    "s_stage1": ("Stage-1 restoration strength", "s_stage1 · −1 is off; demo: Stage1 Guidance"),
    "s_churn": ("Churn", "s_churn · EDM's S_churn"),
    "s_noise": ("Noise", "s_noise · EDM's S_noise"),
    "color_fix": ("Colour fix", "color_fix · demo: Color-Fix Type"),
    "positive_prompt": ("Quality prompt", "positive_prompt · added to every picture (demo: Default Positive Prompt)"),
    "negative_prompt": ("Negative prompt", "negative_prompt · demo: Default Negative Prompt"),
}
PLAIN = {name: label for name, (label, _) in LABELS.items()}
INFOS = {name: info for name, (_, info) in LABELS.items()}
SHOWN_SIZES = 6  # pictures listed by name under "Output size"; the rest are counted


def field_updates(preset: str, unlocked: bool, current: list[Any] | None = None, *, toggled: bool = False) -> list[dict]:
    """The settings' updates for a preset (``toggled``: the Unlock box changed, ``current``: the values
    typed), drawn as Dream draws them (widgets.lock_mark) under the plain labels: 🔒 and who locks a
    field, or "differs from preset (v)" once unlocked; the technical name stays in the info line."""
    if toggled:
        return lock_toggled(preset, "enlarge", FIELDS, unlocked, current, marks=True, labels=PLAIN, infos=INFOS)
    return locked_updates(preset, "enlarge", FIELDS, unlocked, marks=True, labels=PLAIN, infos=INFOS)


def pictures_of(image: str | None, more: list[str] | None) -> list[str]:
    """The picture and the batch as one list, in order, each file once."""
    if more is not None and (not isinstance(more, list) or not all(isinstance(m, str) for m in more)):
        raise gr.Error("'pictures' must be a list of files.", print_exception=False)
    out: list[str] = []
    for p in [image, *(more or [])]:
        if p and p not in out:
            out.append(p)
    return out


@dataclass
class EnlargeTab:
    image: gr.Image
    more: gr.File  # the batch beyond ``image`` (uploads, or Dream's "Send all to Enlarge")
    init: Any
    init_outputs: list


def split_batch(paths: list[str]) -> tuple[str, list[str]]:
    """Dream's pictures as the tab takes them: the first in the picture box, the rest as the batch."""
    if not paths:
        raise gr.Error("Dream some pictures first: the gallery is empty.")
    return paths[0], list(paths[1:])


def _widget(name: str, **kwargs: Any):
    # the plain label; the info line says who locks it, then the technical name (widgets.lock_mark)
    return preset_widget(EnlargeSettings, name, PRESET, "enlarge", marks=True, label=PLAIN[name], info=INFOS[name],
                         elem_id=f"enlarge-{name}", **kwargs)


def build(studio: Studio) -> EnlargeTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            # image_mode=None: Gradio hands over the uploaded file itself, unconverted (its default, RGB,
            # would flatten a cut-out on black and clip 16 bits); the core reads it as the CLI does.
            image = gr.Image(label="Picture to enlarge (from Dream, or upload)", type="filepath", format="png",
                             image_mode=None, sources=["upload", "clipboard"], height=300, elem_id="enlarge-image")
            # no file_types: a picture is known by its first bytes (a camera's IMG_0001 has no suffix);
            # the core reports anything else in one sentence and goes on with the others
            more = gr.File(label="More pictures: a batch (upload several, "
                           "or Dream's “Send all to Enlarge”)", file_count="multiple", type="filepath",
                           height=file_rows(3), elem_id="enlarge-more")  # 3 whole rows, then it scrolls
            sizes = gr.Markdown(elem_id="enlarge-size", elem_classes="dreamy-note")
            preset = gr.Dropdown(list_presets(), value=PRESET, label="Preset")
            description = gr.Markdown(preset_description(PRESET), elem_classes="dreamy-note")
            gr.Markdown("SUPIR's weights (v0Q, v0F) are licensed for **non-commercial use only**.",
                        elem_classes="dreamy-note")
            unlock = gr.Checkbox(False, label="Unlock the preset's locked SUPIR settings (recorded in the PNG)",
                                 elem_id="enlarge-unlock")
            with gr.Group():  # the preset's values from the start: also the API's defaults (preset_widget)
                widgets: dict[str, Any] = {}
                # three to a row: each carries an info line (its technical name), too tall for five
                for row in (FIELDS[0:3], FIELDS[3:6], FIELDS[6:9]):
                    with gr.Row():
                        widgets |= {n: _widget(n, min_width=140) for n in row}
                widgets |= {n: _widget(n) for n in FIELDS[9:]}
            fields = [widgets[n] for n in FIELDS]
            with gr.Row():
                go = gr.Button("Enlarge", variant="primary", elem_id="enlarge-go")
                stop = gr.Button("Stop", variant="stop", elem_id="enlarge-stop")
                one = gr.Button(visible=False)  # carries /enlarge, the one-picture endpoint API clients use
        with gr.Column(scale=3, min_width=420):
            slider = gr.ImageSlider(label="Before / after", type="filepath", format="png", height=520)
            status = gr.Markdown(elem_id="enlarge-status")
            # fit_columns=False: one PNG stays a quarter wide; Gradio's default made it a square as wide
            # as the column, cut by the 240 px frame
            results = gr.Gallery(label="Enlarged (PNGs with their recipe)", format="png", columns=4, height=240,
                                 object_fit="contain", preview=False, interactive=False, elem_id="enlarge-results",
                                 fit_columns=False)
            download = gr.File(label="Enlarged PNG (recipe inside)", interactive=False, height=file_rows(1),
                               elem_id="enlarge-download")

    def enlarge(image: str | None, preset: str, unlock: bool, supir_model: str, upscale: float, steps: float,
                s_cfg: float, spt_linear_cfg: float, control_scale: float, s_stage1: float, s_churn: float,
                s_noise: float, color_fix: str, positive_prompt: str, negative_prompt: str,
                request: gr.Request, progress=gr.Progress()):
        """Enlarge one picture with SUPIR and the preset's locked settings; returns before/after and the PNG."""
        with user_errors("enlarge"):
            if not image:
                raise gr.Error("Choose a picture first: send one from Dream, or upload one.")
            values = (supir_model, upscale, steps, s_cfg, spt_linear_cfg, control_scale, s_stage1, s_churn, s_noise,
                      color_fix, positive_prompt, negative_prompt)
            with studio.job_folder("enlarge") as out, studio.running(request, "enlarge") as token:
                try:
                    # imported once Stop can reach the job: the first import takes seconds
                    from dreamy.enlarging import enlarge as core_enlarge

                    result = core_enlarge(image, preset, overrides=overrides_from(FIELDS, values), unlock=unlock,
                                          out_dir=out, on_progress=lambda e: progress(e.fraction, desc=e.message),
                                          cancel=token)
                except Cancelled:
                    studio.record(request, "enlarge", (STOPPED,))  # for the Stop button, which waits for it
                    return None, STOPPED, None
            # before = the input after SUPIR's own Lanczos upscale, so the slider compares like with like
            return (result.upscaled, str(result.path)), _enlarged(result), str(result.path)

    def enlarge_many(pictures: list[str] | None, preset: str, unlock: bool, supir_model: str, upscale: float,
                     steps: float, s_cfg: float, spt_linear_cfg: float, control_scale: float, s_stage1: float,
                     s_churn: float, s_noise: float, color_fix: str, positive_prompt: str, negative_prompt: str,
                     image: str | None = None, request: gr.Request = None, progress=gr.Progress()):
        """Enlarge ``image`` (the page's picture box; optional) and every one of ``pictures`` with the same
        settings, the models loaded once: streams (before/after of the latest, status, its PNG, the gallery
        of PNGs) after each picture."""
        with user_errors("enlarge"):
            batch = pictures_of(image, pictures)
            if not batch:
                raise gr.Error("Choose pictures first: send them from Dream, or upload them.")
            values = (supir_model, upscale, steps, s_cfg, spt_linear_cfg, control_scale, s_stage1, s_churn, s_noise,
                      color_fix, positive_prompt, negative_prompt)
            done: list[Any] = []  # PictureOutcome, enlarged or skipped
            failed: list[str] = []
            slider_value, latest = None, None
            with studio.job_folder("enlarge") as out, studio.running(request, "enlarge") as token:
                from dreamy.enlarging import enlarge_iter

                def gallery() -> list[tuple[str, str]]:
                    return [(str(o.path), f"{o.index}. {o.source}") for o in done]

                try:
                    for o in enlarge_iter(batch, preset, overrides=overrides_from(FIELDS, values), unlock=unlock,
                                          out_dir=out, cancel=token,
                                          on_progress=lambda e: progress(e.fraction, desc=e.message)):
                        if o.status == "failed":
                            failed.append(o.error or f"{o.source}: failed.")
                        else:
                            done.append(o)
                        if o.result is not None:
                            slider_value, latest = (o.result.upscaled, str(o.path)), str(o.path)
                        if o.index < o.total:
                            said = f"Picture {o.index} of {o.total} done · `{studio.where(out)}`{_bullets(failed)}"
                            yield slider_value, said, latest, gallery()
                except Cancelled:
                    said = (STOPPED if not done else f"Stopped after {len(done)} of {len(batch)} pictures; those are "
                            f"kept in `{studio.where(out)}`, the one in progress was not saved.{_bullets(failed)}")
                    studio.record(request, "enlarge", (said,))  # for the Stop button, which waits for it
                    yield slider_value, said, latest, gallery()
                    return
            if not done:
                raise DreamyError(failed[0] if len(failed) == 1 else
                                  f"None of the {len(batch)} pictures could be enlarged:{_bullets(failed)}")
            yield slider_value, _summary(done, failed, len(batch), studio.where(out)), latest, gallery()

    def stop_job(request: gr.Request):
        """Stop this session's enlargement at its next step, and say how it ended once it has.

        The enlargement answers too (its status is not dropped: no cancels=); both say the same, so
        whichever answer reaches the page last is right. Waiting is bounded: a step that outlasts it
        leaves "Stopping…" until the enlargement's own answer replaces it."""
        if not studio.stop(request, ["enlarge"]):
            return "Nothing of yours is running."
        outcome = studio.stopped_outcome(request, ["enlarge"])
        if outcome:
            return outcome[0]
        # finished meanwhile (it was saving): its own status stands
        return "Stopping at the next step…" if studio.is_running(request, ["enlarge"]) else gr.update()

    def show_sizes(image: str | None, pictures: list[str] | None, preset: str, unlock: bool, upscale: float) -> str:
        """The output size of each chosen picture, before anything runs (the core's own rule)."""
        from dreamy.enlarging.plan import planned_sizes

        try:
            batch = pictures_of(image, pictures)
            plans = planned_sizes(batch, preset, overrides={"upscale": upscale}, unlock=unlock)
        except (DreamyError, gr.Error, TypeError, ValueError):
            return ""  # a locked value mid-switch, or no picture: nothing to show yet
        if len(plans) == 1:
            return f"Output size: {plans[0]}"
        lines = [f"- {p}" for p in plans[:SHOWN_SIZES]]
        if len(plans) > SHOWN_SIZES:
            lines.append(f"- and {len(plans) - SHOWN_SIZES} more")
        return f"Output sizes of the {len(plans)} pictures:\n" + "\n".join(lines) if plans else ""

    ins = [image, preset, unlock, *fields]  # typed(): each value must have its widget's type (studio/typed.py)
    one.click(on_gpu(typed(enlarge, ins)), ins, [slider, status, download],
              api_name="enlarge", concurrency_id=GPU, concurrency_limit=1)
    ins = [more, preset, unlock, *fields, image]  # the picture box last: optional for API clients
    go.click(on_gpu(typed(enlarge_many, ins)), ins, [slider, status, download, results],
             api_name="enlarge_many", concurrency_id=GPU, concurrency_limit=1)
    # No cancels=[...]: Gradio would drop the event's own answer ("Stopped") and free the GPU queue while
    # the enlargement still winds down in its thread; the cancel token ends it at the next model call.
    stop.click(stop_job, None, status, api_name="stop_enlarge", concurrency_limit=None, queue=False)
    size_ins = [image, more, preset, unlock, widgets["upscale"]]
    for trigger in (image.change, more.change, widgets["upscale"].change, unlock.change):
        trigger(show_sizes, size_ins, sizes, api_visibility="private", queue=False, show_progress="hidden")
    preset.input(lambda name, u: [preset_description(name), *field_updates(name, u)],
                 [preset, unlock], [description, *fields], api_visibility="private", show_progress="hidden")
    unlock.input(lambda name, u, *now: field_updates(name, u, list(now), toggled=True), [preset, unlock, *fields],
                 fields, api_visibility="private", show_progress="hidden")
    watch_locks(preset, unlock, widgets, "enlarge", labels=PLAIN, infos=INFOS)  # unlocked and changed: says so
    # page load: nothing; the fields hold PRESET's values and locks from the build (see dream_tab)
    return EnlargeTab(image, more, list, [])


def _enlarged(result: Any) -> str:
    """One picture's status: the demo named where it ran, the notes on its input."""
    model = result.recipe.model
    demo = f" with the {model.label}" if model is not None and model.kind == "tiny" else ""
    return f"Enlarged{demo} · `{result.path.name}`{_warnings(result.notes)}"


def _summary(done: list[Any], failed: list[str], total: int, where: str) -> str:
    made = [o for o in done if o.result is not None]
    if total == 1 and made:
        return _enlarged(made[0].result)
    model = made[0].result.recipe.model if made else None
    demo = f" with the {model.label}" if model is not None and model.kind == "tiny" else ""
    again = len(done) - len(made)
    said = f"Enlarged {len(made)} of {total} pictures{demo} · `{where}`"
    said += f" · {again} repeated, enlarged once" if again else ""
    if failed:
        said += f"\n\n{len(failed)} could not be enlarged:{_bullets(failed)}"
    return said + _warnings(_grouped_notes(made))


def _grouped_notes(made: list[Any]) -> list[str]:
    """Each note once: said alone when every picture has it ("the tiny demo ran instead" for a batch
    of three was three lines), else after the pictures it concerns ("a.png, b.png: …")."""
    sources: dict[str, list[str]] = {}
    for o in made:
        for n in o.result.notes:
            sources.setdefault(n, [])
            if o.source not in sources[n]:
                sources[n].append(o.source)
    everyone = {o.source for o in made}
    return [n if len(everyone) > 1 and set(who) == everyone else f"{', '.join(who)}: {n}" for n, who in sources.items()]


def _bullets(lines: list[str]) -> str:
    return "".join(f"\n- {line}" for line in lines) if lines else ""


def _warnings(notes: list[str]) -> str:
    return "".join(f"\n\n⚠ {n}" for n in notes)
