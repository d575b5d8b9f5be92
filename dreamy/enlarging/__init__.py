"""Enlarge: restore and upscale one picture with SUPIR (``enlarge()``), a preset's recipe in and a PNG
that carries it out, on diffusers' SDXL and numerically equal to the official implementation.

Modules, one concern each:

- ``connectors``, ``control``, ``unet``: ZeroSFT/ZeroCrossAttn, GLVControl, and the stock SDXL UNet
  run with the connectors hooked in (diffusers' files untouched);
- ``keys``, ``checkpoint``, ``model``: official checkpoint names -> our modules, strict loading;
- ``conditioning``: SDXL text conditioning with SUPIR's fixed 1024x1024 size conditioning;
- ``schedule``, ``sampler``, ``epsilon``: the restoration sampler (RestoreEDMSampler) and the model
  as it sees it;
- ``stage1``: the denoise encoder, the stage-1 latent and its reference image;
- ``colourfix``: wavelet / AdaIN colour correction;
- ``tiled_sampler``, ``tiled_vae``: the memory-bounded variants; ``gpu``: when to use them, and the
  attention kernel;
- ``restore``: one restoration from upscaled picture to colour-fixed result;
- ``resize``, ``sources``, ``backbone``, ``models``, ``tiny``: the input as SUPIR's demo prepares it,
  where the weights come from, and the offline demo model;
- ``pipeline``: ``enlarge()``, the whole job with locks, progress, cancel and the PNG recipe
  (``python -m dreamy enlarge`` is dreamy/cli/enlarge.py);
- ``batch``: ``enlarge_many()`` / ``enlarge_iter()``, many pictures and folders with the models loaded
  once, skipping those already enlarged with the same recipe; ``plan``: output sizes before a run.

Names are imported on first use, so ``python -m dreamy --help`` does not load torch and diffusers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_NAMES = {
    "colour_fix": "colourfix",
    "SUPIR_TIME_IDS": "conditioning",
    "TextConditioning": "conditioning",
    "added_vector": "conditioning",
    "encode_text": "conditioning",
    "Connectors": "connectors",
    "ZeroCrossAttn": "connectors",
    "ZeroSFT": "connectors",
    "GLVControl": "control",
    "SupirEpsilon": "epsilon",
    "SupirModules": "model",
    "assemble_supir": "model",
    "load_supir": "model",
    "RestoreSettings": "restore",
    "SamplingTiles": "restore",
    "restore": "restore",
    "SamplerSettings": "sampler",
    "restore_sample": "sampler",
    "DenoiseEncoder": "stage1",
    "decode_latent": "stage1",
    "run_stage1": "stage1",
    "restore_sample_tiled": "tiled_sampler",
    "VaeTiling": "tiled_vae",
    "tiled_forward": "tiled_vae",
    "SupirUNet": "unet",
    "EnlargeModels": "models",
    "load_enlarge_models": "models",
    "EnlargeResult": "pipeline",
    "enlarge": "pipeline",
    "output_name": "pipeline",
    "PictureOutcome": "batch",
    "collect_pictures": "batch",
    "enlarge_iter": "batch",
    "enlarge_many": "batch",
    "SizePlan": "plan",
    "planned_sizes": "plan",
}
__all__ = sorted(_NAMES)


class _Package(types.ModuleType):
    """Keeps ``restore`` the function, as the eager imports did, when its submodule loads and binds its name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _NAMES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'dreamy.enlarging' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
