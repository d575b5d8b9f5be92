"""Training checkpoints: compact, atomic, prunable, resumable, and loadable as a model for Dream.

Layout of ``models/<run>/checkpoints/step-XXXX/``::

    dreamy-checkpoint.json        step, mode, the base model (source + sha256), tokens, recipe
    unet/, text_encoder/          full fine-tune: the trained components, fp16 safetensors + config
    lora_unet.safetensors         LoRA / pivotal: adapter weights (fp16), keys "<module>.lora_A.weight"
    lora_text_encoder.safetensors LoRA with a text-encoder adapter
    embeddings.safetensors        pivotal: the new token embeddings, {"clip_l": [n, dim]} (fp16)
    resume/masters.safetensors    the exact fp32 masters of every trained tensor, as int16 residuals over
                                  the fp16 parts above (residuals.py; bit-exact resume)
    resume/state.pt               optimizer, grad scaler, RNG states, step

The frozen parts (VAE, tokenizer, an untrained text encoder, a LoRA's base) are not copied: the
checkpoint names its base model once, with its hash, and loading checks that hash. A checkpoint is
written into a hidden temporary folder and renamed into place, so it is complete or absent; older
ones are pruned only after the new one is in place. The loop takes a snapshot and writes it in a
background thread (snapshot.py, writer.py), one write at a time. The marker records each file's size and sha256,
so damage found later (resume, load) is named; resume then falls back to the newest intact checkpoint,
which is why the two newest keep their resume states.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import output_error, set_file_mode, temp_dir
from ..errors import TrainError
from ..layout import CHECKPOINT_FILE, step_dir, step_of
from ..layout import checkpoints as list_checkpoints
from ..models import safetensors_file
from ..models.a1111_hash import RECORD_FILE
from ..models.checkpoints import FORMAT, PART_FILES, damage, manifest, marker_sha256
from . import residuals
from .modes import Trainables
from .snapshot import HostBuffers, Snapshot, non_finite, take
from .writer import CheckpointWriter, PendingWrite

# Where a checkpoint keeps each part (``Trainables.checkpoint_parts``' names), relative to its folder.
PART_PATHS = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors",
              **PART_FILES}


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


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write a safetensors file (floats as they are; a part's are fp16 already), hashing its bytes as they go.

    Byte for byte what ``_save_tensors`` (the safetensors library) writes, streamed from the tensors'
    own memory (``models.safetensors_file``): no copy of the file in memory. Returns its size and sha256."""
    h = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for piece in safetensors_file.chunks(tensors, {"format": "pt"}):
            h.update(piece)
            f.write(piece)
            size += piece.nbytes if isinstance(piece, memoryview) else len(piece)
    set_file_mode(path)
    return {"size": size, "sha256": h.hexdigest()}


def _write_state(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """``torch.save`` the resume state, then its size and sha256 (read back from the page cache)."""
    torch.save(state, path)
    set_file_mode(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


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
    writer: CheckpointWriter | None = None,
    buffers: HostBuffers | None = None,
    then: Callable[[], Any] | None = None,
) -> Path | tuple[PendingWrite, dict[str, dict[str, torch.Tensor]]]:
    """Write checkpoint ``step`` atomically: the inference parts in fp16 plus the resume state.

    Without ``writer`` it is written now and its folder returned. With one, a snapshot is taken now
    (``snapshot.take``) and written by the writer's thread; returned are the ``PendingWrite`` and the
    snapshot's fp16 parts on the training device (what Dream will load from it: the validation
    model takes them); ``then`` runs after the folder is in place (pruning). Non-finite trained weights are refused (TrainError) before anything is taken:
    a diverged run never overwrites or adds a checkpoint. Write errors (OSError) become OutputError,
    raised here or, in the background, by the writer's ``wait``.
    """
    bad = non_finite(trainables)
    if bad:
        raise TrainError(f"The trained weights became NaN or infinite by step {step} ({bad[0]}); the run diverged "
                         "and this step was not saved: lower the learning rate or resume from an earlier checkpoint.")
    snap, device_parts = take(step, trainables, optimizer, scaler, _rng_states(), buffers or HostBuffers())
    final = step_dir(run_dir, step)
    pending = PendingWrite(step, final)

    def job(p: PendingWrite) -> Path:
        path = write_snapshot(p, snap, meta)
        if then is not None:
            then()
        return path

    if writer is None:
        return job(pending)
    return writer.submit(pending, job), device_parts


def content_sha256(files: dict[str, dict[str, Any]], base_sha256: str) -> str:
    """``models.checkpoints.checkpoint_sha256`` from a manifest (relative path -> size, sha256) instead of the
    folder: the inference files in path order (not ``resume/``, not the marker or the A1111 hash record)."""
    lines = [f"base:{base_sha256}"]
    for rel in sorted(files, key=lambda r: r.split("/")):
        name = rel.rsplit("/", 1)[-1]
        if not rel.startswith("resume/") and name not in (CHECKPOINT_FILE, RECORD_FILE):
            lines.append(f"{rel}:{files[rel]['sha256']}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def write_snapshot(pending: PendingWrite, snap: Snapshot, meta: dict[str, Any]) -> Path:
    """Write ``snap`` as checkpoint folder ``pending.path``: the inference parts (their content hash is published
    once their bytes are made, before they are written), the resume state, the marker with every file's size
    and sha256 (of the bytes written; the resume files read back), one rename. Runs in the writer's thread or
    the caller's."""
    final = pending.path
    try:
        tmp = temp_dir(final, prefix=f".tmp-{final.name}-")
    except OSError as e:
        raise output_error(final, e) from None
    try:
        snap.ready()
        for name in snap.parts:
            if name in snap.configs:  # unet/, text_encoder/: a diffusers/transformers folder with its config
                (tmp / name).mkdir()
                snap.configs[name](tmp / name)
        files: dict[str, dict[str, Any]] = manifest(tmp)  # the config files, before any other file is there
        (tmp / "resume").mkdir()
        # Every file is hashed as it is written, each on a thread of its own (hashlib and file writes let
        # go of the GIL; the training loop's thread keeps it), beside the residual encoding: the end of a
        # run waits for the last checkpoint's write, and the loop's steps must not wait for the GIL.
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="dreamy-write") as pool:
            written = {PART_PATHS[name]: pool.submit(_write_tensors, tmp / PART_PATHS[name], tensors)
                       for name, tensors in snap.parts.items()}
            state = pool.submit(_write_state, tmp / "resume" / "state.pt", snap.state)
            masters = residuals.encode(snap.masters, snap.parts)
            written["resume/masters.safetensors"] = pool.submit(_write_tensors, tmp / "resume" / "masters.safetensors",
                                                                 masters)
            written["resume/state.pt"] = state
            parts_done = {rel: f.result() for rel, f in written.items() if not rel.startswith("resume/")}
            # The hash the validation PNGs name the checkpoint by, as soon as the inference files are in:
            # the rows need not wait for the resume state.
            pending.publish_hash(content_sha256({**files, **parts_done}, meta["base"]["sha256"]))
            files.update({rel: f.result() for rel, f in written.items()})
            del masters
        meta = {**meta, "format": FORMAT, "step": snap.step, "parts": sorted(snap.parts), "tokens": snap.tokens,
                "files": dict(sorted(files.items()))}
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


def read_parts(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A checkpoint's fp16 inference parts (those present), by part name, on the CPU."""
    from safetensors.torch import load_file

    return {name: load_file(str(path / rel)) for name, rel in PART_PATHS.items() if (path / rel).is_file()}


def read_masters(path: Path, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint's exact fp32 masters: ``resume/masters.safetensors``, completed by its fp16 parts when it
    holds residuals (``residuals.py``); ``keys`` as in ``residuals.decode``."""
    from safetensors.torch import load_file

    stored = load_file(str(path / "resume" / "masters.safetensors"))
    if not residuals.is_encoded(stored):
        return stored
    return residuals.decode(stored, read_parts(path), keys)


def read_resume(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    masters = read_masters(path)
    state = torch.load(path / "resume" / "state.pt", map_location="cpu", weights_only=True)
    return masters, state


def restore(path: Path, trainables: Trainables, optimizer: torch.optim.Optimizer, scaler: Any) -> int:
    """Load checkpoint ``path``'s resume state into the live run (masters, optimizer, scaler, RNG); returns its step.

    Raises TrainError (one sentence) when it cannot be read (damaged since ``newest_intact`` checked it).
    """
    try:
        masters = read_masters(path, list(trainables.params))
        state = torch.load(path / "resume" / "state.pt", map_location="cpu", weights_only=True)
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
