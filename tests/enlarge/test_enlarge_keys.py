"""Checkpoint renaming: every key of a real SUPIR v0 file has exactly one place in our modules.

``supir_v0_manifest.json`` lists the names and shapes of the 1035 tensors a SUPIR v0Q/v0F checkpoint
holds, read from the official modules built with options/SUPIR_v0.yaml (see the fixtures README).
The full-size modules are built on the meta device, so this costs no memory.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from dreamy.enlarging.checkpoint import load_exact
from dreamy.enlarging.keys import official_connector_order
from dreamy.enlarging.model import assemble_supir, load_supir
from dreamy.errors import SourceError

from .supir_synthetic import load_manifest

SDXL_UNET = dict(
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    scaling_factor=0.13025,
)


@pytest.fixture(scope="module")
def sdxl():
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_UNET), AutoencoderKL(**SDXL_VAE)


def _meta_state() -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in load_manifest("supir_v0_manifest.json").items()}


def test_real_checkpoint_layout_fills_every_module(sdxl):
    unet, vae = sdxl
    supir = assemble_supir(_meta_state(), unet, vae)  # raises on any missing/extra/misshaped key
    assert not supir.backbone
    assert sum(p.numel() for p in supir.control.parameters()) == 1_243_378_880
    assert sum(p.numel() for p in supir.unet.connectors.parameters()) == 54_797_440
    assert sum(p.numel() for p in supir.denoise_encoder.encoder.parameters()) == 34_163_592
    assert supir.denoise_encoder.quant_conv is vae.quant_conv  # the base VAE's own, as in SUPIR


def test_connector_roles_follow_official_indices(sdxl):
    """project_modules 3 and 7 are the ZeroCrossAttns, 11 follows the mid block (notes, section 1.3)."""
    unet, _ = sdxl
    connectors = assemble_supir(_meta_state(), unet).unet.connectors
    order = official_connector_order(connectors.layout)
    assert order == [
        "skips.0", "skips.1", "skips.2", "upsamplers.1", "skips.3", "skips.4",
        "skips.5", "upsamplers.0", "skips.6", "skips.7", "skips.8", "mid",
    ]  # fmt: skip
    assert connectors.upsamplers[0].attn.to_k.weight.shape == (1280, 640)
    assert connectors.upsamplers[1].attn.to_k.weight.shape == (640, 320)
    assert connectors.skips[8].norm.weight.shape == (2560,)
    assert connectors.skips[0].norm.weight.shape == (640,)
    assert connectors.mid.norm.weight.shape == (1280,)


def test_unknown_keys_are_refused_by_name(sdxl):
    state = _meta_state()
    state["model.control_model.input_blocks.99.0.in_layers.0.weight"] = torch.empty(1, device="meta")
    state["lora_te_text_model.weight"] = torch.empty(1, device="meta")
    with pytest.raises(SourceError, match=r"has 2 weights that SUPIR v0 does not have \(lora_te_text_model.weight, "):
        assemble_supir(state, sdxl[0])


def test_missing_and_misshaped_keys_are_refused_by_official_name(sdxl):
    state = _meta_state()
    del state["model.diffusion_model.project_modules.3.attn.to_v.weight"]
    state["model.diffusion_model.project_modules.11.zero_conv.weight"] = torch.empty(1, 2, 1, 1, device="meta")
    with pytest.raises(SourceError) as err:
        assemble_supir(state, sdxl[0])
    message = str(err.value)
    assert "1 missing (model.diffusion_model.project_modules.3.attn.to_v.weight)" in message
    assert "project_modules.11.zero_conv.weight (1, 2, 1, 1) instead of (1280, 1280, 1, 1)" in message


def test_backbone_weights_are_kept_for_the_caller(sdxl):
    state = _meta_state()
    state["model.diffusion_model.out.2.bias"] = torch.empty(4, device="meta")
    state["first_stage_model.decoder.conv_out.bias"] = torch.empty(3, device="meta")
    assert sorted(assemble_supir(state, sdxl[0], sdxl[1]).backbone) == [
        "first_stage_model.decoder.conv_out.bias",
        "model.diffusion_model.out.2.bias",
    ]


def test_plain_sdxl_file_is_not_a_supir_checkpoint(sdxl):
    with pytest.raises(SourceError, match="holds no SUPIR weights"):
        assemble_supir({"model.diffusion_model.out.2.bias": torch.empty(4)}, sdxl[0])


def test_unreadable_file_is_refused(tmp_path, sdxl):
    bad = tmp_path / "SUPIR-v0Q.ckpt"
    bad.write_bytes(b"<html>not a checkpoint</html>")
    with pytest.raises(SourceError, match="SUPIR-v0Q.ckpt"):
        load_supir(bad, *sdxl)


def test_load_exact_fills_a_meta_module():
    with torch.device("meta"):
        layer = torch.nn.Linear(2, 3)
    load_exact(layer, {"weight": torch.ones(3, 2), "bias": torch.zeros(3)}, "test")
    assert layer.weight.device.type == "cpu" and float(layer.weight.detach().sum()) == 6.0
