"""Prompt sweeps: a list of prompt variants (say, one artist per line, or a prompt file of candidates)
x the same seeds, as a labelled grid.

The curation loop runs on them: a file of prompts x a few seeds (``read_prompt_file``,
``python -m dreamy prompt-sweep --prompts FILE``), the good pictures picked and added to a training set
with their prompts as captions (``dreamy.training.sets.add_to_training_set(..., captions=True)``).

Each variant is a dream recipe of its own, every one resolved through the preset's locks before any
model is loaded: the package deal locks the prompt, so a sweep needs the prompt unlocked, and every
image records its change from the preset's prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import DreamyError
from ..events import CancelToken, Progress, ProgressCallback
from ..png.metadata import save_png
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import Recipe, resolve
from ..recipes.seeds import parse_seeds
from .contact_sheet import grid
from .streams import Ended, Landed, stream

MAX_VARIANTS = 256  # a curation run's prompt file: the maker's had 88 prompts
GRID_NAME = "prompt-grid.png"
PROMPTS_NAME = "prompts.json"


@dataclass
class SweepCell:
    row: int  # which variant
    prompt: str
    image: Any  # DreamImage

    @property
    def notes(self) -> list[str]:
        """The dream's notices (words cut from this variant's prompt, ...)."""
        return list(getattr(self.image, "notes", []))


def expand_prompts(text: str, base_prompt: str) -> list[str]:
    """One variant per non-empty line; ``{prompt}`` stands for the preset's prompt (``{prompt}, by Turner``)."""
    lines = [" ".join(line.split()) for line in str(text).splitlines()]
    variants = list(dict.fromkeys(line.replace("{prompt}", base_prompt) for line in lines if line))
    if not variants:
        raise DreamyError("Write at least one prompt variant, one per line ({prompt} stands for the preset's prompt).")
    if len(variants) > MAX_VARIANTS:
        raise DreamyError(f"{len(variants)} prompt variants; at most {MAX_VARIANTS} fit in one sweep.")
    return variants


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """A prompt file's prompts: one per line (UTF-8, or UTF-16/32 with a byte-order mark), white space
    collapsed, blank lines and lines starting with ``#`` left out, duplicates once, at most 256.
    Raises DreamyError (one sentence) for a file that cannot be read or holds no prompt."""
    from ..training.data import decode_text

    try:
        text = decode_text(Path(path).read_bytes())
    except (OSError, UnicodeDecodeError) as e:
        why = "not UTF-8 or UTF-16 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or type(e).__name__)
        raise DreamyError(f"Cannot read the prompt file '{path}': {why}.") from None
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    if not any(line.strip() for line in lines):  # name the file, not the studio's variants box
        raise DreamyError(f"The prompt file '{Path(path).name}' holds no prompt: write one per line (blank lines and lines "
                          "starting with # are skipped).")
    return expand_prompts("\n".join(lines), "{prompt}")


@dataclass
class _Plan:
    prompts: list[str]
    seeds: list[int]
    recipes: list[Recipe]  # one per variant, through the preset's locks


def _plan(
    preset: str | Preset,
    prompts: str | list[str],
    seeds: str | Iterable[int],
    overrides: dict[str, Any] | None,
    unlock: bool | Iterable[str],
) -> _Plan:
    """Every variant through the preset's locks, with the seeds: all checked before any model is loaded."""
    preset = load_preset(preset) if isinstance(preset, str) else preset
    if isinstance(prompts, str):
        prompts = expand_prompts(prompts, preset.dream.prompt)
    seed_list = parse_seeds(seeds)
    overrides = {k: v for k, v in (overrides or {}).items() if k != "prompt"}
    recipes = [resolve(preset, "dream", {**overrides, "prompt": p}, unlock) for p in prompts]
    return _Plan(list(prompts), seed_list, recipes)


def _cells(
    model: Any,
    plan: _Plan,
    out_dir: str | Path,
    device: str | None,
    keep_loaded: bool,
    on_progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> Iterator[SweepCell]:
    from .dreams import dream_iter, dream_model

    prompts, seed_list = plan.prompts, plan.seeds
    model = dream_model(model, device=device, precision=plan.recipes[0].settings.precision, keep_loaded=keep_loaded)
    out = Path(out_dir)
    listed = False
    for row, (prompt, recipe) in enumerate(zip(prompts, plan.recipes, strict=True)):
        def relay(p: Progress, row: int = row) -> None:
            if on_progress is not None:
                on_progress(Progress("sweep", p.step, p.steps, item=row * len(seed_list) + p.item,
                                     items=len(prompts) * len(seed_list),
                                     message=f"variant {row + 1} of {len(prompts)}, {p.message}"))

        for img in dream_iter(model, seeds=seed_list, recipe=recipe, out_dir=out / f"{row:02d}",
                              on_progress=relay, cancel=cancel):
            if not listed:
                atomic_write_text(out / PROMPTS_NAME, json.dumps(prompts, indent=1))
                listed = True
            yield SweepCell(row, prompt, img)


def prompt_sweep_iter(
    model: Any,
    preset: str | Preset,
    prompts: str | list[str],
    seeds: str | Iterable[int],
    out_dir: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    device: str | None = None,
    keep_loaded: bool = False,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[SweepCell]:
    """Dream every variant x seed into ``out_dir/NN/seed*.png``, yielding each cell as it lands.

    Checked when called, before any model is loaded: the preset, the variants (``prompts``: a list,
    or text for :func:`expand_prompts`), the seeds and every variant's recipe through the preset's
    locks, so a locked change is refused at once. ``model`` is a loaded SDModel or a source, loaded
    once on the first ``next()`` (``keep_loaded``/``device``: see :func:`dreamy.dreaming.dreams.dream_model`).
    ``out_dir/prompts.json`` lists the variants (row ``NN`` is entry NN); it is written with the first
    image, so a sweep refused or stopped before any image leaves its folder empty."""
    plan = _plan(preset, prompts, seeds, overrides, unlock)
    return _cells(model, plan, out_dir, device, keep_loaded, on_progress, cancel)


def prompt_sweep(
    model: Any,
    preset: str | Preset,
    prompts: str | list[str],
    seeds: str | Iterable[int],
    out_dir: str | Path,
    **kwargs: Any,
) -> tuple[list[SweepCell], Path]:
    """A whole prompt sweep: (every cell, in rows of variants then seeds; the labelled grid
    ``out_dir/prompt-grid.png``). ``kwargs`` and errors are :func:`prompt_sweep_iter`'s; a Stop
    (``cancel``) raises Cancelled, the finished pictures kept on disk."""
    cells = list(prompt_sweep_iter(model, preset, prompts, seeds, out_dir, **kwargs))
    return cells, write_prompt_grid(cells, Path(out_dir) / GRID_NAME)


def prompt_sweep_stream(
    model: Any,
    preset: str | Preset,
    prompts: str | list[str],
    seeds: str | Iterable[int],
    out_dir: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    device: str | None = None,
    keep_loaded: bool = False,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[Landed | Ended]:
    """A whole prompt sweep as one stream (the studio's): :class:`Landed` per :class:`SweepCell`, then
    :class:`Ended` with the labelled grid ``out_dir/prompt-grid.png`` (:func:`write_prompt_grid`).

    A generator: on the first ``next()`` everything is checked as in :func:`prompt_sweep_iter`
    before the model is loaded. ``cancel`` ends it at the next step without raising: the grid shows
    the cells that finished and ``Ended.stopped`` is True."""
    plan = _plan(preset, prompts, seeds, overrides, unlock)
    cells = _cells(model, plan, out_dir, device, keep_loaded, on_progress, cancel)
    yield from stream(cells, len(plan.prompts) * len(plan.seeds),
                      lambda done: write_prompt_grid(done, Path(out_dir) / GRID_NAME))


LABEL_CHARS = 36  # a row label's length in the grid: about a cell's width of text at 14 px


def _shorten(text: str, n: int = LABEL_CHARS) -> str:
    """``text`` in at most ``n`` characters, cut in the middle: its start and its end both show (a
    variant's point is often at the end: ``..., by Turner``)."""
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head].rstrip() + "…" + text[len(text) - (n - 1 - head):].lstrip()


def row_labels(prompts: list[str], n: int = LABEL_CHARS) -> list[str]:
    """What tells the rows apart: each prompt without the parts all of them share (cut at the commas
    that separate a prompt's parts, "…" where something was left out), at most ``n`` characters long.

    ``{prompt}, by Turner`` / ``{prompt}, by Yoshida`` become ``…by Turner`` / ``…by Yoshida``;
    with one variant there is nothing to compare, and the prompt is only shortened."""
    start = end = 0  # characters left out at every prompt's start / end
    if len(prompts) > 1:
        shared = os.path.commonprefix(prompts)
        start = shared.rfind(", ") + 2 if ", " in shared else 0
        rest = [p[start:] for p in prompts]
        shared = os.path.commonprefix([r[::-1] for r in rest])[::-1]
        end = len(shared) - shared.find(", ") if ", " in shared else 0
        if any(len(r) <= end for r in rest):  # every label keeps something of its own
            end = 0
    return [_shorten(("…" if start else "") + p[start: len(p) - end] + ("…" if end else ""), n) for p in prompts]


def write_prompt_grid(cells: list[SweepCell], path: str | Path, cell: int = 192) -> Path:
    """Variants as rows (numbered, labelled with what differs between them: :func:`row_labels`), seeds
    as columns; the PNG lists the full prompts."""
    if not cells:
        raise DreamyError("Nothing was dreamed, so there is no grid to draw.")
    prompt_of = {c.row: c.prompt for c in cells}
    rows = sorted(prompt_of)
    seeds = list(dict.fromkeys(c.image.seed for c in cells))
    by_key = {(c.row, c.image.seed): c.image.image for c in cells}
    from PIL import Image

    blank = Image.new("RGB", (8, 8), (48, 48, 48))  # a cell a stopped sweep did not reach
    items = [(f"seed {s}", by_key.get((r, s), blank)) for r in rows for s in seeds]
    shown = row_labels([prompt_of[r] for r in rows])
    labels = [f"{r + 1}. {text}" for r, text in zip(rows, shown, strict=True)]
    sheet = grid(items, columns=len(seeds), cell=cell, row_labels=labels)
    info = {"prompts": [prompt_of[r] for r in rows], "seeds": seeds}
    return save_png(sheet, Path(path), extra={"dreamy_prompt_grid": json.dumps(info)})
