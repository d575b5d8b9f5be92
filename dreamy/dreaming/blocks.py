"""The sampling building blocks every picture goes through: prompt -> embedding, seed -> noise,
noise -> latents (the sampler), latents -> pixels.

Dream, the CUDA fast path, sweeps, prompt sweeps and Train's validation renders all call these, so a
seed paints the same picture whichever of them asks. Each matches stock ``StableDiffusionPipeline``
step for step (tests/test_dream.py checks bit-identity on the CPU).

A recipe's ``prompt_syntax`` "a1111" reads prompts as AUTOMATIC1111 does instead (weights, BREAK,
75-token chunks: dreamy/models/a1111_prompt.py); "plain" is stock's reading, untouched.

SDXL models (``model.arch == "sdxl"``) take the same path with SDXL's conditioning (both text
encoders, the pooled embedding and the size/crop time ids: dreamy/dreaming/sdxl.py), matching stock
``StableDiffusionXLPipeline`` with "plain" prompts and A1111's SDXL conditioning with "a1111" ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import check_finite
from ..events import CancelToken
from ..models.a1111_prompt import chunk_prompt, original_emphasis
from ..models.sdxl_adapters import expand_tokens
from ..models.sources import SDModel
from ..models.tokens import check_prompts
from ..recipes.recipe import Recipe
from ..recipes.samplers import is_noisy, make_scheduler, step_parameters


@torch.no_grad()
def encode_prompt(model: SDModel, text: str, syntax: str = "plain", negative: bool = False) -> torch.Tensor:
    """The text encoder's last hidden state for ``text``, in the model's dtype and device
    (hidden: 768 for SD1.x, 32 for the tiny demo).

    ``syntax`` "plain" (the default): shape (1, 77, hidden), padded or cut to the tokenizer's
    ``model_max_length`` (77 for CLIP) exactly as stock diffusers does. "a1111": shape
    (1, 77 * chunks, hidden), see :func:`encode_a1111`. Raises PresetError for an a1111 weight that
    is not a number.

    An SDXL model gives an :class:`dreamy.dreaming.sdxl.SDXLText` instead (embeddings (1, 77, 2048)
    and pooled (1, 1280) for SDXL; with "a1111", (1, 77 * chunks, 2048) and the pooled embedding of
    the first chunk); ``negative`` marks the negative prompt, all zeros there when empty (see
    dreamy/dreaming/sdxl.py). Tokens of loaded multi-vector embeddings are expanded first
    (:func:`expand_tokens`).
    """
    text = expand_tokens(model, text)
    if model.arch == "sdxl":
        from .sdxl import encode

        return encode(model, text, negative=negative, syntax=syntax)
    if syntax == "a1111":
        return encode_a1111(model, text)
    tok = model.tokenizer(
        text, padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    mask = tok.attention_mask.to(model.device) if getattr(model.text_encoder.config, "use_attention_mask", False) else None
    emb = model.text_encoder(tok.input_ids.to(model.device), attention_mask=mask)[0]
    return emb.to(dtype=model.text_encoder.dtype, device=model.device)


@torch.no_grad()
def encode_a1111(model: SDModel, text: str) -> torch.Tensor:
    """``text`` as A1111 encodes it for SD 1.x: shape (1, 77 * chunks, hidden), model dtype and device.

    The prompt is cut into 77-token chunks with one weight per token (``chunk_prompt``: A1111's
    ``parse_prompt_attention`` and ``tokenize_line``); each chunk goes through the text encoder on
    its own (A1111's ``process_tokens``), then its "Original" emphasis (``sd_emphasis.EmphasisOriginal``):
    the hidden states are multiplied by their token's weight and rescaled so that the chunk's mean
    is what it was before (``z * w * mean(z) / mean(z * w)``, in float32); the chunks are joined along
    the sequence axis (``torch.hstack`` in A1111's ``forward``). A one-chunk prompt without weights is
    therefore bit for bit the plain encoding. Clip skip is A1111's default (the last layer). Where the
    weighted mean is exactly 0 the rescale is skipped (A1111 would divide by zero).
    """
    use_mask = getattr(model.text_encoder.config, "use_attention_mask", False)
    parts = []
    for chunk in chunk_prompt(model.tokenizer, text):
        ids = torch.tensor([chunk.ids], dtype=torch.long, device=model.device)
        mask = None
        if use_mask:  # as the plain path: the text up to its first end-of-text, as the tokenizer marks it
            mask = torch.zeros_like(ids)
            mask[0, : chunk.ids.index(model.tokenizer.eos_token_id) + 1] = 1
        z = model.text_encoder(ids, attention_mask=mask)[0]
        parts.append(original_emphasis(z, chunk.weights).to(dtype=model.text_encoder.dtype))
    return torch.cat(parts, dim=1).to(device=model.device)


def prompt_cuts(model: SDModel, prompt: str, negative_prompt: str = "",
                syntax: str = "plain") -> tuple[dict[str, str], list[str]]:
    """What the text encoder will drop of a prompt pair: (runtime entries for the recipe -
    ``prompt_truncated`` / ``negative_prompt_truncated``, each the dropped text - and one notice per
    cut prompt, also logged as a warning). Both empty when everything fits, and always for the
    "a1111" ``syntax``, which reads a long prompt in chunks."""
    cut, notes = check_prompts(model.tokenizer, {"prompt": prompt, "negative prompt": negative_prompt}, syntax)
    runtime = {("prompt_truncated" if k == "prompt" else "negative_prompt_truncated"): v for k, v in cut.items()}
    return runtime, notes


def initial_noise(model: SDModel, seed: int, width: int, height: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The seed's starting latents: shape (1, 4, height/8, width/8) in the model's dtype and device,
    standard normal (not yet scaled by the scheduler's ``init_noise_sigma``), drawn from the seed's own
    CPU generator as stock's ``randn_tensor`` draws them, so a seed starts alike on every device.
    ``generator``: that generator, seeded by the caller, which the draw advances."""
    from diffusers.utils.torch_utils import randn_tensor

    scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    shape = (1, model.unet.config.in_channels, height // scale, width // scale)
    g = torch.Generator("cpu").manual_seed(seed) if generator is None else generator
    return randn_tensor(shape, generator=g, device=model.device, dtype=model.dtype)


def step_generators(model: SDModel, seeds: Sequence[int], width: int, height: int) -> list[torch.Generator]:
    """One CPU generator per seed, as it stands after drawing that seed's :func:`initial_noise`: where
    stock diffusers' per-image generators are when its sampler's steps start drawing. A noisy
    sampler's per-step noise comes from them, so a seed's picture does not depend on its batch."""
    generators = []
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(seed)
        initial_noise(model, seed, width, height, g)  # replayed only to advance g past the start
        generators.append(g)
    return generators


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
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run the recipe's sampler over a batch of latents (one row per seed) and return the last latents.

    ``latents``: (n, 4, h, w) from ``initial_noise``; ``cond``/``uncond``: (1, tokens, hidden) from
    ``encode_prompt`` (the prompt and the negative prompt). Classifier-free guidance as stock diffusers
    (``uncond + guidance * (cond - uncond)``; guidance <= 1 is one conditional pass). The result is in the
    UNet's latent space (not divided by the VAE's ``scaling_factor``). ``on_step(i, steps)`` follows each
    step; Cancelled is raised between steps when ``cancel`` is set.

    ``seeds``: the rows' seeds. A noisy sampler (Euler a, the SDE samplers: ``is_noisy``) needs them
    (ValueError without): its step noise comes from each seed's generator continued after its starting
    noise (:func:`step_generators`; stock's per-image generators), and DPM++ SDE's Brownian tree is
    seeded per row with the seed itself, as A1111 seeds it. Deterministic samplers get the same
    generators, as stock passes its generator to every scheduler that takes one; they never draw.

    With the a1111 prompt syntax the prompt and the negative prompt may have different numbers of
    chunks; the UNet then reads them in two passes, as A1111's ``CFGDenoiser`` does by default
    (its "pad prompt/negative prompt" options off).
    """
    s = recipe.settings
    ids = None
    if model.arch == "sdxl":
        from .sdxl import added_cond, time_ids

        ids = time_ids(model, s.width, s.height)
    scheduler = make_scheduler(s.sampler, s.scheduler)
    scheduler.set_timesteps(s.steps, device=model.device)
    step_kwargs: dict = {}
    if seeds is not None:
        if len(seeds) != latents.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {latents.shape[0]} rows of latents")
        if "generator" in step_parameters(scheduler):
            scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
            h, w = latents.shape[-2] * scale, latents.shape[-1] * scale
            step_kwargs["generator"] = step_generators(model, seeds, w, h)
        if hasattr(scheduler, "noise_sampler_seed"):  # DPM++ SDE: one Brownian tree per row
            scheduler.noise_sampler_seed = list(seeds)
    elif is_noisy(s.sampler, s.scheduler):
        raise ValueError(f"sampler '{s.sampler}' draws noise at every step: denoise needs the rows' seeds")
    latents = latents * scheduler.init_noise_sigma
    split = model.device.type == "cpu"
    cfg = s.guidance > 1.0  # as stock: guidance <= 1 means a single conditional pass
    together = cond.shape[1] == uncond.shape[1]

    def unet(x: torch.Tensor, t: torch.Tensor, parts: list) -> torch.Tensor:
        """The UNet on x (n rows per part of the prompt list, parts in batch order)."""
        n = x.shape[0] // len(parts)
        if ids is None:
            ctx = torch.cat([p.expand(n, -1, -1) for p in parts])
            return model.unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        ctx = torch.cat([p.embeds.expand(n, -1, -1) for p in parts])
        return model.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added_cond(model, parts, n, ids),
                          return_dict=False)[0]

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not cfg:
            return unet(x, t, [cond])
        if together:
            e_uncond, e_cond = unet(torch.cat([x] * 2), t, [uncond, cond]).chunk(2)
        else:
            e_cond = unet(x, t, [cond])
            e_uncond = unet(x, t, [uncond])
        return e_uncond + s.guidance * (e_cond - e_uncond)

    for i, t in enumerate(scheduler.timesteps):
        if cancel is not None:
            cancel.check()
        x = scheduler.scale_model_input(latents, t)
        noise_pred = _per_seed(split, lambda xi, t=t: eps(xi, t), x)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False, **step_kwargs)[0]
        if on_step is not None:
            on_step(i + 1, len(scheduler.timesteps))
    return latents


@torch.no_grad()
def decode(model: SDModel, latents: torch.Tensor) -> tuple[list[Image.Image], bool]:
    """Latents (n, 4, h, w) -> n RGB PIL images of (8w, 8h) px, and whether the VAE had to be upcast.

    Latents are divided by the VAE's ``scaling_factor`` (0.18215 for SD1.5, 0.13025 for SDXL) before
    decoding, as stock; a half-precision decode that overflows (NaN/inf) is redone in fp32; NaN/inf
    that remain (damaged weights, a diverged sampler) raise :class:`dreamy.errors.NonFiniteOutput` -
    nothing is saved. An SDXL VAE whose config says ``force_upcast`` (SDXL's own VAE overflows in fp16)
    decodes in fp32 from the start, as stock ``StableDiffusionXLPipeline`` does.
    """
    split = model.device.type == "cpu"
    vae = model.vae

    def run(x: torch.Tensor) -> torch.Tensor:
        return vae.decode(x / vae.config.scaling_factor, return_dict=False)[0]

    upcast = False
    if model.arch == "sdxl" and model.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
        try:
            images = _per_seed(split, run, latents.float())
        finally:
            vae.to(model.dtype)
    else:
        images = _per_seed(split, run, latents)
    if images.dtype != torch.float32 and not torch.isfinite(images).all():
        upcast = True
        vae.to(torch.float32)
        try:
            images = _per_seed(split, run, latents.float())
        finally:
            vae.to(model.dtype)
    check_finite(images, "model")
    arr = (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    arr = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr], upcast
