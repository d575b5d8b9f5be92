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
from .a1111_hash import RECORD_FILE
from .hashing import file_sha256

FORMAT = 1
PART_FILES = {"lora_unet": "lora_unet.safetensors", "lora_text_encoder": "lora_text_encoder.safetensors",
              "lora_text_encoder_2": "lora_text_encoder_2.safetensors",  # SDXL's second text encoder
              "embeddings": "embeddings.safetensors"}


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(path) / CHECKPOINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"Checkpoint '{path}' is damaged ({CHECKPOINT_FILE} cannot be read: {e!s:.80}); load "
                          "another checkpoint of the run, or resume the run from an earlier one.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SourceError(f"'{path}' is a training checkpoint of a format this version does not read.")
    if "marker_sha256" in meta and marker_sha256(meta) != meta["marker_sha256"]:
        raise SourceError(f"Checkpoint '{path}' is damaged ({CHECKPOINT_FILE} does not hold what was written); "
                          "load another checkpoint of the run, or resume the run from an earlier one.")
    return meta


def marker_sha256(meta: dict[str, Any]) -> str:
    """The marker's own checksum: sha256 of its canonical JSON without the ``marker_sha256`` field."""
    rest = {k: v for k, v in meta.items() if k != "marker_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file of a checkpoint folder but its marker: relative path -> {"size", "sha256"}."""
    folder = Path(folder)
    return {f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": _sha256(f)}
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != CHECKPOINT_FILE}


def _legacy_damage(path: Path, files: list[str]) -> str | None:
    """A checkpoint written before files were recorded: only whether each file opens."""
    import zipfile

    from safetensors import safe_open

    for rel in files:
        f = path / rel
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as st:
                    st.keys()
            elif f.suffix == ".pt" and not zipfile.is_zipfile(f):
                return f"{rel} is not a readable torch file"
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            return f"{rel} cannot be read ({str(e).splitlines()[0][:60]})"
    return None


def damage(path: Path, resume: bool = True, meta: dict[str, Any] | None = None,
           cached: bool = False) -> str | None:
    """Why checkpoint ``path`` is damaged (a phrase, e.g. "resume/state.pt is empty"), or None if intact.

    Each file is checked against the size and sha256 its marker recorded when it was written;
    ``resume=False`` checks only what Dream loads (not ``resume/``); ``cached`` lets the hashes come
    from the (path, size, mtime) cache, for loads where a re-read would only cost time.
    """
    path = Path(path)
    if meta is None:
        try:
            meta = read_meta(path)
        except SourceError:
            if not (path / CHECKPOINT_FILE).is_file():
                return f"{CHECKPOINT_FILE} is missing"
            return f"{CHECKPOINT_FILE} cannot be read or does not hold what was written"
    files = meta.get("files")
    if not isinstance(files, dict):  # written before checkpoints recorded their files
        wanted = [f.relative_to(path).as_posix() for f in sorted(path.rglob("*"))
                  if f.is_file() and f.name != CHECKPOINT_FILE]
        needed = ["resume/masters.safetensors", "resume/state.pt"] if resume else []
        missing = [r for r in needed if r not in wanted]
        if missing:
            return f"{missing[0]} is missing"
        return _legacy_damage(path, [r for r in wanted if resume or not r.startswith("resume/")])
    for rel, rec in sorted(files.items()):
        if not resume and rel.startswith("resume/"):
            continue
        f = path / rel
        try:
            size = f.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != rec.get("size"):
            return f"{rel} is empty" if size == 0 else f"{rel} has {size} bytes, {rec.get('size')} were written"
        if (file_sha256(f) if cached else _sha256(f)) != rec.get("sha256"):
            return f"{rel} does not hold the bytes that were written (its sha256 differs)"
    return None


def checkpoint_sha256(path: Path, base_sha256: str) -> str:
    """Content hash of a checkpoint as a model: its inference files plus the base it completes (not its
    marker, nor the model_hash.json record of its A1111 hash that loading adds)."""
    lines = [f"base:{base_sha256}"]
    for f in sorted(Path(path).rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and not rel.startswith("resume/") and f.name not in (CHECKPOINT_FILE, RECORD_FILE):
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
    hurt = damage(path, resume=False, meta=meta, cached=True)
    if hurt is not None:
        raise SourceError(f"Checkpoint '{spec}' is damaged ({hurt}); load another checkpoint of the run, or "
                          "resume the run from an earlier one to write it again.")
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
    if "lora_text_encoder_2" in parts:
        merge_lora(model.text_encoder_2, load_file(str(path / PART_FILES["lora_text_encoder_2"])), scale)
    if "embeddings" in parts:  # clip_l for the first text encoder; an SDXL run's clip_g for the second
        rows = load_file(str(path / PART_FILES["embeddings"]))
        add_token_embeddings(model.tokenizer, model.text_encoder, meta["tokens"], rows["clip_l"])
        if "clip_g" in rows:
            add_token_embeddings(model.tokenizer_2, model.text_encoder_2, meta["tokens"], rows["clip_g"])
    for m in (model.unet, *model.text_encoders):
        m.to(model.device).eval().requires_grad_(False)
    ref = replace(model.ref, source=spec, kind="checkpoint", sha256=checkpoint_sha256(path, base["sha256"]),
                  label=f"{meta.get('run', path.parent.parent.name)} step {meta['step']}",
                  checkpoint_step=int(meta["step"]))
    model.ref = ref
    return model
