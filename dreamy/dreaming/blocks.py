"""The sampling building blocks every picture goes through: prompt -> embedding, seed -> noise,
noise -> latents (the sampler), latents -> pixels.

Dream, the CUDA fast path, sweeps, prompt sweeps and Train's validation renders all call these, so a
seed paints the same picture whichever of them asks. Each matches stock ``StableDiffusionPipeline``
step for step (tests/test_dream.py checks bit-identity on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import check_finite
from ..events import CancelToken
from ..models.sources import SDModel
from ..models.tokens import check_prompts
from ..recipes.recipe import Recipe
from ..recipes.samplers import make_scheduler


@torch.no_grad()
def encode_prompt(model: SDModel, text: str) -> torch.Tensor:
    """The text encoder's last hidden state for ``text``: shape (1, 77, hidden), the model's dtype
    and device (hidden: 768 for SD1.x, 32 for the tiny demo).

    Padded or cut to the tokenizer's ``model_max_length`` (77 for CLIP) as stock diffusers does.
    """
    tok = model.tokenizer(
        text, padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    mask = tok.attention_mask.to(model.device) if getattr(model.text_encoder.config, "use_attention_mask", False) else None
    emb = model.text_encoder(tok.input_ids.to(model.device), attention_mask=mask)[0]
    return emb.to(dtype=model.text_encoder.dtype, device=model.device)


def prompt_cuts(model: SDModel, prompt: str, negative_prompt: str = "") -> tuple[dict[str, str], list[str]]:
    """What the text encoder will drop of a prompt pair: (runtime entries for the recipe -
    ``prompt_truncated`` / ``negative_prompt_truncated``, each the dropped text - and one notice per
    cut prompt, also logged as a warning). Both empty when everything fits."""
    cut, notes = check_prompts(model.tokenizer, {"prompt": prompt, "negative prompt": negative_prompt})
    runtime = {("prompt_truncated" if k == "prompt" else "negative_prompt_truncated"): v for k, v in cut.items()}
    return runtime, notes


def initial_noise(model: SDModel, seed: int, width: int, height: int) -> torch.Tensor:
    """The seed's starting latents: shape (1, 4, height/8, width/8) in the model's dtype and device,
    standard normal (not yet scaled by the scheduler's ``init_noise_sigma``), drawn from the seed's own
    CPU generator as stock's ``randn_tensor`` draws them, so a seed starts alike on every device."""
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
    """Run the recipe's sampler over a batch of latents (one row per seed) and return the last latents.

    ``latents``: (n, 4, h, w) from ``initial_noise``; ``cond``/``uncond``: (1, 77, hidden) from
    ``encode_prompt`` (the prompt and the negative prompt). Classifier-free guidance as stock diffusers
    (``uncond + guidance * (cond - uncond)``; guidance <= 1 is one conditional pass). The result is in the
    UNet's latent space (not divided by the VAE's ``scaling_factor``). ``on_step(i, steps)`` follows each
    step; Cancelled is raised between steps when ``cancel`` is set.
    """
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
    """Latents (n, 4, h, w) -> n RGB PIL images of (8w, 8h) px, and whether the VAE had to be upcast.

    Latents are divided by the VAE's ``scaling_factor`` (0.18215 for SD1.5) before decoding, as stock;
    a half-precision decode that overflows (NaN/inf) is redone in fp32; NaN/inf that remain (damaged
    weights, a diverged sampler) raise :class:`dreamy.errors.NonFiniteOutput` - nothing is saved.
    """
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
    check_finite(images, "model")
    arr = (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    arr = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr], upcast
