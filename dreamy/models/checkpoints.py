"""Reading Train's checkpoints as models: their marker file, hash, LoRA merge and new token embeddings.

Training only writes checkpoints (dreamy.training.checkpoints); loading only reads them (here).
A checkpoint holds the trained parts and names its base model by source and sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import SourceError
from ..layout import CHECKPOINT_FILE
from .hashing import file_sha256

FORMAT = 1
PART_FILES = {"lora_unet": "lora_unet.safetensors", "lora_text_encoder": "lora_text_encoder.safetensors",
              "embeddings": "embeddings.safetensors"}


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(path) / CHECKPOINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"'{path}': {CHECKPOINT_FILE} cannot be read ({e!s:.80}); the checkpoint is corrupt.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SourceError(f"'{path}' is a training checkpoint of a format this version does not read.")
    return meta




def checkpoint_sha256(path: Path, base_sha256: str) -> str:
    """Content hash of a checkpoint as a model: its inference files plus the base it completes."""
    lines = [f"base:{base_sha256}"]
    for f in sorted(Path(path).rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and not rel.startswith("resume/") and f.name != CHECKPOINT_FILE:
            lines.append(f"{rel}:{file_sha256(f)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def merge_lora(module: torch.nn.Module, lora: dict[str, torch.Tensor], scale: float) -> int:
    """Add ``scale * B @ A`` into each adapted Linear's weight (in fp32); returns how many were merged."""
    merged = 0
    for key, a in lora.items():
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[: -len(".lora_A.weight")]
        b = lora[f"{path}.lora_B.weight"]
        weight = module.get_submodule(path).weight
        with torch.no_grad():
            delta = b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)
            weight.copy_((weight.float() + scale * delta).to(weight.dtype))
        merged += 1
    return merged


def add_token_embeddings(tokenizer: Any, text_encoder: Any, tokens: list[str], rows: torch.Tensor) -> None:
    tokenizer.add_tokens(list(tokens), special_tokens=True)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[-len(tokens) :] = rows.to(weight.device, weight.dtype)


def complete(model: Any, path: Path, spec: str, meta: dict[str, Any]) -> Any:
    """Put a training checkpoint's trained parts into its loaded base model (an ``SDModel``) and return it.

    Raises SourceError when ``model`` is not the exact model the checkpoint was trained on (its hash).
    """
    from dataclasses import replace

    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    path = Path(path)
    base = meta["base"]
    if model.ref.sha256 != base["sha256"]:
        raise SourceError(f"The base model of '{spec}' ({base['source']}) has changed since training "
                          f"(hash {model.ref.short_hash}, trained on {base['sha256'][:10]}); this checkpoint "
                          "only completes the exact base it was trained on.")
    parts = set(meta["parts"])
    dtype = model.dtype
    if "unet" in parts:
        model.unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype)
    if "text_encoder" in parts:
        model.text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", dtype=dtype)
    scale = meta.get("lora_alpha", 1.0) / meta.get("lora_rank", 1)
    if "lora_unet" in parts:
        merge_lora(model.unet, load_file(str(path / PART_FILES["lora_unet"])), scale)
    if "lora_text_encoder" in parts:
        merge_lora(model.text_encoder, load_file(str(path / PART_FILES["lora_text_encoder"])), scale)
    if "embeddings" in parts:
        rows = load_file(str(path / PART_FILES["embeddings"]))["clip_l"]
        add_token_embeddings(model.tokenizer, model.text_encoder, meta["tokens"], rows)
    for m in (model.unet, model.text_encoder):
        m.to(model.device).eval().requires_grad_(False)
    ref = replace(model.ref, source=spec, kind="checkpoint", sha256=checkpoint_sha256(path, base["sha256"]),
                  label=f"{meta.get('run', path.parent.parent.name)} step {meta['step']}",
                  checkpoint_step=int(meta["step"]))
    model.ref = ref
    return model
