"""An SDXL run's exports: the LoRA in kohya's and diffusers' layouts, the clip_l/clip_g embeddings file.

- ``<run>_lora.safetensors``: kohya's SDXL layout (``lora_unet_input_blocks_…``, ``lora_te1_text_model_…``,
  ``lora_te2_text_model_…``; ``.lora_down`` / ``.lora_up`` / ``.alpha``, fp16), what A1111/Forge, ComfyUI
  and kohya sd-scripts read (dreamy/models/sdxl_kohya.py names the modules);
- ``pytorch_lora_weights.safetensors``: diffusers' layout (``unet.<module>.lora_A.weight`` / ``lora_B``,
  ``text_encoder.text_model.…``, ``text_encoder_2.text_model.…``), alpha / rank baked into ``lora_B`` as
  diffusers assumes alpha == rank for a file that names none: what
  ``StableDiffusionXLPipeline.load_lora_weights`` reads (and its kohya converter gives the same keys);
- ``<run>_emb.safetensors`` (pivotal): ``{"clip_l": [n, 768], "clip_g": [n, 1280]}``, the file diffusers'
  advanced Dreambooth script writes and A1111/Forge and ComfyUI read for SDXL; diffusers loads it with
  ``load_textual_inversion(state_dict["clip_l"], token=…, text_encoder=pipe.text_encoder,
  tokenizer=pipe.tokenizer)`` and again with ``clip_g`` for ``text_encoder_2`` / ``tokenizer_2``.

No diffusers folder nor single file: an SDXL style ships as adapters over its base (as the advanced
script's output does); Dream applies them with ``--lora`` / ``--embedding``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import output_error
from ..errors import ExportError
from ..models import safetensors_file
from ..models.checkpoints import PART_FILES
from ..models.sdxl_kohya import kohya_state_dict
from .export_folder import text_encoder_key

SDXL_FORMATS = ("lora", "card")


def _unet_layout(base: dict[str, Any]) -> Any:
    """The base's UNet built on the meta device (no weights): only its module names are needed."""
    from diffusers import UNet2DConditionModel

    from ..models.single_file import CONFIGS
    from ..models.sources import _hub_snapshot, classify
    from ..models.tiny import ensure_tiny

    kind, path = classify(str(base["source"]))
    if kind == "tiny":
        folder = ensure_tiny(str(base["source"])) / "unet"
    elif kind == "hub":
        folder = _hub_snapshot(str(base["source"])) / "unet"
    elif kind == "folder":
        folder = path / "unet"
    else:
        folder = CONFIGS / "sdxl" / "unet"
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def sdxl_lora_files(step: Path, meta: dict[str, Any], out: Path, name: str, emb_name: str) -> dict[str, Path]:
    """The kohya and diffusers LoRA files and (pivotal) the embeddings file ``<emb_name>.safetensors`` of an SDXL
    checkpoint ``step``."""
    from safetensors.torch import load_file

    parts = {p: load_file(str(step / f)) for p, f in PART_FILES.items() if p in meta["parts"]}
    if "lora_unet" not in parts:
        raise ExportError(f"Checkpoint {step.name} holds no LoRA to export.")
    rank, alpha = meta["lora_rank"], float(meta["lora_alpha"])
    kohya = kohya_state_dict(alpha=alpha, unet=_unet_layout(meta["base"]), unet_lora=parts["lora_unet"],
                             text_encoder_lora=parts.get("lora_text_encoder"),
                             text_encoder_2_lora=parts.get("lora_text_encoder_2"), dtype=torch.float16)
    diffusers_sd = {}
    for part, prefix in (("lora_unet", "unet"), ("lora_text_encoder", "text_encoder"),
                         ("lora_text_encoder_2", "text_encoder_2")):
        for key, a in parts.get(part, {}).items():
            if not key.endswith(".lora_A.weight"):
                continue
            path = key[: -len(".lora_A.weight")]
            b = parts[part][f"{path}.lora_B.weight"]
            path = path if prefix == "unet" else text_encoder_key(path)
            diffusers_sd[f"{prefix}.{path}.lora_A.weight"] = a
            diffusers_sd[f"{prefix}.{path}.lora_B.weight"] = (b.float() * (alpha / rank)).to(b.dtype)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    files = {"lora_diffusers": out / "pytorch_lora_weights.safetensors", "lora_kohya": out / f"{name}_lora.safetensors"}
    safetensors_file.write(files["lora_diffusers"], diffusers_sd, {"format": "pt"})
    safetensors_file.write(files["lora_kohya"], kohya, {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                                                         "ss_base_model_version": "sdxl_base_v1-0"})
    files.update(sdxl_embedding_file(step, meta, out, emb_name))
    return files


def sdxl_embedding_file(step: Path, meta: dict[str, Any], out: Path, emb_name: str) -> dict[str, Path]:
    """A pivotal SDXL run's new token embeddings as ``<emb_name>.safetensors`` (``<run>_emb``, exports.embedding_name):
    {"clip_l", "clip_g"}, rows in the order of the tokens (``<s0>``, ``<s1>``...); {} for a run without new tokens."""
    if "embeddings" not in meta.get("parts", []):
        return {}
    from safetensors.torch import load_file

    emb = load_file(str(step / PART_FILES["embeddings"]))
    path = out / f"{emb_name}.safetensors"
    safetensors_file.write(path, {"clip_l": emb["clip_l"], "clip_g": emb["clip_g"]}, {"format": "pt"})
    return {"embeddings": path}
