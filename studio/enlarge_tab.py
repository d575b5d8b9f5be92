"""The Enlarge tab: a picture from Dream (or an upload), locked SUPIR settings, before/after slider.

It calls ``dreamy.enlarging.enlarge(image, preset, overrides=, unlock=, out_dir=, on_progress=,
cancel=)`` -> a result with ``.path`` (the PNG, recipe inside) and ``.upscaled`` (the input at the
output size, for the slider).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from dreamy.errors import Cancelled
from dreamy.recipes.presets import list_presets
from dreamy.recipes.settings import EnlargeSettings

from .errors import on_gpu, user_errors
from .session import GPU, Studio
from .typed import typed
from .widgets import lock_toggled, locked_updates, overrides_from, preset_description, preset_widget

PRESET = "biased-dreams"  # the preset the tab opens with
STOPPED = "Stopped; nothing was saved."
FIELDS = ["supir_model", "upscale", "steps", "s_cfg", "spt_linear_cfg", "control_scale", "s_stage1", "s_churn",
          "s_noise", "color_fix", "positive_prompt", "negative_prompt"]


@dataclass
class EnlargeTab:
    image: gr.Image
    init: Any
    init_outputs: list


def build(studio: Studio) -> EnlargeTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            # image_mode=None: Gradio hands over the uploaded file itself, unconverted (its default, RGB,
            # would flatten a cut-out on black and clip 16 bits); the core reads it as the CLI does.
            image = gr.Image(label="Picture to enlarge (from Dream, or upload)", type="filepath", format="png",
                             image_mode=None, sources=["upload", "clipboard"], height=300, elem_id="enlarge-image")
            preset = gr.Dropdown(list_presets(), value=PRESET, label="Preset")
            description = gr.Markdown(preset_description(PRESET), elem_classes="dreamy-note")
            gr.Markdown("SUPIR's weights (v0Q, v0F) are licensed for **non-commercial use only**.",
                        elem_classes="dreamy-note")
            unlock = gr.Checkbox(False, label="Unlock the preset's locked SUPIR settings (recorded in the PNG)",
                                 elem_id="enlarge-unlock")
            with gr.Group():  # the preset's values from the start: also the API's defaults (preset_widget)
                with gr.Row():
                    widgets = {n: preset_widget(EnlargeSettings, n, PRESET, "enlarge", min_width=100,
                                                elem_id=f"enlarge-{n}") for n in FIELDS[:5]}
                with gr.Row():
                    widgets |= {n: preset_widget(EnlargeSettings, n, PRESET, "enlarge", min_width=100,
                                                 elem_id=f"enlarge-{n}") for n in FIELDS[5:10]}
                widgets |= {n: preset_widget(EnlargeSettings, n, PRESET, "enlarge", elem_id=f"enlarge-{n}")
                            for n in FIELDS[10:]}
            fields = [widgets[n] for n in FIELDS]
            with gr.Row():
                go = gr.Button("Enlarge", variant="primary", elem_id="enlarge-go")
                stop = gr.Button("Stop", variant="stop", elem_id="enlarge-stop")
        with gr.Column(scale=3, min_width=420):
            slider = gr.ImageSlider(label="Before / after", type="filepath", format="png", height=520)
            status = gr.Markdown(elem_id="enlarge-status")
            download = gr.File(label="Enlarged PNG (recipe inside)", interactive=False, height=60)

    def enlarge(image: str | None, preset: str, unlock: bool, supir_model: str, upscale: float, steps: float,
                s_cfg: float, spt_linear_cfg: float, control_scale: float, s_stage1: float, s_churn: float,
                s_noise: float, color_fix: str, positive_prompt: str, negative_prompt: str,
                request: gr.Request, progress=gr.Progress()):
        """Enlarge a picture with SUPIR and the preset's locked settings; returns before/after and the PNG."""
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
            model = result.recipe.model
            demo = f" with the {model.label}" if model is not None and model.kind == "tiny" else ""
            notes = "".join(f"\n\n⚠ {n}" for n in result.notes)
            return (result.upscaled, str(result.path)), f"Enlarged{demo} · `{result.path.name}`{notes}", str(result.path)

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

    ins = [image, preset, unlock, *fields]  # typed(): each value must have its widget's type (studio/typed.py)
    go.click(on_gpu(typed(enlarge, ins)), ins, [slider, status, download],
             api_name="enlarge", concurrency_id=GPU, concurrency_limit=1)
    # No cancels=[...]: Gradio would drop the event's own answer ("Stopped") and free the GPU queue while
    # the enlargement still winds down in its thread; the cancel token ends it at the next model call.
    stop.click(stop_job, None, status, api_name="stop_enlarge", concurrency_limit=None, queue=False)
    preset.input(lambda name, u: [preset_description(name), *locked_updates(name, "enlarge", FIELDS, u)],
                 [preset, unlock], [description, *fields], api_visibility="private")
    unlock.input(lambda name, u: lock_toggled(name, "enlarge", FIELDS, u), [preset, unlock], fields,
                 api_visibility="private")
    return EnlargeTab(image, lambda: locked_updates(PRESET, "enlarge", FIELDS, False), fields)
