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
ones are pruned only after the new one is in place. The marker records each file's size and sha256,
so damage found later (resume, load) is named; resume then falls back to the newest intact checkpoint,
which is why the two newest keep their resume states.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import output_error, set_file_mode, temp_dir
from ..errors import TrainError
from ..layout import CHECKPOINT_FILE, step_dir, step_of
from ..layout import checkpoints as list_checkpoints
from ..models.checkpoints import FORMAT, PART_FILES, damage, manifest, marker_sha256
from .modes import Trainables


def has_resume_state(path: Path) -> bool:
    return (path / "resume" / "state.pt").is_file() and (path / "resume" / "masters.safetensors").is_file()


def latest_resumable(run_dir: Path) -> Path | None:
    for _, path in reversed(list_checkpoints(run_dir)):
        if has_resume_state(path):
            return path
    return None


def newest_intact(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose resume state and files are intact (sizes and sha256 as written),
    and the (folder, why) of each newer ``step-*`` folder passed over: damaged, or without a marker
    or a resume state. Older checkpoints without a resume state (pruned) are not listed."""
    listed = dict((p, step) for step, p in list_checkpoints(run_dir))
    folders = dict(listed)
    root = Path(run_dir) / "checkpoints"
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d not in folders and step_of(d) is not None:
                folders[d] = step_of(d)
    skipped: list[tuple[Path, str]] = []
    for path in sorted(folders, key=lambda p: folders[p], reverse=True):
        if path not in listed:
            skipped.append((path, f"{CHECKPOINT_FILE} is missing"))
            continue
        if not has_resume_state(path):
            if path == max(listed, key=listed.get):
                skipped.append((path, "its resume state is missing"))
            continue  # an older checkpoint whose resume state was pruned
        why = damage(path, resume=True)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


def set_aside(path: Path) -> Path | None:
    """Move a damaged checkpoint out of the run's checkpoints (kept as ``damaged-step-XXXX``), so that
    resuming rewrites its step; None if it could not be moved (another process did, or it is gone)."""
    target = path.with_name(f"damaged-{path.name}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"damaged-{path.name}-{n}")
    try:
        os.rename(path, target)
    except OSError:
        return None
    return target


# -------------------------------------------------------------------------------------------- saving


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> None:
    from safetensors.torch import save_file

    def prep(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return (t.to(dtype) if dtype is not None and t.is_floating_point() else t).cpu().contiguous()

    save_file({k: prep(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    set_file_mode(path)


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
    """Write checkpoint ``step`` atomically: the inference parts in fp16 plus the full resume state.

    The marker records every file's size and sha256 (read back from disk), so a checkpoint damaged
    later is recognised on resume and on load. Non-finite trained weights are refused (TrainError):
    a diverged run never overwrites or adds a checkpoint.
    """
    bad = [k for k, t in trainables.params.items() if not bool(torch.isfinite(t.detach()).all())]
    if bad:
        raise TrainError(f"The trained weights became NaN or infinite by step {step} ({bad[0]}); the run diverged "
                         "and this step was not saved: lower the learning rate or resume from an earlier checkpoint.")
    final = step_dir(run_dir, step)
    try:
        tmp = temp_dir(final, prefix=f".tmp-{final.name}-")
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
                _save_tensors(tensors, tmp / PART_FILES[name], torch.float16)
        (tmp / "resume").mkdir()
        _save_tensors(dict(trainables.params), tmp / "resume" / "masters.safetensors", torch.float32)
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": _rng_states(),
        }
        torch.save(state, tmp / "resume" / "state.pt")
        meta = {**meta, "format": FORMAT, "step": step, "parts": sorted(parts), "tokens": trainables.tokens,
                "files": manifest(tmp)}
        meta["marker_sha256"] = marker_sha256(meta)
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
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
    """Drop the oldest checkpoints beyond ``total_limit`` (0 keeps all) and stale resume states.

    ``keep_resume_state="last"`` keeps the resume states of the two newest checkpoints: should the
    newest be damaged later (a full disk, a copy cut short), the run still resumes from the one before.
    """
    ckpts = list_checkpoints(run_dir)
    removed = []
    if total_limit > 0 and len(ckpts) > total_limit:
        for _, path in ckpts[: len(ckpts) - total_limit]:
            _remove(path)
            removed.append(path)
        ckpts = ckpts[len(ckpts) - total_limit :]
    if keep_resume_state == "last":
        for _, path in ckpts[:-2]:
            if (path / "resume").is_dir():
                _remove(path / "resume")
    return removed


def read_resume(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    masters = load_file(str(path / "resume" / "masters.safetensors"))
    state = torch.load(path / "resume" / "state.pt", map_location="cpu", weights_only=True)
    return masters, state


def restore(path: Path, trainables: Trainables, optimizer: torch.optim.Optimizer, scaler: Any) -> int:
    """Load checkpoint ``path``'s resume state into the live run (masters, optimizer, scaler, RNG); returns its step.

    Raises TrainError (one sentence) when it cannot be read (damaged since ``newest_intact`` checked it).
    """
    try:
        masters, state = read_resume(path)
    except Exception as e:  # noqa: BLE001 - damaged between the check and the read: one sentence, not a traceback
        raise TrainError(f"Checkpoint {path.name} of run '{path.parent.parent.name}' cannot be read "
                         f"({str(e).splitlines()[0][:80] if str(e) else type(e).__name__}); resume again to fall "
                         "back to an earlier checkpoint.") from None
    with torch.no_grad():
        for key, p in trainables.params.items():
            p.copy_(masters[key].to(p.device))
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    restore_rng_states(state["rng"])  # after the set-up's own draws (LoRA init): the saved streams go on
    return int(state["step"])
