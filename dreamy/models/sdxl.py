"""SDXL models for Dream: the components of an SDXL diffusers folder, and what its pipeline config says.

An SDXL model has two text encoders where SD1.5 has one: ``text_encoder`` (CLIP ViT-L,
``CLIPTextModel``) and ``text_encoder_2`` (OpenCLIP bigG, ``CLIPTextModelWithProjection``, whose
pooled and projected output conditions the UNet), each with its tokenizer, a UNet with
``addition_embed_type="text_time"`` (size and crop conditioning) and a VAE whose latents are scaled by
0.13025. ``dreamy.models.sources.load_model`` reads an SDXL folder here (hub ids become folders in the
Hugging Face cache); single files go through dreamy/models/single_file.py with the shipped SDXL
configs. The architecture is told from the files (:func:`folder_arch`, ``single_file.detect_arch``)
and recorded in every recipe.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import SourceError

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def folder_arch(folder: Path, spec: str) -> str:
    """``"sdxl"`` when the folder's UNet has SDXL's ``text_time`` conditioning, else ``"sd15"``.

    Raises SourceError when ``unet/config.json`` is missing or unreadable."""
    config = folder / "unet" / "config.json"
    if not config.is_file():
        raise SourceError(
            f"'{spec}' is a folder but not a diffusers Stable Diffusion model (no unet/config.json); "
            "give a model folder, a .safetensors/.ckpt file, a hub id, or 'tiny'."
        )
    try:
        unet_config = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"'{spec}': unet/config.json cannot be read ({e!s:.80}); the folder is corrupt.") from None
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd15"


def force_zeros_for_empty_prompt(folder: Path | None) -> bool:
    """The pipeline's ``force_zeros_for_empty_prompt`` (model_index.json): whether an empty negative
    prompt is all-zero embeddings rather than the encoded empty text. True when the folder does not
    say (stock ``StableDiffusionXLPipeline``'s default, and what A1111 does for SDXL's empty negative
    prompt); a single file has no model_index.json and gets the default too."""
    if folder is None:
        return True
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return True
    value = index.get("force_zeros_for_empty_prompt", True)
    return bool(value) if isinstance(value, bool) else True


def load_folder(folder: Path, spec: str, dtype: torch.dtype) -> dict[str, Any]:
    """unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2 of an SDXL diffusers folder, on the
    CPU in ``dtype`` (the tokenizers CPU-side). Raises SourceError (one sentence) for a missing or
    unloadable part."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    missing = [p + "/" for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise SourceError(f"'{spec}' has no {', '.join(missing)} folder; it is not a complete SDXL diffusers model.")
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype),
        "vae": lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
        "text_encoder_2": lambda: CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2",
                                                                               dtype=dtype),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        "tokenizer_2": lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"),
    }
    parts = {}
    for name, load in loaders.items():
        try:
            parts[name] = load()
        except Exception as e:  # noqa: BLE001 - library errors vary; the user needs one sentence
            reason = str(e).replace(str(folder), "").strip().splitlines()[0][:100] if str(e).strip() else ""
            raise SourceError(f"Could not load the {name} of '{spec}' ({type(e).__name__}: {reason}); the folder is "
                              "incomplete or corrupt: re-download or re-export it.") from None
    return parts
