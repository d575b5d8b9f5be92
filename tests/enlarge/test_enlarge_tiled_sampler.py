"""Tiled sampling: tile positions, blending weights and a run against SUPIR's TiledRestoreEDMSampler."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dreamy.enlarging.conditioning import TextConditioning
from dreamy.enlarging.epsilon import SupirEpsilon
from dreamy.enlarging.sampler import SamplerSettings
from dreamy.enlarging.tiled_sampler import gaussian_weights, restore_sample_tiled, sliding_windows

from .supir_synthetic import FIXTURES


@pytest.fixture(scope="module")
def oracle() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "tiled_sampler.safetensors"))


def test_windows_of_a_2048px_image_are_nine():
    starts = sorted({w[0] for w in sliding_windows(256, 256, 128, 64)})
    assert starts == [0, 64, 128] and len(sliding_windows(256, 256, 128, 64)) == 9


def test_windows_add_a_flush_last_tile_and_shrink_to_small_latents():
    assert sliding_windows(24, 20, 16, 8) == [(0, 16, 0, 16), (0, 16, 4, 20), (8, 24, 0, 16), (8, 24, 4, 20)]
    assert sliding_windows(12, 40, 16, 16) == [(0, 12, 0, 16), (0, 12, 16, 32), (0, 12, 24, 40)]


def test_gaussian_weights_match_official(oracle):
    torch.testing.assert_close(gaussian_weights(8, 8), oracle["weights8"], rtol=1e-15, atol=0)


def test_tiled_run_matches_official(reduced_supir, oracle):
    model = SupirEpsilon(
        reduced_supir.control,
        reduced_supir.unet,
        cond=TextConditioning(oracle["cond.context"], oracle["cond.vector"]),
        uncond=TextConditioning(oracle["uncond.context"], oracle["uncond.vector"]),
    )
    # Latent 14x10, tiles of 8 every 4: rows start at 0, 4, 6 and columns at 0, 2 (flush last tiles).
    settings = SamplerSettings(steps=2, churn=0.5, cfg_scale_start=4.0, cfg_scale=3.0, restoration_scale=1.5)
    final = restore_sample_tiled(
        model,
        oracle["hint"],
        settings,
        torch.Generator().manual_seed(99),
        x_center=oracle["x_center"],
        tile=8,
        stride=4,
        tiles_per_batch=3,
    )
    error = float((final - oracle["final"]).norm() / oracle["final"].norm())
    assert error < 1e-5
