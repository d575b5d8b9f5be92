"""Behaviour: Dreambooth on 8 single-colour photos pulls what the model dreams toward that colour.

The tiny demo model's VAE has random weights and cannot represent colour at all (its GroupNorms
see one channel per group, so every flat colour encodes and decodes alike). The test therefore
builds its base from the tiny UNet and text encoder plus a small VAE first taught to round-trip
flat colours (a few hundred CPU steps), then fine-tunes that base once on red and once on blue.

What is compared is the two fine-tunes with each other, not each with the base: a random base
already dreams in some colour of its own (one draw dreams nearly blue, so a blue fine-tune cannot
come much closer to blue than it was, and sometimes moves a little away while still ending far
bluer than the red fine-tune). Measured on two random bases (tiny seeds 1234 and 7; torch 2.13,
diffusers 0.42.1, transformers 5.24), each run's dreams were 0.40-0.58 times as far from its own
colour as the other run's dreams were, and (R-B) of the red run exceeded the blue run's by 79-111;
without training both ratios are 1 and the gap 0, so the thresholds (0.75 and 40) still fail when
training stops pulling.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dreamy.dreaming.dreams import dream_iter
from dreamy.models.sources import load_model
from dreamy.training import Finished, train

DREAM = {"width": 64, "height": 64, "steps": 10}
SEEDS = list(range(6))
RED, BLUE = (220, 40, 40), (40, 40, 220)


@pytest.fixture(scope="module", params=[1234, 7], ids=["tiny-seed-1234", "tiny-seed-7"])
def colour_base(request, tmp_path_factory):
    from diffusers import AutoencoderKL

    from dreamy.models.tiny import save_tiny_model

    folder = tmp_path_factory.mktemp("colour-base") / "model"
    save_tiny_model(folder, seed=request.param)  # the tiny demo's architecture with this seed's weights
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
                        latent_channels=4, scaling_factor=0.3, sample_size=64)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = (torch.rand(8, 3, 1, 1, generator=g) * 2 - 1).expand(8, 3, 16, 16)
        loss = (vae.decode(vae.encode(x).latent_dist.mean).sample - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    shutil.rmtree(folder / "vae")
    vae.save_pretrained(folder / "vae")
    return folder


def mean_colour(model) -> np.ndarray:
    images = [d.image for d in dream_iter(model, seeds=SEEDS, overrides=DREAM, unlock=True)]
    return np.mean([np.asarray(im, dtype=np.float64).mean(axis=(0, 1)) for im in images], axis=0)


def fine_tune(tmp_path, base, colour, name) -> np.ndarray:
    photos = tmp_path / name
    photos.mkdir()
    for i in range(8):
        Image.new("RGB", (64, 64), colour).save(photos / f"{i}.png")
    events = list(train(photos, name=name, base=str(base), models_dir=tmp_path / "models", unlock=True,
                        overrides={"resolution": 64, "max_train_steps": 50, "checkpointing_steps": 50,
                                   "learning_rate": 1e-3, "optimizer": "adamw", "validation_seeds": ""}))
    assert isinstance(events[-1], Finished)
    return mean_colour(load_model(str(events[-1].checkpoint), device="cpu"))


@torch.no_grad()
def as_the_vae_sees_it(model, colour) -> np.ndarray:
    """The colour a flat photo comes back as through the base's VAE: the best a dream can reach."""
    x = (torch.tensor(colour, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    out = model.vae.decode(model.vae.encode(x).latent_dist.mean).sample
    return ((out / 2 + 0.5).clamp(0, 1) * 255).mean(dim=(0, 2, 3)).numpy()


@pytest.mark.slow  # ~30 s per base on 2 cores: a VAE taught colours, two 50-step runs, 18 dreams
def test_training_on_one_colour_pulls_dreams_toward_it(tmp_path, colour_base):
    base = load_model(str(colour_base), device="cpu")
    red_target, blue_target = as_the_vae_sees_it(base, RED), as_the_vae_sees_it(base, BLUE)
    red = fine_tune(tmp_path, colour_base, RED, "red")
    blue = fine_tune(tmp_path, colour_base, BLUE, "blue")

    def dist(c, target):
        return float(np.linalg.norm(c - target))

    # each run dreams much nearer its own colour than the other run does...
    assert dist(red, red_target) < 0.75 * dist(blue, red_target), (red, blue, red_target)
    assert dist(blue, blue_target) < 0.75 * dist(red, blue_target), (red, blue, blue_target)
    # ...and the two runs part along the red-blue axis (not both merely "flatter" or brighter)
    assert (red[0] - red[2]) - (blue[0] - blue[2]) > 40, (red, blue)
