"""Stage 1: the denoise encoder (+ base quant_conv) matches SUPIR's encode_first_stage_with_denoise."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from dreamy.enlarging.checkpoint import split_supir_state_dict
from dreamy.enlarging.keys import denoise_encoder_names
from dreamy.enlarging.stage1 import DenoiseEncoder, run_stage1
from dreamy.enlarging.tiled_vae import VaeTiling, tiled_forward

from .supir_synthetic import FIXTURES, load_manifest, synthetic_state_dict

# The oracle's small sgm Encoder: ch 32, ch_mult [1, 2, 2], 2 res blocks, mid attention.
SMALL_VAE = dict(
    block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    scaling_factor=0.13025,
)


def _small_encoder() -> tuple[AutoencoderKL, DenoiseEncoder]:
    state = synthetic_state_dict(load_manifest("denoise_encoder_manifest.json"), 3)
    vae = AutoencoderKL(**SMALL_VAE).eval()
    quant = {k.rsplit(".", 1)[-1]: v for k, v in state.items() if k.startswith("first_stage_model.quant_conv.")}
    vae.quant_conv.load_state_dict(quant)
    names = {k: ("denoise_encoder", v) for k, v in denoise_encoder_names(vae.encoder.state_dict()).items()}
    weights = split_supir_state_dict(state, names)
    assert list(weights.backbone) == ["first_stage_model.quant_conv.weight", "first_stage_model.quant_conv.bias"]
    return vae, DenoiseEncoder.from_vae(vae, weights.part("denoise_encoder")).eval()


def test_denoise_encoder_matches_official():
    oracle = load_file(str(FIXTURES / "small.safetensors"))
    _, encoder = _small_encoder()
    with torch.no_grad():
        latent = encoder(oracle["denoise.image"])
    torch.testing.assert_close(latent, oracle["denoise.latent"], rtol=1e-5, atol=1e-6)


def test_stage1_outputs_and_center_is_seeded():
    vae, encoder = _small_encoder()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    first = run_stage1(image, encoder, vae, torch.Generator().manual_seed(4), with_center=True)
    again = run_stage1(image, encoder, vae, torch.Generator().manual_seed(4), with_center=True)
    assert first.latent.shape == (1, 4, 8, 8) and first.reference.shape == image.shape
    assert first.center is not None and torch.equal(first.center, again.center)
    assert run_stage1(image, encoder, vae).center is None


def test_tiled_stage1_uses_the_tiled_encoder_and_decoder():
    vae, encoder = _small_encoder()
    image = torch.rand(1, 3, 176, 176) * 2 - 1
    plain = run_stage1(image, encoder, vae)
    # SUPIR's default tiles (512 px, 64 latents) cover this whole image: the untiled path runs.
    default = run_stage1(image, encoder, vae, tiled=VaeTiling())
    assert torch.equal(plain.latent, default.latent) and torch.equal(plain.reference, default.reference)
    small = VaeTiling(encoder_tile=64, decoder_tile=8, storage="cpu")
    tiled = run_stage1(image, encoder, vae, torch.Generator().manual_seed(1), with_center=True, tiled=small)
    expected = encoder.scaling_factor * vae.quant_conv(tiled_forward(encoder.encoder, image, False, 64)).chunk(2, 1)[0]
    torch.testing.assert_close(tiled.latent, expected)
    assert not torch.equal(plain.latent, tiled.latent)
    assert float((tiled.latent - plain.latent).norm() / plain.latent.norm()) < 0.3
    assert tiled.center is not None and tiled.center.shape == plain.latent.shape
