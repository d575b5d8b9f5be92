"""A tiny SUPIR (toy widths, random weights) around a tiny SDXL-shaped UNet and VAE, for plumbing tests."""

from __future__ import annotations

import copy

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from dreamy.enlarging.conditioning import TextConditioning
from dreamy.enlarging.control import GLVControl
from dreamy.enlarging.model import SupirModules
from dreamy.enlarging.stage1 import DenoiseEncoder
from dreamy.enlarging.unet import SupirUNet


def build_tiny_supir() -> tuple[SupirModules, AutoencoderKL, TextConditioning, TextConditioning, torch.Tensor]:
    """(modules, vae, cond, uncond, a 64x64 image in [-1, 1]); 8x8 latents, deterministic."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        scaling_factor=0.13025,
    ).eval()
    supir = SupirModules(
        control=GLVControl.from_unet(unet).eval(),
        unet=SupirUNet(unet).eval(),
        denoise_encoder=DenoiseEncoder(copy.deepcopy(vae.encoder), vae.quant_conv, 0.13025),
        backbone={},
    )
    cond = TextConditioning(torch.randn(1, 77, 32), torch.randn(1, 64))
    uncond = TextConditioning(torch.randn(1, 77, 32), torch.randn(1, 64))
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    return supir, vae, cond, uncond, image
