"""The Dream tab's Word box: type a word -> a chat model's prompt (shown, editable) -> the picture -> its
particles, in one action ("Word → picture → particles"), through one core call
(:func:`dreamy.dreaming.word_picture.word_picture`). It dreams with the tab's model, preset, Unlock and
settings; the prompt lands in the PNG's recipe as ``runtime.word``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from dreamy.errors import Cancelled

from .dream_form import FIELDS, progress_line, settings_from
from .errors import user_errors
from .session import Studio

JOB = "word"
NOTE = ("Type a word: a local chat model writes a prompt in the preset's style (**word-style**: its trigger "
        "first, *white background* last), Dream paints it with the seed, and the picture plays as particles. "
        "Edit the prompt and press again to dream your version (recorded as edited).")


@dataclass
class WordBox:
    word: gr.Textbox
    prompt: gr.Textbox
    seed: gr.Number
    go: gr.Button
    picture: gr.Image
    gif: gr.Image
    status: gr.Markdown


def build() -> WordBox:
    """Lay out the Word box (call inside the Dream tab's left column); :func:`wire` connects it."""
    with gr.Accordion("Word → picture → particles", open=False, elem_id="word-box"):
        gr.Markdown(NOTE, elem_classes="dreamy-note")
        with gr.Row():
            word = gr.Textbox(label="Word", placeholder="love", scale=3, max_lines=1, elem_id="word-word")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1, scale=1, min_width=100,
                             elem_id="word-seed", info="the prompt's and the picture's")
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="word-prompt",
                            info="written by the chat model for the word; edit it and press again to dream yours")
        go = gr.Button("Word → picture → particles", variant="primary", elem_id="word-go")
        with gr.Row():
            picture = gr.Image(label="Picture (PNG with recipe)", type="filepath", format="png", height=220,
                               interactive=False, elem_id="word-picture")
            gif = gr.Image(label="Particles (looping GIF)", type="filepath", height=220, interactive=False,
                           elem_id="word-gif")
        status = gr.Markdown(elem_id="word-status")
    return WordBox(word, prompt, seed, go, picture, gif, status)


def handler(studio: Studio, on_disk: Any):
    """The Word box's one handler (``on_disk``: Dream's "download a hub model first")."""

    def word_picture(word: str, prompt: str, seed: float, model: str, preset: str, unlock: bool,
                     negative_prompt: str, guidance: float, steps: float, width: float, height: float,
                     sampler: str | None = None, prompt_syntax: str | None = None, scheduler: str | None = None,
                     request: gr.Request = None, progress=gr.Progress()):
        """A word -> its prompt (the chat model's, or ``prompt`` as edited) -> one picture with ``seed``
        and the tab's preset and settings -> its particle loop. Streams (prompt, picture, GIF, status,
        gallery, paths, selected) as each lands."""
        from dreamy.dreaming.word_picture import word_picture as core

        with user_errors("word"):
            if seed is None or seed != int(seed):
                raise gr.Error("The seed must be a whole number from 0 to 4294967295.")
            source = studio.model_source(model)
            on_disk(studio, source, progress)
            overrides = settings_from(FIELDS[1:], (negative_prompt, guidance, steps, width, height, sampler,
                                                   prompt_syntax, scheduler))
            progress(0, desc="writing the prompt")
            with studio.job_folder(JOB) as out, studio.running(request, JOB) as token:
                shown = (gr.skip(), None, None)
                try:
                    for step in core(word, source, preset, int(seed), out_dir=out, prompt=prompt or None,
                                     prompt_model=studio.prompt_model, overrides=overrides, unlock=unlock,
                                     keep_loaded=True, on_progress=progress_line(progress), cancel=token):
                        yield from _shape(studio, step, out)
                        shown = _shown(step)
                except Cancelled:
                    said = f"Stopped; what was finished is in `{studio.where(out)}`."
                    studio.record(request, JOB, (said, None))
                    yield *shown, said, gr.skip(), gr.skip(), gr.skip()

    return word_picture


def _shown(step: Any) -> tuple:
    picture = str(step.picture.path) if step.picture is not None else None
    return step.word.prompt, picture, str(step.gif) if step.gif else None


def _shape(studio: Studio, step: Any, out: Any):
    prompt, picture, gif = _shown(step)
    if step.stage == "prompt":
        edited = " (your edit)" if step.word.edited else ""
        yield prompt, None, None, f"Prompt written{edited}; dreaming it…", gr.skip(), gr.skip(), gr.skip()
    elif step.stage == "picture":
        yield prompt, picture, None, "Dreamed; making the particles…", gr.skip(), gr.skip(), gr.skip()
    else:
        edited = " → your edited prompt" if step.word.edited else ""
        said = (f"**{step.word.word}**{edited} → seed {step.picture.seed} → particles · `{studio.where(out)}` · "
                "Send to Particles plays it live")
        yield prompt, picture, gif, said, [(picture, step.word.word)], [picture], 0


def wire(box: WordBox, studio: Studio, on_disk: Any, model: Any, preset: Any, unlock: Any, fields: list,
         gallery: Any, paths: Any, selected: Any, gpu: dict) -> Any:
    """Connect the Word box; returns its event (for the tab's Stop). API: ``/word_picture``."""
    from .errors import on_gpu
    from .typed import typed

    ins = [box.word, box.prompt, box.seed, model, preset, unlock, *fields[1:]]
    outs = [box.prompt, box.picture, box.gif, box.status, gallery, paths, selected]
    # a new word clears the prompt box, so the next press writes the new word's prompt
    box.word.change(lambda _: "", box.word, box.prompt, queue=False, api_visibility="private", show_progress="hidden")
    return box.go.click(on_gpu(typed(handler(studio, on_disk), ins)), ins, outs, api_name="word_picture",
                        show_progress_on=[box.picture], **gpu)
