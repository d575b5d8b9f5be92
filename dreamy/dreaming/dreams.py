"""Dream: one image per seed with a preset's recipe, images streamed as they land.

The denoising loop follows stock diffusers' ``StableDiffusionPipeline`` operation for operation
(prompt encoding, per-seed CPU-generator noise, classifier-free guidance as one batch of
[uncond, cond], the scheduler step, the VAE decode and the uint8 rounding), so a seed gives the
stock image; tests hold it to that. Each seed has its own generator, so its picture does not
depend on the batch it is in. On the CPU, where batched kernels round differently from unbatched
ones, the UNet and VAE run seed by seed inside the batch so that the result is bit-identical.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import DreamyError, PresetError, RecallError
from ..events import CancelToken, Progress, ProgressCallback
from ..models.a1111_prompt import check_prompt_syntax
from ..models.devices import pick_device, pick_dtype, runtime_info
from ..models.sdxl_adapters import adapter_specs
from ..models.sources import SDModel, cached_model, load_model
from ..png.info import describe_png, foreign_refusal
from ..png.metadata import read_recipe, save_png
from ..recipes.presets import Preset, load_named_preset, load_preset
from ..recipes.recipe import Recipe, resolve
from ..recipes.samplers import check_sampler_runs
from ..recipes.seeds import parse_seeds
from .blocks import decode, denoise, encode_prompt, initial_noise, prompt_cuts
from .contact_sheet import write_contact_sheet
from .streams import Ended, Landed, stream

log = logging.getLogger(__name__)
SHEET_NAME = "contact-sheet.png"
# The runtime entries a dream makes itself, afresh on every dream (runtime_info, prompt_cuts, the SDXL
# conditioning, the fast path, the fp32 decode). Any other entry of a given recipe's runtime is what a
# caller recorded on top (the word layer's "word"): kept, so a recalled picture keeps its whole recipe.
ENGINE_RUNTIME = frozenset({"device", "dtype", "rng", "versions", "gpu", "prompt_truncated",
                            "negative_prompt_truncated", "sdxl", "path", "vae_upcast"})


@dataclass
class DreamImage:
    seed: int
    image: Image.Image
    recipe: Recipe
    path: Path | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. words cut from the prompt)


def image_name(recipe: Recipe) -> str:
    """File name of a dreamed image: by checkpoint step (when there is one) and seed."""
    step = recipe.model.checkpoint_step if recipe.model else None
    prefix = f"step{step:06d}-" if step is not None else ""
    return f"{prefix}seed{recipe.seed:06d}.png"


def _ensure_dtype(model: SDModel, precision: str) -> None:
    dtype = pick_dtype(precision, model.device)
    if dtype != model.dtype:
        for m in (model.unet, model.vae, *model.text_encoders):
            m.to(dtype)
        model.dtype = dtype


def dream_model(
    model: str | SDModel,
    *,
    device: str | None = None,
    precision: str = "fp16",
    keep_loaded: bool = False,
    loras: Sequence[Any] = (),
    embeddings: Sequence[Any] = (),
) -> SDModel:
    """The model to dream with: a loaded one as given (its weights moved in place to ``precision``'s
    dtype), or a source loaded by :func:`load_model` - SD 1.x or SDXL, with ``loras`` and
    ``embeddings`` applied (:func:`dreamy.models.sdxl_adapters.apply_adapters`). ``keep_loaded``
    keeps a loaded source for the next call, one model at a time (:func:`cached_model`: the studio's
    case); ``device`` applies to sources only. A loaded model takes no ``loras``/``embeddings``
    (DreamyError: load it with them, as they change its weights)."""
    if not isinstance(model, str):
        if loras or embeddings:
            raise DreamyError("LoRAs and embeddings are applied when a model is loaded: pass them to load_model "
                              "(or give the model as a source).")
        _ensure_dtype(model, precision)
        return model
    load = cached_model if keep_loaded else load_model
    return load(model, device=device, precision=precision, expected_arch=None, loras=loras, embeddings=embeddings)


def _checked(
    preset: str | Preset,
    seeds: str | int | Iterable[int],
    overrides: dict[str, Any] | None,
    unlock: bool | Iterable[str],
    recipe: Recipe | None,
    batch_size: int,
) -> tuple[list[int], Recipe]:
    """What needs no model, checked first: the seeds, the recipe (the preset's locks), the batch size."""
    seed_list = parse_seeds(seeds)
    if recipe is None:
        recipe = resolve(load_preset(preset) if isinstance(preset, str) else preset, "dream", overrides, unlock)
    else:  # a recipe given whole (recall: read from an untrusted PNG) is tried like a preset
        s = recipe.settings
        check_sampler_runs(s.sampler, s.scheduler, s.steps, "the recipe's sampler/steps/scheduler")
        check_prompt_syntax(dataclasses.asdict(s), "the recipe's")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 64:
        raise DreamyError(f"Batch size must be between 1 and 64, got {batch_size!r}.")
    return seed_list, recipe


def _contact_sheet(results: list[DreamImage], out_dir: str | Path) -> Path | None:
    """``out_dir/contact-sheet.png`` of several results, labelled by seed; None for one picture."""
    if len(results) < 2:
        return None
    return write_contact_sheet(results, Path(out_dir) / SHEET_NAME)


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

        latents = denoise(model, base, latents, cond, uncond, on_step, cancel, seeds=batch)
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
    loras: Sequence[Any] = (),
    embeddings: Sequence[Any] = (),
) -> Iterator[DreamImage]:
    """Yield one DreamImage per seed as soon as its batch is decoded (and saved, with ``out_dir``).

    A generator: nothing is checked or loaded until the first ``next()``.

    Inputs:

    - ``model``: a loaded :class:`SDModel` (its weights are moved in place to the recipe's dtype;
      ``device`` is then ignored) or a source string for :func:`load_model` ('tiny', 'tiny-sdxl', a
      hub id, a diffusers folder, a .safetensors/.ckpt file, a Train checkpoint), SD 1.x or SDXL
      (SDXL: both text encoders, size/crop conditioning as stock ``StableDiffusionXLPipeline``; see
      dreamy/dreaming/sdxl.py; the generic loop, never the CUDA fast path; "a1111" prompts as A1111's SDXL).
    - ``loras`` (``"FILE"`` / ``"FILE:SCALE"``) and ``embeddings`` (``"FILE"`` / ``"FILE:TOKEN"``): a
      trained style applied to a model given as a source (see dreamy/models/sdxl_adapters.py); each
      file is recorded with its sha256 in the recipe's model, and its A1111 hash in ``parameters``.
    - ``seeds``: an int, an iterable of ints, or a string such as ``"7"``, ``"0-15"``, ``"1,5,9"``,
      ``"100-200:10"`` (:func:`dreamy.recipes.seeds.parse_seeds`); each from 0 to 2**32 - 1
      (A1111's range), at most 100,000 per call, yielded in the order given, duplicates dropped.
    - The recipe comes from ``preset`` + ``overrides`` (locks enforced; ``unlock`` lifts them), or is
      given whole as ``recipe`` (recall). ``width``/``height`` are pixels, 64 to 2048, multiples of 8.
    - ``batch_size``: 1 to 64 seeds per UNet batch; a seed's picture does not depend on it.
    - ``device``: None/"auto" picks CUDA, then Apple's MPS, then the CPU. The compute dtype is the
      recipe's ``precision`` (fp16 by default) on CUDA, fp32 always on the CPU, fp16 for bf16 on MPS.
    - ``fast``: the CUDA fast path (dreamy.dreaming.fast) - None: on where it is supported unless
      ``DREAMY_FAST=0``; False: never (the generic loop); True: on, overriding ``DREAMY_FAST=0``;
      "graph" (bit-exact with the generic loop) or "compile" (torch.compile: other bits, recorded in
      the recipe's runtime as its ``path``); see dreamy/dreaming/fast/policy.py.
    - ``on_progress`` gets ``Progress("dream", step, steps, item=first seed index, items=seeds)``
      after every sampler step (after every batch on the fast path).

    Each seed's starting latents, shape (1, 4, height/8, width/8), are standard normal draws from its
    own CPU ``torch.Generator`` seeded with it, as stock diffusers' ``randn_tensor`` draws them; the
    loop then follows stock ``StableDiffusionPipeline`` (see :mod:`dreamy.dreaming.blocks`), so on
    the CPU a seed gives stock's picture bit for bit.

    Yields :class:`DreamImage`: ``image`` is an 8-bit RGB PIL image of ``width`` x ``height`` px;
    ``recipe`` is the run's recipe with the seed, the model's :class:`ModelRef` (source, kind,
    sha256) and ``runtime`` (device, dtype, library versions, ``vae_upcast`` when a half-precision
    decode overflowed and was redone in fp32); ``path`` is the PNG (named by :func:`image_name`, e.g.
    ``seed000007.png``, with the recipe in its text chunk) or None without ``out_dir``.

    Raises (all :class:`DreamyError`): SeedSyntaxError (seeds), PresetError / LockedFieldError
    (preset, overrides), DreamyError (batch size, device), SourceError (model), OutputError (a PNG
    could not be written; earlier ones are kept), Cancelled (``cancel`` set: checked before every
    step, or every batch on the fast path; pictures already yielded stay). Running out of memory is
    torch's own error here; :func:`dreamy.errors.user_error` turns it into OutOfMemory (the CLI and
    the studio do).
    """
    seed_list, recipe = _checked(preset, seeds, overrides, unlock, recipe, batch_size)
    model = dream_model(model, device=device, precision=recipe.settings.precision, loras=loras,
                        embeddings=embeddings)
    if model.is_demo:
        log.warning("Dreaming with the %s.", model.ref.label)
    from . import fast as fast_path

    carried = {k: v for k, v in recipe.runtime.items() if k not in ENGINE_RUNTIME}  # recall: e.g. runtime.word
    base = recipe.replace(model=model.ref, runtime=runtime_info(model.device, model.dtype))
    s = base.settings
    cuts, notes = prompt_cuts(model, s.prompt, s.negative_prompt, s.prompt_syntax)
    if cuts:
        base = base.replace(runtime={**base.runtime, **cuts})
    cond = encode_prompt(model, s.prompt, s.prompt_syntax)
    uncond = encode_prompt(model, s.negative_prompt, s.prompt_syntax, negative=True)
    if model.arch == "sdxl":
        from .sdxl import conditioning_record

        base = base.replace(runtime={**base.runtime, "sdxl": conditioning_record(model, s.width, s.height,
                                                                                   s.negative_prompt, s.prompt_syntax)})
    out = Path(out_dir) if out_dir is not None else None
    # The captured loop holds one embedding shape; a1111 prompts of unequal chunk counts run generic.
    # SDXL runs generic too: the captured program is SD 1.x's (no pooled text, no time ids).
    quick = fast_path.select(model, base, seed_list, batch_size, tuple(cond.shape), fast) \
        if cond.shape == uncond.shape and model.arch == "sd15" else None
    if model.arch == "sdxl" and fast:
        log.warning("SDXL dreams run on the generic loop: the CUDA fast path is SD 1.x's.")
    if quick is not None:
        base = base.replace(runtime={**base.runtime, "path": quick.label})
        batches = quick.batches(model, base, cond, uncond, on_progress, cancel)
    else:
        batches = _generic_batches(model, base, seed_list, batch_size, cond, uncond, on_progress, cancel)
    # A batch's PNGs are encoded on a few threads (PIL's zlib encoder releases the GIL), so this
    # thread is soon back to queueing the GPU, and the last batch's files do not trail one by one.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="dreamy-png") as pool:
        for batch, images, upcast in batches:
            landed = []
            for seed, image in zip(batch, images, strict=True):
                r = base.replace(seed=seed)
                if upcast:
                    r = r.replace(runtime={**r.runtime, "vae_upcast": True})
                if carried:  # last, where the caller first put them: a recalled PNG is byte-identical
                    r = r.replace(runtime={**r.runtime, **carried})
                landed.append((seed, image, r, pool.submit(save_png, image, out / image_name(r), r) if out else None))
            for seed, image, r, written in landed:  # in seed order, each once its file is whole
                yield DreamImage(seed, image, r, written.result() if written else None, list(notes))


def dream(
    model: str | SDModel,
    preset: str | Preset = "biased-dreams",
    seeds: str | int | Iterable[int] = "0",
    *,
    contact_sheet: bool = True,
    **kwargs: Any,
) -> list[DreamImage]:
    """Dream every seed and return the list: :func:`dream_iter`'s results, in the seeds' order.

    ``kwargs`` are :func:`dream_iter`'s (``overrides``, ``unlock``, ``out_dir``, ``batch_size``,
    ``device``, ``on_progress``, ``cancel``, ``fast``); so are the inputs' units and ranges and the
    errors raised. With ``out_dir`` and more than one seed, a labelled contact sheet of the sweep is
    also written there as ``contact-sheet.png`` (unless ``contact_sheet=False``).
    """
    results = list(dream_iter(model, preset, seeds, **kwargs))
    out_dir = kwargs.get("out_dir")
    if contact_sheet and out_dir is not None:
        _contact_sheet(results, out_dir)
    return results


def dream_stream(
    model: str | SDModel,
    preset: str | Preset = "biased-dreams",
    seeds: str | int | Iterable[int] = "0",
    *,
    out_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
    batch_size: int = 1,
    device: str | None = None,
    keep_loaded: bool = False,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    fast: bool | str | None = None,
    loras: Sequence[Any] = (),
    embeddings: Sequence[Any] = (),
) -> Iterator[Landed | Ended]:
    """A whole dream as one stream (the studio's Dream): :class:`Landed` per picture as it is
    written into ``out_dir``, then :class:`Ended` with its sheet, ``out_dir/contact-sheet.png``
    (:func:`dream`'s) or, for one seed, the picture's own PNG.

    A generator, checked in this order on the first ``next()``: the seeds, the preset's locks and
    the batch size, then the model is loaded (``keep_loaded``: kept for the next call, see
    :func:`dream_model`), so a refusal costs no loading. ``cancel`` ends the stream at the next step
    without raising: the finished pictures get their sheet and ``Ended.stopped`` is True (nothing
    finished: ``Ended.sheet`` is None). The other arguments, their units and errors are
    :func:`dream_iter`'s.
    """
    seed_list, recipe = _checked(preset, seeds, overrides, unlock, None, batch_size)
    loaded = dream_model(model, device=device, precision=recipe.settings.precision, keep_loaded=keep_loaded,
                         loras=loras, embeddings=embeddings)
    out = Path(out_dir)
    pictures = dream_iter(loaded, seeds=seed_list, recipe=recipe, out_dir=out, batch_size=batch_size,
                          on_progress=on_progress, cancel=cancel, fast=fast)
    yield from stream(pictures, len(seed_list), lambda done: _contact_sheet(done, out) or done[0].path)


def relock(recipe: Recipe) -> Recipe:
    """``recipe`` re-resolved against its preset, found by exact name in the preset folders.

    A PNG is untrusted: its ``preset`` is only a name (never a path), every locked field that differs
    from that preset must be one the PNG records as unlocked, and the unlock record of the result is
    computed afresh from the preset and the values that will run (never copied from the file).
    Raises RecallError when the preset is not installed here or a locked field differs unrecorded.
    """
    try:
        preset = load_named_preset(recipe.preset)
    except PresetError as e:
        raise RecallError(f"The recipe names preset {recipe.preset!r:.80}, which is not installed here ({e}); "
                          "Dreamy only recalls recipes whose locks it can check.") from None
    base = preset.section(recipe.job)
    for name in preset.locked.get(recipe.job, ()):
        if getattr(recipe.settings, name) != getattr(base, name) and name not in recipe.unlocked:
            raise RecallError(f"The recipe's '{name}' differs from preset '{preset.name}', which locks it, and it "
                              "is not recorded as unlocked; the file was edited or the preset changed since.")
    try:
        fresh = resolve(preset, recipe.job, overrides=dataclasses.asdict(recipe.settings),
                        unlock=tuple(recipe.unlocked))
    except PresetError as e:  # LockedFieldError included: cannot happen after the check above
        raise RecallError(f"The recipe does not fit preset '{preset.name}': {e}") from None
    return recipe.replace(preset=preset.name, settings=fresh.settings, locked=fresh.locked, unlocked=fresh.unlocked)


def recall(
    png: str | Path,
    out_dir: str | Path | None = None,
    *,
    model: str | SDModel | None = None,
    device: str | None = None,
    allow_model_change: bool = False,
    keep_loaded: bool = False,
    check_source: Callable[[str], str] | None = None,
) -> DreamImage:
    """Re-create an image from the recipe in its PNG: the same seed, settings and model.

    The result is bit-identical on the same device, dtype and library versions (the recipe's
    ``runtime`` records them; the fast path's "compile" level excepted). ``device`` None means the
    device the picture was made on when this machine has one (else the default, with a warning); the
    dtype follows the recipe's ``precision`` as in :func:`dream_iter` (fp32 on the CPU). ``model``
    None loads the recipe's model source (``keep_loaded``: kept for the next call, see
    :func:`dream_model`); a given model (source or loaded) must have the recipe's sha256 unless
    ``allow_model_change``. The LoRAs and embeddings the recipe records are applied again from their
    files (each must still have its recorded sha256, unless ``allow_model_change``; a loaded
    ``model`` must already carry them). A PNG is untrusted: ``check_source`` (say, the studio's "only its own
    folders") vets the source it names, and each LoRA or embedding file, before that is loaded,
    returning the source to load or raising. With ``out_dir`` the PNG is written again, with its recipe:
    the runtime entries a dream makes (device, dtype, versions ...: ``ENGINE_RUNTIME``) made afresh, every
    other entry the recipe carries (the word layer's ``word``, a caller's own records) kept as it was.

    Returns one :class:`DreamImage` (8-bit RGB PIL image). Raises RecallError when the file is
    missing, not a readable image, carries no Dreamy recipe (another tool's parameters: the message says
    which of them can be dreamed again, see :func:`dreamy.png.info.describe_png`), holds a
    malformed recipe or one that is not a dream with a seed and a model, when a locked field differs
    from the installed preset without being recorded as unlocked, or when the model's hash differs;
    otherwise whatever :func:`load_model` and :func:`dream_iter` raise (SourceError, OutputError...).
    """
    try:
        recipe = read_recipe(Path(png))
    except RecallError:
        info = describe_png(png)  # another tool's file: say what of it can be dreamed again
        if info.kind == "foreign":
            raise RecallError(foreign_refusal(info, Path(png).name)) from None
        raise
    if recipe.job != "dream" or recipe.seed is None or recipe.model is None:
        raise RecallError(f"'{Path(png).name}' holds a {recipe.job} recipe without a seed or model; only dreamed "
                          "images can be recalled.")
    if model is None:  # the PNG's own source: vetted before anything else
        model = recipe.model.source if check_source is None else check_source(recipe.model.source)
    loras, embeddings = adapter_specs(recipe.model.adapters) if isinstance(model, str) else ([], [])
    if check_source is not None:  # the style files a PNG names are vetted like its model
        loras = [(check_source(f), scale) for f, scale in loras]
        embeddings = [(check_source(f), token) for f, token in embeddings]
    recipe = relock(recipe)
    if device is None:
        wanted = recipe.runtime.get("device", "cpu")
        device = wanted if wanted in ("cpu", "cuda", "mps") else None
        try:
            pick_device(device)
        except DreamyError:
            log.warning("The image was made on %s, which this machine lacks; recalling on the default device.", wanted)
            device = None
    model = dream_model(model, device=device, precision=recipe.settings.precision, keep_loaded=keep_loaded,
                        loras=loras, embeddings=embeddings)
    if model.ref.sha256 != recipe.model.sha256 and not allow_model_change:
        raise RecallError(
            f"The model '{recipe.model.source}' has changed since the image was made (hash {model.ref.short_hash}, "
            f"recipe {recipe.model.short_hash}); pass allow_model_change=True (CLI: --allow-model-change) to re-dream anyway."
        )
    had = [(a.kind, a.sha256, a.scale, a.token) for a in recipe.model.adapters]
    has = [(a.kind, a.sha256, a.scale, a.token) for a in model.ref.adapters]
    if had != has and not allow_model_change:
        raise RecallError(
            f"The LoRAs or embeddings of '{Path(png).name}' are not the ones applied now (a file changed since, or the "
            "model was given without them); pass allow_model_change=True (CLI: --allow-model-change) to re-dream anyway."
        )
    return next(dream_iter(model, seeds=[recipe.seed], recipe=recipe, out_dir=out_dir))
