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
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .devices import dtype_name, pick_device, pick_dtype
from .errors import DreamyError, RecallError
from .events import CancelToken, Progress, ProgressCallback
from .metadata import read_recipe, save_png
from .presets import Preset, load_preset
from .recipe import Recipe, resolve
from .samplers import make_scheduler
from .seeds import parse_seeds
from .sources import SDModel, load_model

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


def runtime_info(model: SDModel) -> dict[str, Any]:
    """What, besides the recipe, decides the exact bits of an image: device, dtype, library versions."""
    import diffusers
    import transformers

    from . import __version__

    info: dict[str, Any] = {
        "device": model.device.type,
        "dtype": dtype_name(model.dtype),
        "rng": "cpu",  # noise is drawn on the CPU, so a seed gives the same noise on any device
        "versions": {
            "dreamy": __version__,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    if model.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(model.device)
    return info


@torch.no_grad()
def encode_prompt(model: SDModel, text: str) -> torch.Tensor:
    tok = model.tokenizer(
        text, padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    mask = tok.attention_mask.to(model.device) if getattr(model.text_encoder.config, "use_attention_mask", False) else None
    emb = model.text_encoder(tok.input_ids.to(model.device), attention_mask=mask)[0]
    return emb.to(dtype=model.text_encoder.dtype, device=model.device)


def initial_noise(model: SDModel, seed: int, width: int, height: int) -> torch.Tensor:
    """The seed's starting latents, drawn from its own CPU generator (as stock's ``randn_tensor``)."""
    from diffusers.utils.torch_utils import randn_tensor

    scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    shape = (1, model.unet.config.in_channels, height // scale, width // scale)
    return randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed), device=model.device, dtype=model.dtype)


def _per_seed(split: bool, fn, x: torch.Tensor) -> torch.Tensor:
    if not split or x.shape[0] == 1:
        return fn(x)
    return torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])


@torch.no_grad()
def denoise(
    model: SDModel,
    recipe: Recipe,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    on_step=None,
    cancel: CancelToken | None = None,
) -> torch.Tensor:
    """Run the sampler over a batch of latents (one row per seed)."""
    s = recipe.settings
    scheduler = make_scheduler(s.sampler, s.scheduler)
    scheduler.set_timesteps(s.steps, device=model.device)
    latents = latents * scheduler.init_noise_sigma
    split = model.device.type == "cpu"
    cfg = s.guidance > 1.0  # as stock: guidance <= 1 means a single conditional pass

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not cfg:
            return model.unet(x, t, encoder_hidden_states=cond.expand(n, -1, -1), return_dict=False)[0]
        ctx = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
        out = model.unet(torch.cat([x] * 2), t, encoder_hidden_states=ctx, return_dict=False)[0]
        e_uncond, e_cond = out.chunk(2)
        return e_uncond + s.guidance * (e_cond - e_uncond)

    for i, t in enumerate(scheduler.timesteps):
        if cancel is not None:
            cancel.check()
        x = scheduler.scale_model_input(latents, t)
        noise_pred = _per_seed(split, lambda xi, t=t: eps(xi, t), x)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(i + 1, len(scheduler.timesteps))
    return latents


@torch.no_grad()
def decode(model: SDModel, latents: torch.Tensor) -> tuple[list[Image.Image], bool]:
    """Latents -> PIL images; a half-precision decode that overflows is redone in fp32."""
    split = model.device.type == "cpu"
    vae = model.vae

    def run(x: torch.Tensor) -> torch.Tensor:
        return vae.decode(x / vae.config.scaling_factor, return_dict=False)[0]

    images = _per_seed(split, run, latents)
    upcast = False
    if model.dtype != torch.float32 and not torch.isfinite(images).all():
        upcast = True
        vae.to(torch.float32)
        try:
            images = _per_seed(split, run, latents.float())
        finally:
            vae.to(model.dtype)
    arr = (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    arr = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr], upcast


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
    ``fast``: the CUDA fast path (dreamy.fast) - None: on where it is supported unless
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

    base = recipe.replace(model=model.ref, runtime=runtime_info(model))
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
