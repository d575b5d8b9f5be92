"""The Particles view: play a picture as drifting particles in the browser, download the loop as a GIF.

The canvas script (``static/particles.js``) is served inline with the page, no CDN; the GIF is
rendered by the core (``dreamy.particles``) from the same simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from dreamy.particles import SIZES

from .errors import user_errors
from .session import Studio
from .typed import typed

SCRIPT = Path(__file__).resolve().parent / "static" / "particles.js"
PLAY_JS = """(image, density, drift, speed) => {
  const canvas = document.querySelector('#particles-canvas canvas');
  if (!image || !image.url) { window.dreamyParticles && window.dreamyParticles.stop(); return; }
  window.dreamyParticles.play(canvas, image.url, density, drift, speed);
}"""


@dataclass
class ParticlesTab:
    image: gr.Image


def build(studio: Studio) -> ParticlesTab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            image = gr.Image(label="Picture (from Dream, or upload)", type="filepath", format="png",
                             image_mode=None, sources=["upload", "clipboard"], height=260)  # the file, unconverted
            density = gr.Slider(0, 1, value=0.5, step=0.05, label="Density", info="particles across: 16 to 128")
            drift = gr.Slider(0, 1, value=0.3, step=0.05, label="Drift", info="how far particles wander")
            speed = gr.Slider(0.1, 4, value=1, step=0.1, label="Speed")
            size = gr.Dropdown(list(SIZES), value=SIZES[0], label="GIF size (px, long side)", elem_id="particles-size",
                               info="larger: the same particles, drawn bigger; 1024 px takes ~10 s on a CPU")
            with gr.Row():
                play = gr.Button("Play", variant="primary", elem_id="particles-play")
                halt = gr.Button("Pause")
                gif = gr.Button("Make GIF")
            download = gr.File(label="GIF (one seamless loop)", interactive=False)  # no height: its row is not clipped
        with gr.Column(scale=3, min_width=420):
            gr.HTML('<div class="particles-stage"><canvas width="512" height="512"></canvas></div>',
                    elem_id="particles-canvas", js_on_load=SCRIPT.read_text(encoding="utf-8"))
            preview = gr.Image(label="GIF preview", type="filepath", interactive=False, height=256, visible=False)

    def make_gif(image: str | None, density: float, drift: float, speed: float, size: int = SIZES[0]):
        """Render the particle animation of a picture as a looping GIF (24 frames; ``size`` px on the
        long side: 256, 512, 768 or 1024, default 256)."""
        from dreamy.particles import write_gif

        with user_errors("particles"):
            if not image:
                raise gr.Error("Choose a picture first: send one from Dream, or upload one.")
            if size not in SIZES:
                raise gr.Error(f"GIF size must be one of {', '.join(map(str, SIZES))} px, got {size!r:.20}.")
            with studio.job_folder("particles") as out:
                path = write_gif(image, out / "particles.gif", float(density), float(drift), float(speed),
                                 size=int(size))
            return str(path), gr.update(value=str(path), visible=True)

    play.click(None, [image, density, drift, speed], None, js=PLAY_JS)
    halt.click(None, None, None, js="() => window.dreamyParticles && window.dreamyParticles.stop()")
    for control in (density, drift, speed):
        control.release(None, [image, density, drift, speed], None, js=PLAY_JS)
    ins = [image, density, drift, speed, size]
    gif.click(typed(make_gif, ins), ins, [download, preview], api_name="particles_gif")
    return ParticlesTab(image)
