"""On a CUDA GPU: the reduced model against the oracle in fp32 and fp16, and a tiny run in SUPIR's dtypes."""

from __future__ import annotations

import copy

import pytest
import torch

from dreamy.enlarging.conditioning import TextConditioning
from dreamy.enlarging.restore import RestoreSettings, SamplingTiles, restore
from dreamy.enlarging.sampler import SamplerSettings
from dreamy.enlarging.tiled_vae import VaeTiling

from .tiny_supir import build_tiny_supir

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b).norm() / b.norm())


@pytest.fixture(scope="module")
def cuda_supir(reduced_supir):
    control, unet = reduced_supir.control.to("cuda"), reduced_supir.unet.to("cuda")
    yield control, unet
    reduced_supir.control.to("cpu")
    reduced_supir.unet.to("cpu")


def _eps(control, unet, oracle):
    o = {k: v.cuda() for k, v in oracle.items() if k.startswith("input.")}
    with torch.no_grad():
        features = control(o["input.hint"], o["input.sample"], o["input.timestep"], o["input.context"], o["input.vector"])
        return unet(o["input.sample"], o["input.timestep"], o["input.context"], o["input.vector"], features, 0.9)


def test_reduced_model_on_gpu_matches_official(cuda_supir, module_oracle):
    control, unet = cuda_supir
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        fp32 = _eps(control, unet, module_oracle)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    # fp16 copies: the shared fp32 model must come back unrounded for the CPU parity tests.
    half = _eps(copy.deepcopy(control).half(), copy.deepcopy(unet).half(), module_oracle)
    errors = _rel(fp32, module_oracle["eps"]), _rel(half, module_oracle["eps"])
    print(f"reduced model on {torch.cuda.get_device_name()}: fp32 {errors[0]:.1e}, fp16 {errors[1]:.1e}")
    assert torch.isfinite(half).all()
    assert errors[0] < 1e-4 and errors[1] < 2e-2


def test_tiny_restore_in_supir_dtypes_is_seeded():
    """fp16 control and UNet, bf16 VAE and denoise encoder, CUDA generator: runs, and replays by seed."""
    supir, vae, cond, uncond, image = build_tiny_supir()
    supir.control.to("cuda", torch.float16)
    supir.unet.to("cuda", torch.float16)
    vae.to("cuda", torch.bfloat16)
    supir.denoise_encoder.to("cuda", torch.bfloat16)
    cond = TextConditioning(cond.context.cuda(), cond.vector.cuda())
    uncond = TextConditioning(uncond.context.cuda(), uncond.vector.cuda())
    for settings in (
        RestoreSettings(sampler=SamplerSettings(steps=3, restoration_scale=2.0)),
        RestoreSettings(
            sampler=SamplerSettings(steps=3),
            sampling_tiles=SamplingTiles(size=4, stride=4),
            vae_tiles=VaeTiling(encoder_tile=16, decoder_tile=4, storage="cpu"),
        ),
    ):
        runs = [
            restore(image.cuda(), supir, vae, cond, uncond, settings, torch.Generator("cuda").manual_seed(5))
            for _ in range(2)
        ]
        assert runs[0].dtype == torch.float32 and torch.isfinite(runs[0]).all()
        assert torch.equal(runs[0], runs[1])
