"""SUPIR enlargement on diffusers' SDXL, numerically equal to the official implementation.

Modules, one concern each:

- ``connectors``, ``control``, ``unet``: ZeroSFT/ZeroCrossAttn, GLVControl, and the stock SDXL UNet
  run with the connectors hooked in (diffusers' files untouched);
- ``keys``, ``checkpoint``, ``model``: official checkpoint names -> our modules, strict loading;
- ``conditioning``: SDXL text conditioning with SUPIR's fixed 1024x1024 size conditioning;
- ``schedule``, ``sampler``, ``epsilon``: the restoration sampler (RestoreEDMSampler) and the model
  as it sees it;
- ``stage1``: the denoise encoder, the stage-1 latent and its reference image;
- ``colourfix``: wavelet / AdaIN colour correction;
- ``tiled_sampler``, ``tiled_vae``: the memory-bounded variants;
- ``restore``: one restoration from upscaled picture to colour-fixed result.
"""

from __future__ import annotations

from .colourfix import colour_fix
from .conditioning import SUPIR_TIME_IDS, TextConditioning, added_vector, encode_text
from .connectors import Connectors, ZeroCrossAttn, ZeroSFT
from .control import GLVControl
from .epsilon import SupirEpsilon
from .model import SupirModules, assemble_supir, load_supir
from .restore import RestoreSettings, SamplingTiles, restore
from .sampler import SamplerSettings, restore_sample
from .stage1 import DenoiseEncoder, decode_latent, run_stage1
from .tiled_sampler import restore_sample_tiled
from .tiled_vae import VaeTiling, tiled_forward
from .unet import SupirUNet

__all__ = [
    "SUPIR_TIME_IDS",
    "Connectors",
    "DenoiseEncoder",
    "GLVControl",
    "RestoreSettings",
    "SamplerSettings",
    "SamplingTiles",
    "SupirEpsilon",
    "SupirModules",
    "SupirUNet",
    "TextConditioning",
    "VaeTiling",
    "ZeroCrossAttn",
    "ZeroSFT",
    "added_vector",
    "assemble_supir",
    "colour_fix",
    "decode_latent",
    "encode_text",
    "load_supir",
    "restore",
    "restore_sample",
    "restore_sample_tiled",
    "run_stage1",
    "tiled_forward",
]
