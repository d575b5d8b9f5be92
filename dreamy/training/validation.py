"""Validation renders: the locked Dream preset, K fixed seeds, each checkpoint's weights, the growing grid.

A row is what Dream gives for that checkpoint: ``dream_iter`` on the model Dream loads for it
(``validation_model.py``: a second copy of the base in Dream's dtype holding the checkpoint's fp16
parts), through Dream's own CUDA fast path. The live fp32 masters are never cast or touched (the
cast of diffusers issue #13124 would wreck the next optimizer step). Each PNG carries a dream recipe
naming the checkpoint it shows, so it can be recalled against that checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..dreaming.blocks import decode, denoise, encode_prompt, initial_noise, prompt_cuts
from ..dreaming.contact_sheet import grid
from ..dreaming.dreams import image_name
from ..events import CancelToken
from ..models.devices import runtime_info
from ..models.sources import SDModel
from ..png.metadata import save_png
from ..recipes.recipe import ModelRef, Recipe

_NAME = re.compile(r"step(\d+)-seed(\d+)\.png")
GRID_NAME = "grid.png"


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def render_seeds(model: SDModel, recipe: Recipe, seeds: Sequence[int],
                 cancel: CancelToken | None = None) -> Iterator[tuple[Image.Image, Recipe]]:
    """Yield (image, its recipe) per seed with ``recipe`` (a dream recipe) on ``model``'s live modules.

    ``model.dtype`` is the compute dtype (fp16 under autocast on CUDA), not the modules' dtype; the
    modules are in eval mode while rendering and back in their own mode after. Once ``cancel`` is
    set, the render in progress ends at its next denoising step with Cancelled (a Stop need not wait
    for a whole row at 512 px); the images yielded before stay.
    """
    modules = (model.unet, model.text_encoder)
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        base = recipe.replace(model=model.ref, runtime={**runtime_info(model.device, model.dtype), **recipe.runtime})
        s = base.settings
        cuts, _ = prompt_cuts(model, s.prompt, s.negative_prompt, s.prompt_syntax)  # logged; in each PNG's recipe
        if cuts:
            base = base.replace(runtime={**base.runtime, **cuts})
        with autocast_for(model.device, model.dtype):
            cond = encode_prompt(model, s.prompt, s.prompt_syntax)
            uncond = encode_prompt(model, s.negative_prompt, s.prompt_syntax)
        for seed in seeds:
            with autocast_for(model.device, model.dtype):
                latents = denoise(model, base, initial_noise(model, seed, s.width, s.height), cond, uncond,
                                  cancel=cancel, seeds=[seed])
            images, upcast = decode(model, latents.to(model.vae.dtype))  # outside autocast: fp32 fall-back works
            r = base.replace(seed=seed)
            if upcast:
                r = r.replace(runtime={**r.runtime, "vae_upcast": True})
            yield images[0], r
    finally:
        for m, t in zip(modules, was_training, strict=True):
            m.train(t)


def batch_size_for(model: SDModel, seeds: Sequence[int]) -> int:
    """Seeds per Dream batch: all of a row (up to 8) on CUDA, where the fast path renders them in one
    replay; one on the CPU, where Dream runs seed by seed anyway and a Stop then cuts in sooner."""
    return max(1, min(len(seeds), 8)) if model.device.type == "cuda" else 1


def render(model: SDModel, recipe: Recipe, seeds: Sequence[int], out_dir: Path, step: int,
           cancel: CancelToken | None = None, ref: Callable[[], ModelRef] | None = None) -> list[Path]:
    """Validation PNGs for ``step`` (named stepNNNNNN-seedNNNNNN.png), each with its dream recipe.

    ``model`` is what Dream loads for the checkpoint (``ValidationModel``), rendered by ``dream_iter``
    itself (its CUDA fast path where it runs) at ``batch_size_for`` seeds a batch, so a PNG is the
    picture Dream gives for that checkpoint and seed at that batch size. ``ref`` gives the model the
    PNGs' recipes name (the checkpoint, by content hash); it is asked once the first picture is
    rendered, so it may wait for the checkpoint's files (default: ``model.ref``).
    Raises Cancelled once ``cancel`` is set (the PNGs written before stay; a resume renders the rest)."""
    from ..dreaming.dreams import dream_iter

    out = []
    named = None
    for d in dream_iter(model, recipe=recipe, seeds=list(seeds), batch_size=batch_size_for(model, seeds),
                        cancel=cancel):
        if cancel is not None:
            cancel.check()  # rendered but not saved: the resume renders it again
        if named is None:
            named = ref() if ref is not None else model.ref
        r = d.recipe.replace(model=named, runtime={**d.recipe.runtime, "validation_of_train_step": step})
        out.append(save_png(d.image, out_dir / image_name(r.replace(model=_at_step(r.model, step))), r))
    return out


def _at_step(ref, step: int):
    """Step 0 renders the base model, whose ref has no step: name its files step000000 all the same."""
    from dataclasses import replace

    return ref if ref.checkpoint_step is not None else replace(ref, checkpoint_step=step)


def validation_images(validation_dir: Path) -> dict[int, dict[int, Path]]:
    """The validation PNGs on disk: step -> seed -> file."""
    found: dict[int, dict[int, Path]] = {}
    for f in Path(validation_dir).glob("step*-seed*.png"):
        m = _NAME.fullmatch(f.name)
        if m:
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = f
    return found


def grid_rows(validation_dir: Path) -> dict[str, list[int]] | None:
    """What the grid on disk shows (``{"steps": [...], "seeds": [...]}``), or None if there is no readable grid."""
    try:
        with Image.open(Path(validation_dir) / GRID_NAME) as im:
            info = json.loads(im.text["dreamy_grid"])
    except (OSError, KeyError, ValueError, AttributeError):
        return None
    return info if isinstance(info, dict) else None


def write_grid(validation_dir: Path, seeds: Sequence[int], recipe: Recipe | None = None, cell: int = 256) -> Path:
    """The checkpoint x seed grid from the validation PNGs on disk: one row per step, one column per seed."""
    found = validation_images(validation_dir)
    steps = sorted(found)
    if steps:  # never blow small renders up; they stay pixel-exact in the grid
        with Image.open(next(iter(found[steps[0]].values()))) as first:
            cell = min(cell, max(first.size))
    cells = []
    for step in steps:
        for seed in seeds:
            path = found[step].get(seed)
            if path is None:
                cells.append((f"seed {seed}", Image.new("RGB", (cell, cell), (48, 48, 48))))
            else:
                with Image.open(path) as im:
                    cells.append((f"seed {seed}", im.convert("RGB")))
    if not cells:
        raise ValueError("no validation images to put in a grid")
    sheet = grid(cells, columns=len(seeds), cell=cell, row_labels=[f"step {s}" for s in steps])
    info = {"steps": steps, "seeds": list(seeds)}
    return save_png(sheet, validation_dir / GRID_NAME, recipe, extra={"dreamy_grid": json.dumps(info)})
