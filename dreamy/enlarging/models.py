"""Enlarge's loaded models: SUPIR around an SDXL base, on one device, in SUPIR's dtypes.

Dtypes follow SUPIR's demo: the diffusion parts (UNet, GLVControl, connectors) in fp16, the VAE and
the denoise encoder in bf16 (fp16 overflows there), the text encoders in fp32 run under bf16
autocast. On the CPU everything is fp32. The text encoders only run when the prompts change, so they
wait on the CPU and visit the GPU for that, which keeps them out of the peak memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SourceError
from ..events import ProgressCallback
from ..models.devices import pick_device, pick_dtype
from ..recipes.recipe import ModelRef
from . import tiny
from .backbone import apply_backbone
from .conditioning import TextConditioning, encode_text
from .model import SupirModules, load_supir
from .restore import SamplingTiles
from .sources import Located, load_base, locate_pair, supir_variant
from .tiled_vae import VaeTiling

log = logging.getLogger(__name__)


@dataclass
class EnlargeModels:
    supir: SupirModules
    vae: Any  # AutoencoderKL
    tokenizers: tuple[Any, Any]
    text_encoders: tuple[Any, Any]
    supir_ref: ModelRef
    base_ref: ModelRef
    device: torch.device
    dtype: torch.dtype  # diffusion
    vae_dtype: torch.dtype
    min_side: int = 1024  # SUPIR's minimum output short side
    sampling_tiles: SamplingTiles = field(default_factory=lambda: SamplingTiles(per_batch=3))  # 9 tiles: 3 forwards
    vae_tiles: VaeTiling = field(default_factory=VaeTiling)
    stands_in: bool = False  # the demo, loaded because the recipe's models are not on this machine
    _prompts: dict = field(default_factory=dict, repr=False)

    @property
    def is_demo(self) -> bool:
        return self.supir_ref.kind == "tiny"

    @torch.no_grad()
    def conditioning(self, positive: str, negative: str) -> tuple[TextConditioning, TextConditioning]:
        """(cond, uncond) for the prompts, each encoded on its own as SUPIR does; the last pair is kept."""
        key = (positive, negative)
        if key not in self._prompts:
            self._prompts.clear()
            self._prompts[key] = self._encode([positive]), self._encode([negative])
        return self._prompts[key]

    def _encode(self, prompts: list[str]) -> TextConditioning:
        cuda = self.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and self.dtype != torch.float32)
        for encoder in self.text_encoders:
            encoder.to(self.device)
        try:
            with autocast:
                return encode_text(prompts, self.tokenizers, self.text_encoders, self.supir.unet.unet.add_time_proj)
        finally:
            if self.device.type != "cpu":
                for encoder in self.text_encoders:
                    encoder.to("cpu")


def dtypes(precision: str, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(diffusion dtype, VAE dtype): SUPIR's fp16 / bf16 on CUDA, fp32 on the CPU."""
    dtype = pick_dtype(precision, device)
    if dtype == torch.float32 or device.type != "cuda":
        return dtype, torch.float32
    return dtype, torch.bfloat16


def load_enlarge_models(
    supir: str | None = None,
    base: str | None = None,
    *,
    supir_model: str = "SUPIR-v0Q",
    sdxl_base: str = "Juggernaut XL v9",
    device: str | torch.device | None = None,
    precision: str = "fp16",
    on_progress: ProgressCallback | None = None,
) -> EnlargeModels:
    """Load SUPIR (``supir``) around an SDXL base (``base``); None means the recipe's own models,
    downloaded on first use (``on_progress`` follows it; sources.locate_pair).

    ``supir_model`` / ``sdxl_base`` are the recipe's choices: they pick the defaults, and a SUPIR file
    whose name says it is the other variant (v0Q vs v0F) is refused.
    """
    supir_at, base_at, fell_back = locate_pair(supir, base, supir_model, sdxl_base, on_progress)  # warns if demo
    variant = supir_variant(supir_at)
    if variant is not None and variant != supir_model:
        raise SourceError(f"'{supir_at.spec}' is a {variant} checkpoint but the recipe asks for {supir_model}; "
                          f"give a {supir_model} file, or unlock supir_model and set it to {variant}.")
    if (supir_at.kind == "tiny") != (base_at.kind == "tiny"):
        raise SourceError("The tiny demo SUPIR only fits the tiny demo base and the other way round; give "
                          "'tiny' for both, or real weights for both.")
    device = device if isinstance(device, torch.device) else pick_device(device)
    dtype, vae_dtype = dtypes(precision, device)
    models = _assemble(supir_at, base_at, device, dtype, vae_dtype)
    models.stands_in = fell_back
    return models


def _assemble(supir_at: Located, base_at: Located, device: torch.device, dtype: torch.dtype,
              vae_dtype: torch.dtype) -> EnlargeModels:
    parts = load_base(base_at, dtype)
    vae = parts["vae"] if parts["vae"].dtype == vae_dtype else parts["vae"].to(vae_dtype)
    texts = (parts["text_encoder"].float(), parts["text_encoder_2"].float())
    modules = load_supir(supir_at.path, parts["unet"], vae, dtype)
    if modules.backbone:
        count = apply_backbone(modules.backbone, parts["unet"], vae, *texts, name=supir_at.path.name)
        log.info("%s carries %d SDXL weights; they replace the base model's, as in SUPIR.", supir_at.path.name, count)
        modules.backbone.clear()
    for module in (modules.control, modules.unet, vae, modules.denoise_encoder):
        module.to(device).eval().requires_grad_(False)
    for module in texts:
        module.eval().requires_grad_(False)
    demo = supir_at.kind == "tiny"
    extra: dict[str, Any] = {}
    if demo:
        extra = dict(min_side=tiny.MIN_SIDE,
                     sampling_tiles=SamplingTiles(tiny.SAMPLING_TILE, tiny.SAMPLING_STRIDE, per_batch=9),
                     vae_tiles=VaeTiling(tiny.VAE_ENCODER_TILE, tiny.VAE_DECODER_TILE))
    return EnlargeModels(
        supir=modules, vae=vae, tokenizers=(parts["tokenizer"], parts["tokenizer_2"]), text_encoders=texts,
        supir_ref=supir_at.ref(), base_ref=base_at.ref(), device=device, dtype=dtype, vae_dtype=vae_dtype, **extra,
    )


_loaded: dict[tuple, EnlargeModels] = {}


def cached_enlarge_models(
    supir: str | None = None,
    base: str | None = None,
    *,
    supir_model: str = "SUPIR-v0Q",
    sdxl_base: str = "Juggernaut XL v9",
    device: str | None = None,
    precision: str = "fp16",
    on_progress: ProgressCallback | None = None,
) -> EnlargeModels:
    """Keep one pair loaded between jobs (the studio's case: loading SUPIR + SDXL takes a while)."""
    key = (supir, base, supir_model, sdxl_base, str(pick_device(device)), precision)
    if key not in _loaded or _loaded[key].stands_in:  # a demo that stood in: try the real ones again
        _loaded.clear()  # free the previous pair before loading the next
        _loaded[key] = load_enlarge_models(supir, base, supir_model=supir_model, sdxl_base=sdxl_base,
                                           device=device, precision=precision, on_progress=on_progress)
    return _loaded[key]
