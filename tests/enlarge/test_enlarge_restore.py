"""End to end on a tiny SUPIR (random weights, toy widths): plumbing, seeding, tiling switches."""

from __future__ import annotations

import pytest
import torch

from dreamy.enlarging.restore import RestoreSettings, SamplingTiles, restore
from dreamy.enlarging.sampler import SamplerSettings
from dreamy.enlarging.tiled_vae import VaeTiling

from .tiny_supir import build_tiny_supir


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_supir()


def _run(tiny, seed: int, **changes) -> torch.Tensor:
    supir, vae, cond, uncond, image = tiny
    settings = RestoreSettings(**{"sampler": SamplerSettings(steps=2), **changes})
    return restore(image, supir, vae, cond, uncond, settings, torch.Generator().manual_seed(seed))


def test_same_seed_same_picture_other_seed_other_picture(tiny):
    first = _run(tiny, 1)
    assert first.shape == (1, 3, 64, 64) and torch.isfinite(first).all()
    assert torch.equal(first, _run(tiny, 1))
    assert not torch.equal(first, _run(tiny, 2))


def test_every_switch_runs(tiny):
    for changes in (
        {"sampler": SamplerSettings(steps=2, restoration_scale=2.0)},
        {"sampling_tiles": SamplingTiles(size=4, stride=4, per_batch=3)},
        {"vae_tiles": VaeTiling(encoder_tile=16, decoder_tile=4)},
        {"colour_fix": "adain"},
    ):
        out = _run(tiny, 3, **changes)
        assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all(), changes


def test_progress_reports_each_step(tiny):
    supir, vae, cond, uncond, image = tiny
    seen = []
    settings = RestoreSettings(sampler=SamplerSettings(steps=3))
    restore(image, supir, vae, cond, uncond, settings, torch.Generator().manual_seed(0), lambda d, t, x: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
