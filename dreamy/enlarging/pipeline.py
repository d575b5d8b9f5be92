"""``enlarge()``: one picture through SUPIR with a preset's recipe, saved as a PNG that carries it.

The steps are SUPIR's demo (``gradio_demo.py`` with ``--no_llava``): upscale the 8-bit picture with
Lanczos to the output size, stage 1 (denoise encoder, its decoded reference), restoration sampling
from seeded noise, decode, colour fix against the reference, round to 8 bits. The building blocks
are this package's; this module adds input checks, locks, progress, cancellation and the recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import (
    DreamyError,
    NonFiniteOutput,
    OutOfMemory,
    check_finite,
    free_memory,
    is_out_of_memory,
    user_error,
)
from ..events import CancelToken, Progress, ProgressCallback
from ..images import ImageError, load_image
from ..models import devices
from ..models.devices import dtype_name
from ..models.tiny import TINY_NAME
from ..models.tokens import check_prompts
from ..paths import safe_filename
from ..png.metadata import save_png
from ..recipes.presets import Preset, load_preset
from ..recipes.recipe import Recipe, resolve
from ..recipes.settings import EnlargeSettings
from .colourfix import colour_fix
from .epsilon import SupirEpsilon
from .gpu import preferred_attention, untiled_fits
from .models import EnlargeModels, cached_enlarge_models
from .plan import MAX_OUTPUT_PIXELS
from .resize import resize_method, target_size, to_image, to_model_input, upscale
from .sampler import SamplerSettings, restore_sample
from .stage1 import decode_latent, run_stage1
from .tiled_sampler import restore_sample_tiled, sliding_windows

log = logging.getLogger(__name__)

MAX_INPUT_PIXELS = 64_000_000
_LATENT = 8  # pixels per latent pixel (SDXL's VAE)


@dataclass
class EnlargeResult:
    path: Path
    image: Image.Image  # the enlarged picture
    recipe: Recipe
    upscaled: Image.Image  # the input after the Lanczos upscale: the "before" of a before/after view
    stage1: Image.Image  # SUPIR's stage-1 reconstruction, the colour fix's reference
    notes: list[str] = field(default_factory=list)  # what was done to the input (EXIF rotation, alpha ...)


@dataclass(frozen=True)
class EnlargeJob:
    """One enlargement as ``enlarge()`` has checked and resolved it: everything ``_run`` needs.

    A retry is the same job with other fields (``dataclasses.replace``), e.g. ``tiled=True``.
    """

    picture: Image.Image  # the input as 8-bit RGB (see _read_input)
    size: tuple[int, int]  # output (width, height) in pixels, multiples of 32 (resize.target_size)
    latent: tuple[int, int]  # latent (height, width): size // 8
    tiled: bool  # tiled sampling and VAE (models.sampling_tiles / vae_tiles), or the whole latent at once
    recipe: Recipe  # resolved "enlarge" recipe; recipe.settings is the EnlargeSettings
    models: EnlargeModels
    input_info: dict[str, Any]  # what the recipe records about the input (name, sha256, size, notes)
    notes: list[str]  # what was done to the input, returned in EnlargeResult.notes
    seed: int  # 0 <= seed < 2**32; seeds the CPU generator for stage 1 and sampling
    out_dir: str | os.PathLike | None  # None: a new run folder (layout.new_run_dir("enlarge"))
    filename: str | None  # the PNG's name in out_dir; None: output_name(input name, upscale, seed)
    report: Callable[[int, str], None]  # (step, message) -> on_progress, if any
    check: Callable[[], None]  # raises Cancelled once the cancel token is set
    cancel: CancelToken | None


def sampler_settings(s: EnlargeSettings) -> SamplerSettings:
    """The recipe's SUPIR settings under the sampler's names (linear CFG on, control scale constant)."""
    return SamplerSettings(steps=s.steps, cfg_scale=s.s_cfg, cfg_scale_start=s.spt_linear_cfg, linear_cfg=True,
                           churn=s.s_churn, noise_scale=s.s_noise, restoration_scale=s.s_stage1,
                           control_scale=s.control_scale)


class _Watched:
    """The model as the sampler calls it, with a cancel check and a progress message per call."""

    def __init__(self, model: SupirEpsilon, report, cancel: CancelToken | None, tiles: int, per_call: int) -> None:
        self.model, self.report, self.cancel = model, report, cancel
        self.tiles, self.per_call, self.calls, self.step = tiles, per_call, 0, 0

    def __call__(self, sample, timestep, hint, control_scale):
        if self.cancel is not None:
            self.cancel.check()
        if self.tiles > 1:
            first = self.calls * self.per_call + 1
            last = min(first + self.per_call - 1, self.tiles)
            self.report(self.step, f"step {self.step + 1}: tiles {first}-{last} of {self.tiles}")
            self.calls += 1
        return self.model(sample, timestep, hint, control_scale)

    def step_done(self, done: int, total: int, _x: torch.Tensor) -> None:
        self.step, self.calls = done, 0
        self.report(done, f"step {done} of {total}")


def _read_input(image: str | os.PathLike | Image.Image) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """(8-bit RGB picture, what the recipe records about it, notes)."""
    if isinstance(image, Image.Image):
        if min(image.size) < 64:
            raise ImageError(f"The picture is only {image.width}x{image.height} pixels; it must be at least 64 px on each side.")
        notes = [] if image.mode == "RGB" else [f"converted from {image.mode}"]
        rgb = image.convert("RGB")
        if "A" in image.getbands() or "transparency" in image.info:  # flattened on white, as files are
            rgba = image.convert("RGBA")
            rgb = Image.new("RGB", image.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb, {"name": None, "sha256": hashlib.sha256(rgb.tobytes()).hexdigest(), "hash_of": "pixels",
                     "size": list(rgb.size)}, notes
    loaded = load_image(image, pixel_limit=MAX_INPUT_PIXELS)
    digest = hashlib.sha256(Path(image).read_bytes()).hexdigest()
    info = {"name": Path(image).name, "sha256": digest, "hash_of": "file", "size": list(loaded.image.size)}
    if loaded.notes:
        info["notes"] = list(loaded.notes)
    return loaded.image, info, list(loaded.notes)


def output_name(input_name: str | None, upscale: float, seed: int) -> str:
    """The PNG's default file name: ``<input stem>-x<upscale>-seed<seed:06d>.png`` (``picture`` for a PIL image)."""
    stem = Path(safe_filename(input_name or "picture.png")).stem
    return f"{stem}-x{upscale:g}-seed{seed:06d}.png"


def _check_size(size: tuple[int, int], out: tuple[int, int], scale: float) -> None:
    if out[0] * out[1] > MAX_OUTPUT_PIXELS:
        raise DreamyError(
            f"Enlarging {size[0]}x{size[1]} by {scale:g} gives {out[0]}x{out[1]} ({out[0] * out[1] / 1e6:.1f} MP), "
            f"more than the {MAX_OUTPUT_PIXELS / 1e6:.1f}-megapixel limit; lower the scale (unlock 'upscale') or "
            "enlarge a smaller picture."
        )


def runtime_info(models: EnlargeModels) -> dict[str, Any]:
    info = devices.runtime_info(models.device, models.dtype) | {
        "base_model": dataclasses.asdict(models.base_ref),
        "vae_dtype": dtype_name(models.vae_dtype),
        "resize": resize_method(),
    }
    if models.is_demo:
        info["demo"] = "tiny random-weight models: the picture is noise, not an enlargement"
    return info


def enlarge(
    image_path: str | os.PathLike | Image.Image,
    preset: str | Preset = "biased-dreams",
    *,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    out_dir: str | os.PathLike | None = None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    supir: str | None = None,
    base: str | None = None,
    device: str | None = None,
    seed: int = 0,
    tiled: bool | None = None,
    models: EnlargeModels | None = None,
    filename: str | None = None,
) -> EnlargeResult:
    """Enlarge one picture with SUPIR and the preset's ``[enlarge]`` recipe; write it as a PNG with the recipe.

    The steps are the official SUPIR demo's (``gradio_demo.py --no_llava``, no LLaVA captions).

    Input: ``image_path`` is an image file (JPEG, PNG, WebP, ...: images.py; its EXIF rotation is
    applied and it may hold at most 64 megapixels) or a PIL image; either becomes 8-bit RGB with
    transparency flattened on white, and must be at least 64 px on each side. Output size: each side
    times ``upscale`` (1 to 8), the short side raised to 1024 px if shorter (SUPIR's minimum; 64 for
    the tiny demo), each side rounded to a multiple of 32 as SUPIR does (resize.py), and at most
    4096 x 4096 px (16.8 MP) in all.

    The settings are the preset's ``[enlarge]`` table; ``overrides`` change them (locked ones only
    with ``unlock``). biased-dreams: SUPIR-v0Q on Juggernaut XL v9, x4, 30 steps, CFG ramped linearly
    4 -> 3, control scale 0.9, churn 5, noise 1.003, wavelet colour fix, fp16 (EnlargeSettings: the
    official demo's "Quality" settings with the recipe's own choices). ``supir`` / ``base`` pick the
    weights (a hub id, a file or 'tiny'; None: ``$DREAMY_SUPIR`` / ``$DREAMY_SDXL``, then the recipe's
    models, or the offline tiny demo when those are not downloaded); ``models`` reuses loaded ones.
    ``device``: None picks CUDA, then MPS, then the CPU. Dtypes follow SUPIR's demo on CUDA: the UNet
    and control parts in the recipe's ``precision`` (fp16), VAE and denoise encoder in bf16, text
    encoders fp32 under bf16 autocast; on the CPU everything is fp32 (models.py).
    ``tiled`` None samples the whole latent at once where the GPU has the memory (up to 2048 px,
    as SUPIR's demo does) and tiles sampling and the VAE otherwise (gpu.py); if that untiled run
    runs out of GPU memory it is redone tiled (a different result for the same seed), with a note.
    ``seed`` (0 to 2**32 - 1) seeds one CPU ``torch.Generator`` for stage 1 and sampling, so the
    result is reproducible on a given device, dtype and tiling. ``on_progress`` gets
    ``Progress("enlarge", step, steps, message=...)``.

    Returns :class:`EnlargeResult`: the PNG's ``path`` (``<input stem>-x<upscale>-seed<seed:06d>.png``
    in ``out_dir``, else a new run folder), the 8-bit RGB ``image``, the ``recipe`` written into it
    (model, seed and runtime: device, dtypes, tiling, attention, input hash), ``upscaled`` (the input
    resized to the output size with SUPIR's filter, Lanczos when enlarging) and ``stage1`` (SUPIR's
    stage-1 reconstruction), both 8-bit RGB at the output size, and ``notes`` about the input.
    ``filename`` names the PNG instead (a plain file name, kept inside ``out_dir``); an existing file of
    that name is replaced. Many pictures with the models loaded once: :func:`enlarge_many` (batch.py).

    Raises (all :class:`DreamyError`, one sentence each): ImageError (unreadable, too small or too
    large input), PresetError / LockedFieldError (preset, overrides), SourceError (models missing,
    corrupt, or SUPIR and base not matching), DreamyError (seed, output over the size limit, a
    device not present, sampling that overflowed to NaN/inf), OutOfMemory, OutputError (the PNG
    could not be written), Cancelled (``cancel`` set; nothing is written).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DreamyError(f"The seed must be a whole number from 0 to {2**32 - 1}, got {seed!r}.")
    recipe = resolve(load_preset(preset) if isinstance(preset, str) else preset, "enlarge", overrides, unlock)
    s: EnlargeSettings = recipe.settings
    picture, input_info, notes = _read_input(image_path)  # before loading gigabytes of weights

    def report(step: int, message: str) -> None:
        if on_progress is not None:
            on_progress(Progress("enlarge", step, s.steps, message=message))

    def check() -> None:
        if cancel is not None:
            cancel.check()

    check()
    if models is None:  # given models were loaded (and the demo announced) by the caller: a batch's
        report(0, "loading models")
        models = cached_enlarge_models(supir, base, supir_model=s.supir_model, sdxl_base=s.sdxl_base,
                                       device=device, precision=s.precision, on_progress=on_progress)
        if models.is_demo:
            log.warning("Enlarging with the %s.", models.supir_ref.label)
    check()  # loading takes a while: a Stop meanwhile ends the job here
    size = target_size(*picture.size, s.upscale, models.min_side)
    _check_size(picture.size, size, s.upscale)
    latent = (size[1] // _LATENT, size[0] // _LATENT)
    auto = tiled is None
    if auto:
        tiled = not untiled_fits(models.device, latent, models.sampling_tiles.size)
    try:
        name = None if filename is None else safe_filename(filename, "picture") + ("" if filename.lower().endswith(
            ".png") else ".png")  # a plain name in out_dir, never a path out of it
        job = EnlargeJob(picture=picture, size=size, latent=latent, tiled=bool(tiled), recipe=recipe,
                         models=models, input_info=input_info, notes=notes, seed=seed, out_dir=out_dir,
                         filename=name, report=report, check=check, cancel=cancel)
        try:
            return _run(job)
        except Exception as e:
            if not (auto and not tiled and is_out_of_memory(e)):
                raise
        # the automatic choice misjudged the memory: the same job tiled (another seed-for-seed result)
        log.warning("Untiled sampling ran out of GPU memory; enlarging in tiles instead.")
        free_memory()
        retry_notes = [*notes, "untiled sampling ran out of GPU memory: tiled instead"]
        return _run(dataclasses.replace(job, tiled=True, notes=retry_notes))
    except Exception as e:
        err = user_error(e, "enlarge")
        if isinstance(err, OutOfMemory):
            raise err from e
        raise


@torch.no_grad()
def _run(job: EnlargeJob) -> EnlargeResult:
    with preferred_attention(job.models.device) as attention:
        return _restore(job, attention)


def _phase_boundary(models: EnlargeModels) -> None:
    """Hand cached blocks back between phases of different shapes, so that the GPU's peak is the
    largest phase rather than the sum of their leftovers (about 2x at 2048 px untiled)."""
    if models.device.type == "cuda":
        torch.cuda.empty_cache()


def _restore(job: EnlargeJob, attention: str) -> EnlargeResult:
    models, size, tiled, seed, report, check = job.models, job.size, job.tiled, job.seed, job.report, job.check
    s: EnlargeSettings = job.recipe.settings
    upscaled = upscale(job.picture, size, s.upscale)
    check()
    cuts, cut_notes = check_prompts(models.tokenizers[0], {"prompt": s.positive_prompt,
                                                           "negative prompt": s.negative_prompt})
    cond, uncond = models.conditioning(s.positive_prompt, s.negative_prompt)
    sampler = sampler_settings(s)
    sampling_tiles = models.sampling_tiles if tiled else None
    vae_tiles = models.vae_tiles if tiled else None
    generator = torch.Generator("cpu").manual_seed(seed)

    report(0, f"stage 1: denoise encoder at {size[0]}x{size[1]}")
    image = to_model_input(upscaled).to(models.device)
    stage1 = run_stage1(image, models.supir.denoise_encoder, models.vae, generator,
                        with_center=sampler.restoration_scale > 0, tiled=vae_tiles)
    check()
    _phase_boundary(models)
    model = SupirEpsilon(models.supir.control, models.supir.unet, cond, uncond)
    if sampling_tiles is None:
        report(0, f"sampling: {s.steps} steps")
        watched = _Watched(model, report, job.cancel, 1, 1)
        result = restore_sample(watched, stage1.latent, sampler, generator, stage1.center, watched.step_done)
    else:
        tiles = len(sliding_windows(*job.latent, sampling_tiles.size, sampling_tiles.stride))
        report(0, f"sampling: {s.steps} steps of {tiles} tiles")
        watched = _Watched(model, report, job.cancel, tiles, sampling_tiles.per_batch)
        result = restore_sample_tiled(watched, stage1.latent, sampler, generator, stage1.center, sampling_tiles.size,
                                      sampling_tiles.stride, sampling_tiles.per_batch, watched.step_done)
    check()
    if not torch.isfinite(result).all():
        raise NonFiniteOutput(f"Sampling in {dtype_name(models.dtype)} produced NaN/inf (an overflow, or damaged "
                              "weights); try precision bf16 or fp32 (unlock 'precision'). Nothing was saved.")
    report(s.steps, "decoding")
    _phase_boundary(models)
    decoded = decode_latent(models.vae, result, vae_tiles)
    report(s.steps, "colour fix")
    check_finite(decoded, "enlarge model (SUPIR's VAE)")
    fixed = colour_fix(decoded, stage1.reference, s.color_fix)
    enlarged = to_image(fixed)
    check()
    report(s.steps, "saving")

    runtime = runtime_info(models) | {
        "input": job.input_info,
        "output_size": list(size),
        "min_side": models.min_side,
        "tiled": tiled,
        "attention": attention,
        "sampling_tiles": dataclasses.asdict(sampling_tiles) if sampling_tiles else None,
        "vae_tiles": dataclasses.asdict(vae_tiles) if vae_tiles else None,
    }
    runtime |= {("prompt_truncated" if k == "prompt" else "negative_prompt_truncated"): v for k, v in cuts.items()}
    final = job.recipe.replace(model=models.supir_ref, seed=seed, runtime=runtime)
    notes = [*job.notes, *cut_notes]
    if models.is_demo:
        final = _as_demo(final)
    if models.stands_in:
        notes.append(f"{s.supir_model} and {s.sdxl_base} are not on this machine, so the tiny demo ran instead: "
                     "it paints noise.")
    out = Path(job.out_dir) if job.out_dir is not None else _default_dir()
    name = job.filename or output_name(job.input_info["name"], s.upscale, seed)
    path = save_png(enlarged, out / name, final)
    report(s.steps, f"saved {path.name}")
    return EnlargeResult(path, enlarged, final, upscaled, to_image(stage1.reference), notes)


def _as_demo(recipe: Recipe) -> Recipe:
    """The recipe of a run on the tiny demo: its settings name the demo (what ran), and the models the
    recipe asked for, if others, move to ``runtime["asked"]``."""
    s: EnlargeSettings = recipe.settings
    asked = {"supir_model": s.supir_model, "sdxl_base": s.sdxl_base}
    if set(asked.values()) == {TINY_NAME}:
        return recipe
    ran = dataclasses.replace(s, supir_model=TINY_NAME, sdxl_base=TINY_NAME)
    return recipe.replace(settings=ran, runtime=recipe.runtime | {"asked": asked})


def _default_dir() -> Path:
    from ..layout import new_run_dir

    return new_run_dir("enlarge")
