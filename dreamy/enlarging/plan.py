"""What an enlargement will make, known before it runs: the output size of each picture.

The rule is enlarge()'s own (resize.target_size): each side times ``upscale``, the short side raised
to SUPIR's 1024 px (64 px on the tiny demo) if shorter, each side rounded to a multiple of 32, at most
16.8 megapixels in all. Nothing is loaded: the picture's header gives its size, sources.default_sources
says whether the demo would stand in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..errors import DreamyError
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import resolve
from ..recipes.settings import EnlargeSettings
from . import tiny
from .resize import MIN_SIDE, target_size

MAX_OUTPUT_PIXELS = 4096 * 4096  # 16.8 MP: 8x of 512, or 4x of 1024; larger runs take too long to be useful
_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height (load_image turns them upright)


@dataclass(frozen=True)
class SizePlan:
    """One picture's sizes: ``before`` and ``after`` as (width, height) in pixels, or why it cannot run."""

    name: str
    before: tuple[int, int] | None = None
    after: tuple[int, int] | None = None
    problem: str | None = None  # one sentence: unreadable, or the output over the size limit

    def __str__(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        (w, h), (ow, oh) = self.before, self.after  # type: ignore[misc]
        return f"{self.name}: {w}×{h} → {ow}×{oh}"


def min_side_for(s: EnlargeSettings, supir: str | None = None, base: str | None = None) -> int:
    """The short-side minimum of the models that would run: 64 px when the tiny demo would, else 1024."""
    from .sources import default_sources, tiny_name

    try:
        picked, _, _ = default_sources(supir, base, s.supir_model, s.sdxl_base)
    except DreamyError:
        return MIN_SIDE
    return tiny.MIN_SIDE if str(picked).strip() == tiny_name() else MIN_SIDE


def picture_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a picture file as enlarge() sees it (EXIF rotation applied), from its header.

    Raises DreamyError (one sentence) if the file is missing or not a picture Pillow can open."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112) in _TURNED
    except FileNotFoundError:
        raise DreamyError(f"{p.name}: no such file.") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise DreamyError(f"{p.name}: not a picture that can be read.") from None
    return (h, w) if turned else (w, h)


def planned_sizes(
    pictures: Iterable[str | os.PathLike],
    preset: str | Preset = "biased-dreams",
    *,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    supir: str | None = None,
    base: str | None = None,
) -> list[SizePlan]:
    """The output size each picture file would get with this recipe (see the module's rule).

    Raises PresetError / LockedFieldError for the preset and overrides, as enlarge() would; a
    picture that cannot be read, or whose output would pass the 16.8-megapixel limit, gets a
    ``problem`` sentence instead of sizes.
    """
    s: EnlargeSettings = resolve(load_preset(preset) if isinstance(preset, str) else preset, "enlarge",
                                 overrides, unlock).settings
    min_side = min_side_for(s, supir, base)
    plans = []
    for picture in pictures:
        name = Path(picture).name
        try:
            before = picture_size(picture)
        except DreamyError as e:
            plans.append(SizePlan(name, problem=str(e).removeprefix(f"{name}: ")))
            continue
        after = target_size(*before, s.upscale, min_side)
        problem = None
        if after[0] * after[1] > MAX_OUTPUT_PIXELS:
            problem = (f"{before[0]}×{before[1]} → {after[0]}×{after[1]} is more than the "
                       f"{MAX_OUTPUT_PIXELS / 1e6:.1f}-megapixel limit.")
        elif min(before) < 64:
            problem = f"only {before[0]}×{before[1]} pixels; it must be at least 64 px on each side."
        plans.append(SizePlan(name, before, after, problem))
    return plans
