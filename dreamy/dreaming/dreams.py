"""Dream: one image per seed with a preset's recipe, images streamed as they land.

The denoising loop follows stock diffusers' ``StableDiffusionPipeline`` operation for operation
(prompt encoding, per-seed CPU-generator noise, classifier-free guidance as one batch of
[uncond, cond], the scheduler step, the VAE decode and the uint8 rounding), so a seed gives the
stock image; tests hold it to that. Each seed has its own generator, so its picture does not
depend on the batch it is in. On the CPU, where batched kernels round differently from unbatched
ones, the UNet and VAE run seed by seed inside the batch so that the result is bit-identical.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import DreamyError, RecallError
from ..events import CancelToken, Progress, ProgressCallback
from ..models.devices import pick_device, pick_dtype, runtime_info
from ..models.sources import SDModel, load_model
from ..png.metadata import read_recipe, save_png
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import Recipe, resolve
from ..recipes.seeds import parse_seeds
from .blocks import decode, denoise, encode_prompt, initial_noise

log = logging.getLogger(__name__)


@dataclass
class DreamImage:
    seed: int
    image: Image.Image
    recipe: Recipe
    path: Path | None = None


def image_name(recipe: Recipe) -> str:
    """File name of a dreamed image: by checkpoint step (when there is one) and seed."""
    step = recipe.model.checkpoint_step if recipe.model else None
    prefix = f"step{step:06d}-" if step is not None else ""
    return f"{prefix}seed{recipe.seed:06d}.png"


def _ensure_dtype(model: SDModel, precision: str) -> None:
    dtype = pick_dtype(precision, model.device)
    if dtype != model.dtype:
        for m in (model.unet, model.vae, model.text_encoder):
            m.to(dtype)
        model.dtype = dtype


def _generic_batches(
    model: SDModel,
    base: Recipe,
    seed_list: list[int],
    batch_size: int,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    on_progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> Iterator[tuple[list[int], list[Image.Image], bool]]:
    """The stock-order loop on any device: (seeds, images, vae_upcast) per batch, progress per step."""
    s = base.settings
    for start in range(0, len(seed_list), batch_size):
        batch = seed_list[start : start + batch_size]
        latents = torch.cat([initial_noise(model, seed, s.width, s.height) for seed in batch])

        def on_step(step: int, steps: int, start: int = start, n: int = len(batch)) -> None:
            if on_progress is not None:
                on_progress(Progress("dream", step, steps, item=start, items=len(seed_list),
                                     message=f"seeds {start + 1}-{start + n} of {len(seed_list)}"))

        latents = denoise(model, base, latents, cond, uncond, on_step, cancel)
        images, upcast = decode(model, latents)
        yield batch, images, upcast


def dream_iter(
    model: str | SDModel,
    preset: str | Preset = "biased-dreams",
    seeds: str | int | Iterable[int] = "0",
    *,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    recipe: Recipe | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 1,
    device: str | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    fast: bool | str | None = None,
) -> Iterator[DreamImage]:
    """Yield one DreamImage per seed as soon as its batch is decoded (and saved, with ``out_dir``).

    The recipe comes from ``preset`` + ``overrides`` (locks enforced), or is given whole (recall).
    ``fast``: the CUDA fast path (dreamy.dreaming.fast) - None: on where it is supported unless
    ``DREAMY_FAST=0``; False: never (the generic loop); True: on, overriding ``DREAMY_FAST=0``;
    "graph" or "compile": that level (see dreamy/fast/policy.py).
    """
    seed_list = parse_seeds(seeds)
    if recipe is None:
        recipe = resolve(load_preset(preset) if isinstance(preset, str) else preset, "dream", overrides, unlock)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise DreamyError(f"Batch size must be between 1 and 64, got {batch_size!r}.")
    if isinstance(model, str):
        model = load_model(model, device=device, precision=recipe.settings.precision)
    else:
        _ensure_dtype(model, recipe.settings.precision)
    if model.is_demo:
        log.warning("Dreaming with the %s.", model.ref.label)
    from . import fast as fast_path

    base = recipe.replace(model=model.ref, runtime=runtime_info(model.device, model.dtype))
    s = base.settings
    cond = encode_prompt(model, s.prompt)
    uncond = encode_prompt(model, s.negative_prompt)
    out = Path(out_dir) if out_dir is not None else None
    quick = fast_path.select(model, base, seed_list, batch_size, tuple(cond.shape), fast)
    if quick is not None:
        base = base.replace(runtime={**base.runtime, "path": quick.label})
        batches = quick.batches(model, base, cond, uncond, on_progress, cancel)
    else:
        batches = _generic_batches(model, base, seed_list, batch_size, cond, uncond, on_progress, cancel)
    for batch, images, upcast in batches:
        for seed, image in zip(batch, images, strict=True):
            r = base.replace(seed=seed)
            if upcast:
                r = r.replace(runtime={**r.runtime, "vae_upcast": True})
            path = save_png(image, out / image_name(r), r) if out is not None else None
            yield DreamImage(seed, image, r, path)


def dream(
    model: str | SDModel,
    preset: str | Preset = "biased-dreams",
    seeds: str | int | Iterable[int] = "0",
    *,
    contact_sheet: bool = True,
    **kwargs: Any,
) -> list[DreamImage]:
    """Dream every seed; with ``out_dir``, also write a labelled contact sheet of the sweep."""
    from .contact_sheet import write_contact_sheet

    results = list(dream_iter(model, preset, seeds, **kwargs))
    out_dir = kwargs.get("out_dir")
    if contact_sheet and out_dir is not None and len(results) > 1:
        write_contact_sheet(results, Path(out_dir) / "contact-sheet.png")
    return results


def check_recipe_against_preset(recipe: Recipe) -> None:
    """Refuse a recipe whose locked fields differ from its preset without being recorded as unlocked.

    A PNG is untrusted: without this, an edited recipe could dream under a preset's name while
    quietly departing from its locks.
    """
    try:
        preset = load_preset(recipe.preset)
    except DreamyError:
        return  # a preset that is not installed here cannot be checked; the recipe stands alone
    base = preset.section(recipe.job)
    for name in preset.locked.get(recipe.job, ()):
        if getattr(recipe.settings, name) != getattr(base, name) and name not in recipe.unlocked:
            raise RecallError(
                f"The recipe's '{name}' differs from preset '{preset.name}', which locks it, and it is not "
                "recorded as unlocked; the file was edited or the preset changed since."
            )


def recall(
    png: str | Path,
    out_dir: str | Path | None = None,
    *,
    model: str | SDModel | None = None,
    device: str | None = None,
    allow_model_change: bool = False,
) -> DreamImage:
    """Re-create an image from the recipe in its PNG (bit-identical on the same device and dtype)."""
    recipe = read_recipe(Path(png))
    if recipe.job != "dream" or recipe.seed is None or recipe.model is None:
        raise RecallError(f"'{png}' holds a {recipe.job} recipe without a seed or model; only dreamed images can be recalled.")
    check_recipe_against_preset(recipe)
    if device is None:
        wanted = recipe.runtime.get("device", "cpu")
        device = wanted if wanted in ("cpu", "cuda", "mps") else None
        try:
            pick_device(device)
        except DreamyError:
            log.warning("The image was made on %s, which this machine lacks; recalling on the default device.", wanted)
            device = None
    if model is None:
        model = load_model(recipe.model.source, device=device, precision=recipe.settings.precision)
    if model.ref.sha256 != recipe.model.sha256 and not allow_model_change:
        raise RecallError(
            f"The model '{recipe.model.source}' has changed since the image was made (hash {model.ref.short_hash}, "
            f"recipe {recipe.model.short_hash}); pass allow_model_change=True (CLI: --allow-model-change) to re-dream anyway."
        )
    return next(dream_iter(model, seeds=[recipe.seed], recipe=recipe, out_dir=out_dir))
