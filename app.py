"""Dreamy studio: a thin Gradio layer over the `dreamy` core (Dream tab; Train and Enlarge to come).

Every handler only turns widget values into a core call; locks are enforced by the core, so the
API behind this page cannot bypass them either.

    python app.py                 # http://127.0.0.1:7860, offline with the tiny demo model
    python app.py --model PATH    # any model source the core accepts
"""

from __future__ import annotations

import argparse

import gradio as gr

from dreamy import DreamyError
from dreamy.presets import list_presets, load_preset, preset_fields
from dreamy.sources import DEFAULT_MODEL, TINY_NAME, default_model

DREAM_FIELDS = ["prompt", "negative_prompt", "guidance", "steps", "width", "height"]


def preset_view(preset_name: str, unlocked: bool):
    """Widget updates showing a preset's dream values; locked ones are read-only until unlocked."""
    preset = load_preset(preset_name)
    values = preset_fields(preset, "dream")
    locked = set(preset.locked.get("dream", ()))
    updates = []
    for name in DREAM_FIELDS:
        is_locked = name in locked and not unlocked
        label = f"{name.replace('_', ' ')}{' 🔒' if is_locked else ''}"
        updates.append(gr.update(value=values[name], interactive=not is_locked, label=label))
    return [gr.update(value=preset.description), *updates]


def run_dream(model, preset_name, seeds, unlocked, batch_size, *values, progress=gr.Progress()):
    from dreamy.dream import dream_iter
    from dreamy.outputs import new_run_dir
    from dreamy.sources import cached_model

    overrides = dict(zip(DREAM_FIELDS, values, strict=True))
    overrides["steps"], overrides["width"], overrides["height"] = (
        int(overrides["steps"]), int(overrides["width"]), int(overrides["height"]))
    try:
        preset = load_preset(preset_name)
        m = cached_model(model.strip() or default_model(), precision=preset.dream.precision)
        out = new_run_dir("dream")
        gallery = []

        def on_progress(p):
            progress(p.fraction, desc=p.message)

        for r in dream_iter(m, preset, seeds, overrides=overrides, unlock=bool(unlocked), out_dir=out,
                            batch_size=int(batch_size), on_progress=on_progress):
            gallery.append((str(r.path), f"seed {r.seed}"))
            note = f"{len(gallery)} image(s) in {out}" + (f" — {m.ref.label}" if m.is_demo else "")
            yield gallery, note
    except DreamyError as e:
        raise gr.Error(str(e)) from None


def build(model: str) -> gr.Blocks:
    with gr.Blocks(title="Dreamy") as demo:
        gr.Markdown("# Dreamy — latent space photography")
        with gr.Tab("Dream"):
            with gr.Row():
                model_box = gr.Dropdown([TINY_NAME, DEFAULT_MODEL], value=model, allow_custom_value=True,
                                        label="Model (hub id, folder, .safetensors, or tiny = offline demo)")
                preset_box = gr.Dropdown(list_presets(), value="biased-dreams", label="Preset")
            description = gr.Markdown()
            with gr.Row():
                seeds = gr.Textbox("0-3", label="Seeds (7 | 0-15 | 1,5,9 | 100-200:10)")
                batch = gr.Slider(1, 16, value=1, step=1, label="Batch size (GPU; images do not change)")
                unlock = gr.Checkbox(False, label="Unlock locked settings (recorded in every image)")
            prompt = gr.Textbox(label="prompt")
            negative = gr.Textbox(label="negative prompt")
            with gr.Row():
                guidance = gr.Number(label="guidance")
                steps = gr.Number(label="steps", precision=0)
                width = gr.Number(label="width", precision=0)
                height = gr.Number(label="height", precision=0)
            fields = [prompt, negative, guidance, steps, width, height]
            go = gr.Button("Dream", variant="primary")
            gallery = gr.Gallery(label="Dreams", format="png", columns=4, height="auto")
            status = gr.Markdown()
        for trigger in (preset_box.change, unlock.change, demo.load):
            trigger(preset_view, [preset_box, unlock], [description, *fields])
        go.click(run_dream, [model_box, preset_box, seeds, unlock, batch, *fields], [gallery, status],
                 concurrency_id="gpu", concurrency_limit=1)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Dreamy studio")
    parser.add_argument("--model", default=None, help="default model source (default: SD1.5 if cached, else tiny)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    demo = build(args.model or default_model())
    demo.queue().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
