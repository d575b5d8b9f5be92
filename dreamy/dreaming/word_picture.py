"""Word -> picture -> particles in one call: the maker's web app as the core's one action.

A word becomes a prompt (:func:`dreamy.prompt_helper.word_to_prompt`, the preset's ``[word]`` table),
the prompt is dreamed for one seed (the picture's recipe records the word as ``runtime["word"]``), and
the picture becomes the particle loop (:func:`dreamy.particles.write_gif`). It is a generator, so a
caller shows each stage as it lands: the prompt first (seconds), then the picture, then the GIF.

The prompt may be given, edited by hand from the one the model wrote: the model's prompt is written
again (same word, seed and model: the same prompt) and the record keeps both, with ``edited`` true
when they differ, so a picture never claims the model wrote what a person did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DreamyError
from ..events import CancelToken, ProgressCallback

GIF_NAME = "particles.gif"
PARTICLES = {"density": 0.5, "drift": 0.3, "speed": 1.0, "size": 256}  # dreamy.particles.write_gif's defaults


@dataclass(frozen=True)
class WordStep:
    """One stage of :func:`word_picture`, each carrying what the earlier ones made.

    ``stage``: "prompt" (``word`` is set), "picture" (``picture``: the DreamImage, its PNG written),
    "particles" (``gif``: the looping GIF, the last step)."""

    stage: str
    word: Any  # dreamy.prompt_helper.WordPrompt
    picture: Any = None  # DreamImage
    gif: Path | None = None


def _particles(settings: dict[str, Any] | None) -> dict[str, Any]:
    values = {**PARTICLES, **(settings or {})}
    unknown = sorted(set(values) - set(PARTICLES))
    if unknown:
        raise DreamyError(f"Unknown particle setting {unknown[0]!r}; the settings are {', '.join(PARTICLES)}.")
    return values


def word_picture(
    word: str,
    model: Any,
    preset: Any = "word-style",
    seed: int = 0,
    *,
    out_dir: str | Path,
    prompt: str | None = None,
    prompt_model: str | None = None,
    prompt_seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    unlock: Any = (),
    particles: dict[str, Any] | None = None,
    device: str | None = None,
    keep_loaded: bool = False,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[WordStep]:
    """Yield :class:`WordStep` "prompt", "picture", "particles" for ``word`` dreamed with ``preset``.

    - ``word``: one word or a short phrase (at most 100 characters); ``seed``: the picture's seed,
      0 .. 2**32-1; ``prompt_seed``: the prompt's (None: ``seed``), so one seed gives one pair.
    - ``prompt``: a prompt to dream instead of the model's (the studio's edited box; "" or None: the
      model's); recorded as the word's ``prompt`` with ``edited`` true when it differs from the model's.
    - ``out_dir``: the picture ``seedNNNNNN.png`` (its recipe with ``runtime["word"]``) and
      ``particles.gif`` are written there. ``particles``: ``density`` 0-1, ``drift`` 0-1, ``speed``
      0.1-4, ``size`` 32-1024 px (:func:`dreamy.particles.write_gif`; defaults in :data:`PARTICLES`).
    - ``model``, ``overrides``, ``unlock``, ``device``, ``keep_loaded``, ``on_progress``, ``cancel``:
      as :func:`dreamy.dreaming.dreams.dream_stream`. The word's prompt is the dream's ``prompt``: a
      preset that locks its prompt refuses it unless ``unlock`` names it (word-style leaves it open).

    Checked on the first ``next()``, before any model is loaded: the word, the seeds, the particle
    settings and the preset's locks (the prompt's included). Raises DreamyError (word, seed, particles),
    PresetError / LockedFieldError, SourceError (the chat model or the image model missing: one
    sentence naming what to download), Cancelled (Stop: checked at every sampler step)."""
    from ..particles import write_gif
    from ..png.metadata import save_png
    from ..prompt_helper import _seed, _word, word_to_prompt
    from ..recipes.presets import Preset, load_preset
    from ..recipes.recipe import resolve
    from .dreams import dream_iter, dream_model, image_name

    word, seed = _word(word), _seed(seed)
    prompt_seed = seed if prompt_seed is None else _seed(prompt_seed)
    look = _particles(particles)
    p = preset if isinstance(preset, Preset) else load_preset(preset)
    given = " ".join(str(prompt or "").split())
    overrides = {k: v for k, v in (overrides or {}).items() if k != "prompt"}
    # the locks first, the prompt's included (a text unlike the preset's stands for the word's): a refusal
    # costs no chat model and no image model
    recipe = resolve(p, "dream", {**overrides, "prompt": f"{p.dream.prompt} ({word})"}, unlock)

    wp = word_to_prompt(word, p, prompt_model, prompt_seed, device)
    if given and given != wp.prompt:
        wp = dataclasses.replace(wp, prompt=given, edited=True)
    yield WordStep("prompt", wp)

    loaded = dream_model(model, device=device, precision=recipe.settings.precision, keep_loaded=keep_loaded)
    out = Path(out_dir)
    image = next(dream_iter(loaded, p, [seed], overrides={**overrides, "prompt": wp.prompt}, unlock=unlock,
                            on_progress=on_progress, cancel=cancel))
    recorded = image.recipe.replace(runtime={**image.recipe.runtime, "word": wp.record()})
    path = save_png(image.image, out / image_name(recorded), recorded)
    picture = dataclasses.replace(image, recipe=recorded, path=path)
    yield WordStep("picture", wp, picture)

    if cancel is not None:
        cancel.check()
    gif = write_gif(path, out / GIF_NAME, float(look["density"]), float(look["drift"]), float(look["speed"]),
                    size=int(look["size"]))
    yield WordStep("particles", wp, picture, gif)
