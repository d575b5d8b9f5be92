"""Training checkpoints: compact, atomic, prunable, resumable, and loadable as a model for Dream.

Layout of ``models/<run>/checkpoints/step-XXXX/``::

    dreamy-checkpoint.json        step, mode, the base model (source + sha256), tokens, recipe
    unet/, text_encoder/          full fine-tune: the trained components, fp16 safetensors + config
    lora_unet.safetensors         LoRA / pivotal: adapter weights (fp16), keys "<module>.lora_A.weight"
    lora_text_encoder.safetensors LoRA with a text-encoder adapter
    embeddings.safetensors        pivotal: the new token embeddings, {"clip_l": [n, dim]} (fp16)
    resume/masters.safetensors    fp32 master copy of every trained tensor (bit-exact resume)
    resume/state.pt               optimizer, grad scaler, RNG states, step

The frozen parts (VAE, tokenizer, an untrained text encoder, a LoRA's base) are not copied: the
checkpoint names its base model once, with its hash, and loading checks that hash. A checkpoint is
written into a hidden temporary folder and renamed into place, so it is complete or absent; older
ones are pruned only after the new one is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import output_error
from ..errors import SourceError
from ..sources import TRAIN_CHECKPOINT_FILE as CHECKPOINT_FILE
from .modes import Trainables

FORMAT = 1
_STEP_DIR = re.compile(r"step-(\d+)")
_PART_FILES = {"lora_unet": "lora_unet.safetensors", "lora_text_encoder": "lora_text_encoder.safetensors",
               "embeddings": "embeddings.safetensors"}


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:04d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.fullmatch(d.name)
            if m and (d / CHECKPOINT_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def has_resume_state(path: Path) -> bool:
    return (path / "resume" / "state.pt").is_file() and (path / "resume" / "masters.safetensors").is_file()


def latest_resumable(run_dir: Path) -> Path | None:
    for _, path in reversed(list_checkpoints(run_dir)):
        if has_resume_state(path):
            return path
    return None


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(path) / CHECKPOINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"'{path}': {CHECKPOINT_FILE} cannot be read ({e!s:.80}); the checkpoint is corrupt.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SourceError(f"'{path}' is a training checkpoint of a format this version does not read.")
    return meta


# -------------------------------------------------------------------------------------------- saving


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> None:
    from safetensors.torch import save_file

    def prep(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return (t.to(dtype) if dtype is not None and t.is_floating_point() else t).cpu().contiguous()

    save_file({k: prep(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    trainables: Trainables,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: Any,
) -> Path:
    """Write checkpoint ``step`` atomically: the inference parts in fp16 plus the full resume state."""
    final = step_dir(run_dir, step)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    except OSError as e:
        raise output_error(final, e) from None
    try:
        parts = trainables.checkpoint_parts()
        for name, tensors in parts.items():
            if name == "unet":
                (tmp / "unet").mkdir()
                trainables.unet.save_config(tmp / "unet")
                _save_tensors(tensors, tmp / "unet" / "diffusion_pytorch_model.safetensors", torch.float16)
            elif name == "text_encoder":
                (tmp / "text_encoder").mkdir()
                trainables.text_encoder.config.save_pretrained(tmp / "text_encoder")
                _save_tensors(tensors, tmp / "text_encoder" / "model.safetensors", torch.float16)
            else:
                _save_tensors(tensors, tmp / _PART_FILES[name], torch.float16)
        (tmp / "resume").mkdir()
        _save_tensors(dict(trainables.params), tmp / "resume" / "masters.safetensors", torch.float32)
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": _rng_states(),
        }
        torch.save(state, tmp / "resume" / "state.pt")
        meta = {**meta, "format": FORMAT, "step": step, "parts": sorted(parts), "tokens": trainables.tokens}
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        os.chmod(tmp, 0o755)
        replace_dir(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # disk full, read-only: say so; the previous checkpoints are untouched
            raise output_error(final, e) from None
        raise
    return final


def replace_dir(src: Path, dst: Path) -> Path:
    """Put the complete folder ``src`` at ``dst``; an existing ``dst`` is swapped out, then removed."""
    if dst.exists():  # re-saving a step (after a resume) or re-exporting: swap, then remove the old copy
        trash = dst.with_name(f".trash-{dst.name}-{os.getpid()}")
        os.rename(dst, trash)
        os.rename(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(src, dst)
    return dst


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the hidden temporary and trash folders that a killed run left among its checkpoints.

    Only called before a run (re)starts, when no writer can be busy with them.
    """
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    stale = [*root.glob(".tmp-*"), *root.glob(".trash-*"), *root.glob("step-*/.trash-*")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _remove(path: Path) -> None:
    """Rename first, so a half-deleted folder never looks like a checkpoint (or a resume state)."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(run_dir: Path, total_limit: int, keep_resume_state: str) -> list[Path]:
    """Drop the oldest checkpoints beyond ``total_limit`` (0 keeps all) and stale resume states."""
    ckpts = list_checkpoints(run_dir)
    removed = []
    if total_limit > 0 and len(ckpts) > total_limit:
        for _, path in ckpts[: len(ckpts) - total_limit]:
            _remove(path)
            removed.append(path)
        ckpts = ckpts[len(ckpts) - total_limit :]
    if keep_resume_state == "last":
        for _, path in ckpts[:-1]:
            if (path / "resume").is_dir():
                _remove(path / "resume")
    return removed


def read_resume(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    masters = load_file(str(path / "resume" / "masters.safetensors"))
    state = torch.load(path / "resume" / "state.pt", map_location="cpu", weights_only=True)
    return masters, state


# ------------------------------------------------------------------------------------------- loading


def checkpoint_sha256(path: Path, base_sha256: str) -> str:
    """Content hash of a checkpoint as a model: its inference files plus the base it completes."""
    from ..sources import file_sha256

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


def load_checkpoint_model(path: Path, spec: str, device: Any = None, precision: str = "fp16") -> Any:
    """A training checkpoint as an ``SDModel``: its base, loaded and hash-checked, with the trained parts in."""
    from dataclasses import replace

    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from ..sources import load_model

    path = Path(path)
    meta = read_meta(path)
    base = meta["base"]
    model = load_model(base["source"], device=device, precision=precision)
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
        merge_lora(model.unet, load_file(str(path / _PART_FILES["lora_unet"])), scale)
    if "lora_text_encoder" in parts:
        merge_lora(model.text_encoder, load_file(str(path / _PART_FILES["lora_text_encoder"])), scale)
    if "embeddings" in parts:
        rows = load_file(str(path / _PART_FILES["embeddings"]))["clip_l"]
        add_token_embeddings(model.tokenizer, model.text_encoder, meta["tokens"], rows)
    for m in (model.unet, model.text_encoder):
        m.to(model.device).eval().requires_grad_(False)
    ref = replace(model.ref, source=spec, kind="checkpoint", sha256=checkpoint_sha256(path, base["sha256"]),
                  label=f"{meta.get('run', path.parent.parent.name)} step {meta['step']}",
                  checkpoint_step=int(meta["step"]))
    model.ref = ref
    return model
