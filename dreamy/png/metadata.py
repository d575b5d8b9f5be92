"""PNG recipes: an A1111-compatible ``parameters`` text chunk plus Dreamy's JSON chunk.

The ``parameters`` chunk lets A1111, Forge, ComfyUI and Civitai read the picture's prompt, sampler,
CFG, seed, size and model hash. The ``dreamy`` chunk holds the whole recipe, which is what recall
uses. Nothing time-dependent is written, so the same recipe makes byte-identical files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..atomic import atomic_write
from ..errors import RecallError
from ..recipes.recipe import Recipe
from ..recipes.samplers import a1111_name

CHUNK = "dreamy"
MAX_CHUNK = 1 << 20  # a recipe is a few kB; anything near a megabyte is not ours


def _clean(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").strip()


def a1111_parameters(recipe: Recipe) -> str:
    """The ``parameters`` text A1111 writes, for a dream recipe."""
    s = recipe.settings
    lines = [_clean(s.prompt)]
    if s.negative_prompt:
        lines.append(f"Negative prompt: {_clean(s.negative_prompt)}")
    fields = [
        ("Steps", s.steps),
        ("Sampler", a1111_name(s.sampler)),
        ("CFG scale", s.guidance),
        ("Seed", recipe.seed),
        ("Size", f"{s.width}x{s.height}"),
    ]
    if recipe.model:
        fields += [("Model hash", recipe.model.short_hash), ("Model", _a1111_value(recipe.model.label))]
    if recipe.unlocked:
        fields.append(("Unlocked", _a1111_value(" ".join(sorted(recipe.unlocked)))))
    fields += [("Preset", _a1111_value(recipe.preset)), ("Version", f"dreamy {_version()}")]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def _a1111_value(v: str) -> str:
    """Quoted as A1111 quotes: JSON string syntax when the value holds a comma or a colon."""
    v = _clean(v)
    return json.dumps(v, ensure_ascii=False) if ("," in v or ":" in v) else v


def _version() -> str:
    from .. import __version__

    return __version__


def png_info(recipe: Recipe | None, extra: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if recipe is not None:
        if recipe.job == "dream" and recipe.seed is not None:
            info.add_text("parameters", a1111_parameters(recipe))
        info.add_text(CHUNK, recipe.to_json(), zip=True)
    for key, value in (extra or {}).items():
        info.add_text(key, value, zip=True)
    return info


def save_png(image: Image.Image, path: Path, recipe: Recipe | None = None, extra: dict[str, str] | None = None) -> Path:
    """Write a PNG with its recipe atomically: the file is complete or absent, never half-written."""
    info = png_info(recipe, extra)
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def read_text_chunks(path: Path) -> dict[str, str]:
    """The PNG's text chunks; a RecallError if the file is not a readable image."""
    try:
        with Image.open(path) as im:
            im.verify()  # checks chunk CRCs without decoding the pixels
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except FileNotFoundError:
        raise RecallError(f"No file at '{path}'.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RecallError(f"'{path}' is not a readable PNG ({type(e).__name__}: {e!s:.80}).") from None
    return {k: v for k, v in text.items() if isinstance(v, str)}


def read_recipe(path: Path) -> Recipe:
    """The Dreamy recipe inside a PNG, validated; a clear RecallError when there is none."""
    chunks = read_text_chunks(path)
    raw = chunks.get(CHUNK)
    if raw is None:
        if "parameters" in chunks or "fooocus_scheme" in chunks or "Comment" in chunks:
            raise RecallError(
                f"'{path}' was made by another tool (it has no Dreamy recipe); its parameters can be shown "
                "but Dreamy cannot re-create it exactly."
            )
        raise RecallError(f"'{path}' carries no recipe: it was not made by Dreamy, or its metadata was stripped.")
    if len(raw) > MAX_CHUNK:
        raise RecallError(f"'{path}' has an oversized recipe chunk ({len(raw)} bytes); refusing to read it.")
    return Recipe.from_json(raw)


_A1111_FIELD = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict[str, Any]:
    """A1111's ``parameters`` text -> {'prompt', 'negative_prompt', and each 'Key: value' field}."""
    lines = text.strip().split("\n")
    fields: dict[str, Any] = {}
    if lines and _A1111_FIELD.match(lines[-1]) and "Steps:" in lines[-1]:
        for key, value in _A1111_FIELD.findall(lines.pop()):
            value = value.strip()
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = value.strip('"')
            fields[key.strip()] = value
    prompt, negative, target = [], [], None
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line[len("Negative prompt:"):].strip()
        (negative if target is negative else prompt).append(line)
    return {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip(), **fields}
