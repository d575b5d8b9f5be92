"""Tiled VAE with shared GroupNorm statistics: parity with SUPIR's VAEHook on a small VAE."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import load_file

from dreamy.enlarging.tiled_vae import tile_boxes, tiled_forward

from .supir_synthetic import FIXTURES, load_manifest, synthetic_state_dict

# The oracle's sgm VAE: ch 32, ch_mult [1, 1, 2, 2], one res block per level (8x downscale).
SMALL_VAE = dict(
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=32,
)


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    vae = AutoencoderKL(**SMALL_VAE).eval()
    state = synthetic_state_dict(load_manifest("tiled_vae_manifest.json"), 17)
    converted = convert_ldm_vae_checkpoint(state, dict(vae.config))
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    assert not unexpected and all(k.startswith(("quant_conv", "post_quant_conv")) for k in missing)
    return vae


@pytest.fixture(scope="module")
def oracle() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "tiled_vae.safetensors"))


def test_tile_boxes_match_official_split():
    # VAEHook.split_tiles(200, 168) with 64 px tiles and 32 px padding, in (top, bottom, left, right).
    boxes = tile_boxes(200, 168, 64, 32, 8, is_decoder=False)
    assert [b[0] for b in boxes] == [
        (0, 128, 0, 128), (0, 128, 64, 168), (64, 192, 0, 128), (64, 192, 64, 168), (128, 200, 0, 128), (128, 200, 64, 168),
    ]  # fmt: skip
    assert [b[1] for b in boxes] == [
        (0, 12, 0, 12), (0, 12, 12, 21), (12, 20, 0, 12), (12, 20, 12, 21), (20, 25, 0, 12), (20, 25, 12, 21),
    ]  # fmt: skip
    boxes = tile_boxes(40, 24, 16, 11, 8, is_decoder=True)
    assert boxes == [((0, 38, 0, 24), (0, 216, 0, 192)), ((16, 40, 0, 24), (216, 320, 0, 192))]


@pytest.mark.parametrize(("part", "tile"), [("encoder", 64), ("decoder", 16)])
def test_tiled_matches_official(part, tile, vae, oracle):
    x = oracle["image" if part == "encoder" else "latent"].float()
    out = tiled_forward(getattr(vae, part), x, is_decoder=part == "decoder", tile=tile)
    assert list(out.shape) == oracle[f"{part}.tiled.shape"].tolist()
    sub = out.flatten()[::7]
    assert float((sub - oracle[f"{part}.tiled.sub"]).norm() / oracle[f"{part}.tiled.sub"].norm()) < 1e-5
    assert abs(float(out.norm() / oracle[f"{part}.tiled.norm"]) - 1) < 1e-5


def test_tiled_is_close_to_untiled_and_small_inputs_are_not_tiled(vae, oracle):
    latent = oracle["latent"].float()
    with torch.no_grad():
        full = vae.decoder(latent)
        assert torch.equal(tiled_forward(vae.decoder, latent[:, :, :32], is_decoder=True, tile=16), vae.decoder(latent[:, :, :32]))
    tiled = tiled_forward(vae.decoder, latent, is_decoder=True, tile=16, storage="cpu")
    assert float((tiled - full).norm() / full.norm()) < 0.05  # the reference's own gap here: 0.018
