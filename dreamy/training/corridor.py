"""The corridor meter's signals: how far a checkpoint has been pulled toward its training photos.

Four numbers per checkpoint, each against the base model (step 0), computed with that checkpoint's
weights from the run's training photos and held-out pictures (the step-0 validation dreams), at fixed
noise and timesteps; docs/corridor.md has the formulas and why each reads the way it does:

- **drift**: how much nearer the model's one-step guess of a held-out picture at high noise has come
  to the training photos' latent statistics (0 at step 0, 1 when every guess is a training photo);
- **gap** (memorisation): how much better the model denoises its training photos than held-out
  pictures (0 at step 0, rises as it memorises);
- **diversity**: how different those guesses are from each other (1 at step 0; mode collapse drives
  it toward 0: every noise becomes the same picture);
- **retention** (language): how much a prompt still moves the UNet's prediction away from the empty
  prompt's, over fixed probe prompts (1 at step 0; forgetting language drives it down).

Two more are read from the validation dreams themselves, as the eye reads the grid: ``dream_drift``
(their colour and latent statistics against the photos') and ``dream_diversity`` (how different the
seeds' dreams are). They are kept beside the four but do not mark: with a few seeds they are noisy,
and on the tiny test model (whose dreams wander in colour as it trains) they do not move steadily.

Everything is deterministic: fixed timesteps, noise from seeded CPU generators, VAE latent means
(never samples). The cost is a few VAE encodes and at most ``(2 * MAX_IMAGES + 2 * len(PROBES)) *
len(TIMESTEPS)`` UNet rows at the training resolution, in batches of ``BATCH``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..models.single_file import CONFIGS
from ..models.sources import SDModel
from .data import fit_short_side, to_tensor
from .validation import autocast_for

# Fixed probe: the same numbers at every checkpoint, so rows compare. The timesteps span the schedule
# (texture at low t, composition at high t); a loss at one t alone is too noisy to compare.
TIMESTEPS = (150, 400, 650, 900)
# Drift and diversity read the model's guesses where the picture's content is still being decided;
# at low t the guess is the input itself whatever the weights (measured: flat below t = 400).
HIGH_T = (650, 900)
NOISE_SEED = 20_240_611  # the probe's own seed; image i gets generator(NOISE_SEED + i)
MAX_IMAGES = 8  # training photos and held-out pictures each; more adds cost, not signal
BATCH = 8  # UNet rows per forward
THUMB = 32  # dream diversity compares dreams at 32 x 32 (area-averaged): composition, not grain
# Language probes: everyday subjects far from any one training set, so their pull on the prediction
# measures what the text encoder and cross-attention still carry, not the trained caption.
PROBES = ("a photo of a dog on a beach", "a red sports car parked on a city street",
          "a watercolor painting of snowy mountains", "a bowl of fruit on a wooden kitchen table")


@dataclass
class PhotoSet:
    """The training photos as the meter reads them, at the training resolution.

    ``latents``: (n, 4, r/8, r/8) float32 on the CPU, the VAE's latent mean x ``scaling_factor``;
    ``features``: (n, 14) float32, :func:`features` of each photo; ``captions``: the captions they
    were trained under, before a pivotal run's trigger -> new-token substitution (``trigger``, "" for
    none; ``tokens``, the run's new tokens, [] for none); ``sha256``: each photo file's;
    ``resolution``: pixels, the square side.
    """

    latents: torch.Tensor
    features: torch.Tensor
    captions: list[str]
    trigger: str
    tokens: list[str]
    sha256: list[str]
    resolution: int

    def captions_for(self, model: SDModel) -> list[str]:
        """The captions as ``model`` was trained on them: a pivotal run's trigger word becomes its new
        tokens where ``model``'s tokenizer has them (its checkpoints; not the base)."""
        if not self.tokens or not self.trigger or any(t not in model.tokenizer.get_vocab() for t in self.tokens):
            return list(self.captions)
        word = re.compile(rf"(?<!\w){re.escape(self.trigger)}(?!\w)")
        return [word.sub("".join(self.tokens), c) for c in self.captions]


# ------------------------------------------------------------------------------------------- images


def load_dreams(paths: Sequence[Path], resolution: int) -> torch.Tensor:
    """Validation PNGs as pixels (k, 3, resolution, resolution) float32 in [-1, 1]: short side resized
    to ``resolution`` and center-cropped, as Train prepares a photo. Raises OSError for a missing file
    and PIL's errors for a damaged one."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(to_tensor(fit_short_side(im.convert("RGB"), resolution, "center", [])))
    return torch.stack(out)


@torch.no_grad()
def encode(model: SDModel, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (k, 3, H, W) in [-1, 1] -> latents (k, 4, H/8, W/8) float32 on the CPU: the VAE
    encoder's mean times ``scaling_factor`` (0.18215 for SD1.5), one image at a time as Train caches
    them (a batch may round differently)."""
    vae = model.vae
    dtype = next(vae.parameters()).dtype
    rows = [vae.encode(px[None].to(model.device, dtype)).latent_dist.mean.float().cpu() for px in pixels]
    return torch.cat(rows) * vae.config.scaling_factor


def latent_stats(z: torch.Tensor) -> torch.Tensor:
    """(k, 8) float64: each latent's 4 channel means and 4 channel standard deviations (over h, w)."""
    z = z.double()
    return torch.cat([z.mean(dim=(2, 3)), z.std(dim=(2, 3))], dim=1)


def features(pixels: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Per image (k, 14) float64: the RGB channels' mean and standard deviation over the picture
    (pixels in [-1, 1]) and :func:`latent_stats` (latents scaled by the VAE's ``scaling_factor``,
    about unit variance for SD). Both halves are in the units the model itself sees, so neither needs
    a weight; together they describe palette, contrast and texture energy."""
    px = pixels.double()
    return torch.cat([px.mean(dim=(2, 3)), px.std(dim=(2, 3)), latent_stats(latents)], dim=1)


def distance_to_set(items: torch.Tensor, photos: torch.Tensor) -> float:
    """mean over items k of min over photos j of ||f_k - p_j||_2 (rows of statistics, e.g.
    :func:`latent_stats` or :func:`features`): how near each item has come to the nearest training
    photo. >= 0; 0 when every item matches a photo."""
    return float(torch.cdist(items.double(), photos.double()).min(dim=1).values.mean())


def mean_pairwise_rms(x: torch.Tensor) -> float:
    """mean over pairs k != l of RMS(x_k - x_l) for a batch (k, ...) with k >= 2: how different the
    items are. 0 when all are alike."""
    flat = x.double().flatten(1)
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    return float(d.sum() / (len(flat) * (len(flat) - 1)))


def spread(pixels: torch.Tensor) -> float:
    """Dreams (k >= 2, 3, H, W) in [-1, 1] area-averaged to THUMB x THUMB, then :func:`mean_pairwise_rms`:
    how different the seeds' pictures are, in [0, 2]."""
    return mean_pairwise_rms(F.adaptive_avg_pool2d(pixels.double(), THUMB))


# ---------------------------------------------------------------------------------------- the UNet


def noise_scheduler():
    """SD1.5's training schedule (``scaled_linear`` betas, 1000 steps), as ``loss.py`` trains with it."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(json.loads((CONFIGS / "sd15" / "scheduler" / "scheduler_config.json").read_text()))


def fixed_noise(index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The probe's noise for image ``index``: (len(TIMESTEPS), *shape) float32 standard normal from a CPU
    generator seeded ``NOISE_SEED + index``, the same on every device and at every checkpoint."""
    g = torch.Generator("cpu").manual_seed(NOISE_SEED + index)
    return torch.randn((len(TIMESTEPS), *shape), generator=g)


@torch.no_grad()
def _predict(model: SDModel, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """The UNet's output for rows (x, t, ctx) in batches of BATCH; float32 on the CPU."""
    unet = model.unet
    dtype = next(unet.parameters()).dtype
    out = []
    for i in range(0, len(x), BATCH):
        with autocast_for(model.device, model.dtype):
            pred = unet(x[i : i + BATCH].to(model.device, dtype), t[i : i + BATCH].to(model.device),
                        encoder_hidden_states=ctx[i : i + BATCH].to(model.device), return_dict=False)[0]
        out.append(pred.float().cpu())
    return torch.cat(out)


def _noisy_rows(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every image at every probe timestep: (x_t, t, noise, image index), rows image-major. Image i's
    noise is :func:`fixed_noise` (i), so the training photo i and the held-out picture i share noise."""
    sched = noise_scheduler()
    ts = torch.tensor(TIMESTEPS, dtype=torch.long)
    xs, noise = [], []
    for i, z in enumerate(latents):
        n = fixed_noise(i, tuple(z.shape))
        xs.append(sched.add_noise(z[None].expand(len(ts), -1, -1, -1), n, ts))
        noise.append(n)
    return torch.cat(xs), ts.repeat(len(latents)), torch.cat(noise), torch.arange(len(latents)).repeat_interleave(len(ts))


def _contexts(model: SDModel, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    from ..dreaming.blocks import encode_prompt

    with autocast_for(model.device, model.dtype):
        return {t: encode_prompt(model, t) for t in dict.fromkeys(texts)}


@dataclass
class Denoised:
    """One probe pass over a set of latents: ``loss`` (see :func:`denoise_probe`); ``x0``: the model's
    one-step guess of the clean latents, (n * len(TIMESTEPS), 4, h, w) float32 on the CPU, rows
    image-major; ``t``: each row's timestep (long)."""

    loss: float
    x0: torch.Tensor
    t: torch.Tensor

    def at_high_t(self) -> list[torch.Tensor]:
        """The guesses at each of HIGH_T: one (n, 4, h, w) tensor per timestep."""
        return [self.x0[self.t == t] for t in HIGH_T]


def denoise_probe(model: SDModel, latents: torch.Tensor, captions: Sequence[str]) -> Denoised:
    """Every image noised at every probe timestep with its fixed noise, denoised once by ``model``.

    loss L = mean over images i and timesteps t of MSE(unet(x_t, t, c_i), target): the training loss
    of loss.py (epsilon target; v-prediction's velocity for such a schedule) at fixed noise, without
    min-SNR weights. x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (epsilon; v: sqrt(a_t) x_t - sqrt(1 - a_t) v),
    a_t the schedule's alphas_cumprod (Ho et al. 2020, eq. 15). ``latents`` (n, 4, h, w) scaled;
    image i is read under ``captions[i % len(captions)]``."""
    sched = noise_scheduler()
    x, t, noise, idx = _noisy_rows(latents)
    ctx = _contexts(model, captions)
    rows = torch.cat([ctx[captions[int(i) % len(captions)]] for i in idx])
    pred = _predict(model, x, t, rows)
    a = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(latents[idx], noise, t)
        x0 = a.sqrt() * x - (1 - a).sqrt() * pred
    else:
        target = noise
        x0 = (x - (1 - a).sqrt() * pred) / a.sqrt()
    return Denoised(float(F.mse_loss(pred, target)), x0, t)


def pull(held: Denoised, photo_latents: torch.Tensor) -> float:
    """P = mean over held-out pictures i and t in HIGH_T of min over photos j of
    ||latent_stats(x0_{i,t}) - latent_stats(p_j)||_2: how near the model's guesses of pictures it never
    trained on have come to a training photo. drift = 1 - P / P0."""
    photos = latent_stats(photo_latents)
    return float(sum(distance_to_set(latent_stats(x0), photos) for x0 in held.at_high_t()) / len(HIGH_T))


def guess_spread(held: Denoised) -> float | None:
    """G = mean over t in HIGH_T of :func:`mean_pairwise_rms` of the guesses x0_{i,t} over held-out
    pictures i: how different the model's pictures are for different inputs. diversity = G / G0.
    None with fewer than two held-out pictures."""
    groups = held.at_high_t()
    if len(groups[0]) < 2:
        return None
    return sum(mean_pairwise_rms(x0) for x0 in groups) / len(groups)


def steering(model: SDModel, latents: torch.Tensor) -> float:
    """R = mean over probe prompts p and timesteps t of RMS(eps(x, t, p) - eps(x, t, "")): how far a
    prompt moves the prediction from the empty prompt's (what classifier-free guidance amplifies).
    x is training photo ((p + t's index) mod n) noised with its fixed noise, so inputs never change."""
    x, t, _, _ = _noisy_rows(latents)
    n_t = len(TIMESTEPS)
    pick = [((p + j) % len(latents)) * n_t + j for p in range(len(PROBES)) for j in range(n_t)]
    x, t = x[pick], t[pick]
    ctx = _contexts(model, ("", *PROBES))
    cond = torch.cat([ctx[PROBES[p]] for p in range(len(PROBES)) for _ in range(n_t)])
    uncond = ctx[""].expand(len(pick), -1, -1)
    pred = _predict(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))
    e_c, e_u = pred.chunk(2)
    return float((e_c - e_u).square().mean(dim=(1, 2, 3)).sqrt().mean())
