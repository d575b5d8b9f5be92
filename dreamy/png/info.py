"""What a dropped PNG says about how it was made: a Dreamy recipe, a foreign tool's parameters, or nothing.

The studio shows this before anything runs, and can put the settings back into the Dream form
(where the preset's locks apply as for anything typed). A foreign (A1111, Forge, Fooocus) file's
parameters are read as far as they map onto Dreamy's dream settings; the file itself is untrusted,
so every value is checked and anything odd is left out rather than guessed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DreamyError
from ..recipes.presets import list_presets
from ..recipes.recipe import Recipe, locked_changes
from .metadata import CHUNK, parse_a1111, read_recipe, read_text_chunks

_SIZE = re.compile(r"^\s*(\d{2,5})\s*x\s*(\d{2,5})\s*$")
MAX_TEXT = 65536


@dataclass
class PngSummary:
    kind: str  # dreamy | foreign | none
    recipe: Recipe | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # foreign: as the other tool wrote them
    values: dict[str, Any] = field(default_factory=dict)  # dream settings that can go into the form
    seed: int | None = None
    preset: str | None = None
    model: str | None = None
    message: str = ""


def _number(text: Any, kind: type) -> Any:
    try:
        v = kind(str(text).strip())
    except (TypeError, ValueError):
        return None
    return v if isinstance(v, int) or math.isfinite(v) else None


def describe_png(path: str | Path) -> PngSummary:
    """Read a PNG's recipe or foreign parameters; a DreamyError only if it is not a readable PNG."""
    path = Path(path)
    chunks = read_text_chunks(path)
    if CHUNK in chunks:
        try:
            recipe = read_recipe(path)
        except DreamyError as e:
            return PngSummary("none", message=str(e).replace(str(path), path.name))
        s = recipe.settings
        values = {k: getattr(s, k) for k in ("prompt", "negative_prompt", "guidance", "steps", "width", "height")} \
            if recipe.job == "dream" else {}
        return PngSummary("dreamy", recipe=recipe, values=values, seed=recipe.seed, preset=recipe.preset,
                          model=recipe.model.source if recipe.model else None)
    text = chunks.get("parameters")
    if text is None:
        return PngSummary("none", message=f"'{path.name}' carries no recipe or parameters: it was not made by "
                                          "Dreamy or A1111-style tools, or its metadata was stripped.")
    params = parse_a1111(text[:MAX_TEXT])
    values: dict[str, Any] = {"prompt": params.get("prompt", "")[:4000],
                              "negative_prompt": params.get("negative_prompt", "")[:4000]}
    guidance = _number(params.get("CFG scale"), float)
    steps = _number(params.get("Steps"), int)
    if guidance is not None:
        values["guidance"] = guidance
    if steps is not None:
        values["steps"] = steps
    m = _SIZE.match(str(params.get("Size", "")))
    if m:
        values["width"], values["height"] = int(m.group(1)), int(m.group(2))
    seed = _number(params.get("Seed"), int)
    return PngSummary("foreign", parameters=params, values=values, seed=seed if seed is not None and seed >= 0 else None,
                      message=f"'{path.name}' was made by another tool; its parameters are shown, and can be "
                              "dreamed again here, but not re-created exactly.")


@dataclass
class DreamForm:
    """What a dropped PNG puts back into the Dream form."""

    preset: str  # the PNG's preset when it is installed here, else the one the form had
    values: dict[str, Any]  # dream settings (prompt, guidance, size...) as far as the file gives them
    seed: int | None
    model: str | None  # the model source the file names (unchecked: the caller vets it)
    unlock: list[str]  # the preset's locked fields that these values change: they need unlocking


def dream_form(path: str | Path, preset: str) -> DreamForm:
    """A PNG's settings for the Dream form, under its own preset if installed (else ``preset``).

    Raises DreamyError when the file is not a readable PNG or carries no recipe or parameters."""
    info = describe_png(path)
    if info.kind == "none":
        raise DreamyError(info.message)
    name = info.preset if info.preset in list_presets() else preset
    return DreamForm(name, info.values, info.seed, info.model, locked_changes(name, "dream", info.values))
