"""Shared fixtures: the reduced-depth SUPIR model rebuilt from the oracle's synthetic weights."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from safetensors.torch import load_file

from dreamy.enlarging.control import GLVControl
from dreamy.enlarging.model import assemble_supir
from dreamy.enlarging.unet import SupirUNet

from .supir_synthetic import FIXTURES, load_manifest, synthetic_state_dict

# The oracle's reduced config: SDXL widths (hard-coded in SUPIR), depth 1, context 64, adm 96.
REDUCED_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=1,
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=64,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=96,
)
SYNTHETIC_SEED = 7


@dataclass
class ReducedSupir:
    control: GLVControl
    unet: SupirUNet


@pytest.fixture(scope="session")
def reduced_supir() -> ReducedSupir:
    """~900 M parameters in fp32 (3.6 GB): built once per session, on the meta device then assigned."""
    torch.manual_seed(0)
    state = synthetic_state_dict(load_manifest("reduced_manifest.json"), SYNTHETIC_SEED)
    with torch.device("meta"):
        base = UNet2DConditionModel(**REDUCED_UNET)
    base_state = convert_ldm_unet_checkpoint(state, dict(base.config))
    base.load_state_dict(base_state, strict=True, assign=True)
    del base_state
    supir = assemble_supir(state, base)
    del state
    supir.backbone.clear()  # the base UNet's weights, loaded above
    return ReducedSupir(supir.control.eval(), supir.unet.eval())


@pytest.fixture(scope="session")
def module_oracle() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "modules.safetensors"))
