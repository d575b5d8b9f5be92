"""A training run's folder: its name, ``models/<run>/run.json``, and whether (and from where) it may be resumed."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import TrainError
from ..layout import RUN_NAME, models_root
from ..paths import check_tree
from ..recipes.recipe import ModelRef, Recipe
from . import checkpoints as ckpt
from .parallel import is_main_process

# Settings a resumed run may change: they decide when to save and what to render, not what is learned.
RESUMABLE_CHANGES = {"max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "keep_resume_state",
                     "validation_seeds", "validation_prompts"}


def run_dir_for(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise TrainError(f"'{name}' is not a usable run name: use letters, digits, '.', '_' or '-' "
                         "(up to 100, not starting with a dot).")
    root = Path(models_dir or models_root())
    # a run is written and read as a whole: its folder, and every link in it, stay inside models/
    check_tree(root / name, [root], "run folder")
    return root / name


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2, sort_keys=True, default=str))


def base_record(ref: ModelRef) -> dict[str, Any]:
    rec = asdict(ref)
    if ref.kind in ("folder", "file", "checkpoint"):  # so checkpoints find their base from anywhere
        rec["source"] = str(Path(ref.source).expanduser().resolve())
    return rec


def check_resumable(run_dir: Path, recipe: Recipe, base: ModelRef, processes: int = 1) -> None:
    try:
        saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise TrainError(f"'{run_dir}' has no readable run.json; it cannot be resumed.") from None
    if saved.get("processes", 1) != processes:  # the global batch (and so the data order) depends on it
        n = saved.get("processes", 1)
        raise TrainError(f"Run '{run_dir.name}' was trained by {n} process(es) (a global batch of "
                         f"train_batch_size x {n}); resume it with {n} "
                         f"({'accelerate launch --num_processes ' + str(n) if n > 1 else 'no accelerate launch'}).")
    if saved["base"]["sha256"] != base.sha256:
        raise TrainError(f"Run '{run_dir.name}' was trained on another base model ({saved['base']['source']}); "
                         "resume it with that base.")
    old = saved["recipe"]["settings"]
    new = asdict(recipe.settings)
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        raise TrainError(f"Run '{run_dir.name}' cannot resume with a different '{changed[0]}' "
                         f"({old.get(changed[0])!r} -> {new[changed[0]]!r}); only {', '.join(sorted(RESUMABLE_CHANGES))} may change.")


def resume_point(name: str, run_dir: Path, resume: bool) -> tuple[Path | None, list[str]]:
    """The checks of run ``name``'s checkpoints that need no model; returns the checkpoint to resume from (None:
    a new run) and the notices about newer checkpoints found damaged (moved aside as ``damaged-step-XXXX``).

    Raises TrainError: checkpoints exist and ``resume`` is False; ``resume`` with none intact to resume.
    """
    if resume:
        ckpt.remove_leftovers(run_dir)  # temporary folders of writes a crash cut short
    existing = ckpt.list_checkpoints(run_dir)
    resume_from, skipped = ckpt.newest_intact(run_dir) if resume else (None, [])
    if existing and not resume:
        raise TrainError(f"Run '{name}' already exists with {len(existing)} checkpoint(s) (last: step "
                         f"{existing[-1][0]}); resume it or choose another name.")
    if resume and resume_from is None and skipped:
        path, why = skipped[0]
        raise TrainError(f"Run '{name}' cannot resume: checkpoint {path.name} is damaged ({why}) and no earlier "
                         "checkpoint has an intact resume state; start the run again under another name.")
    if resume_from is None:
        if resume:
            raise TrainError(f"Run '{name}' has no checkpoint with a resume state to continue from.")
        return None, []
    notes = []
    for path, why in skipped:  # later steps are written again from the resumed one
        aside = ckpt.set_aside(path) if is_main_process() else None
        notes.append(f"Checkpoint {path.name} is damaged ({why}); resuming from {resume_from.name}"
                     + (f" (the damaged one is kept as {aside.name})." if aside else "."))
    return resume_from, notes


# ------------------------------------------------------------------------------------------- photos


def photo_record(images: Sequence[Any], caption_files: bool) -> list[dict[str, Any]]:
    """What run.json says about the photos a run trains on: name, content sha256, the caption used
    (and its caption file, with ``captions="files"``). ``images`` are ``data.TrainImage``s."""
    out: list[dict[str, Any]] = []
    names = [Path(im.path).name for im in images]
    for im, name in zip(images, names, strict=True):
        path = Path(im.path)
        rec: dict[str, Any] = {"name": name if names.count(name) == 1 else str(path),
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "caption": im.caption}
        txt = path.with_suffix(".txt")
        if caption_files and txt.is_file():
            rec["caption_file"] = {"name": txt.name, "sha256": hashlib.sha256(txt.read_bytes()).hexdigest()}
        out.append(rec)
    return out


def photo_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Photos added, removed and changed (content, caption or caption file) from ``old`` to ``new``."""
    a, b = {r["name"]: r for r in old}, {r["name"]: r for r in new}
    return {"added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b)),
            "changed": sorted(n for n in set(a) & set(b) if a[n] != b[n])}


def _names(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_photos(run_dir: Path, photos: list[dict[str, Any]], allow: bool) -> dict[str, list[str]] | None:
    """Compare the photos of a resume with those run.json recorded: None if the same; the differences
    (all empty when the run recorded none) to record with ``record_photo_change`` if ``allow``; else a
    TrainError listing them."""
    try:
        saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # check_resumable words a missing run.json
    old = saved.get("photos")
    if not isinstance(old, list):
        return {"added": [], "removed": [], "changed": []}  # a run from before photos were recorded: record them
    diff = photo_changes(old, photos)
    if not any(diff.values()):
        return None
    if allow:
        return diff
    said = "; ".join(f"{k}: {_names(v)}" for k, v in diff.items() if v)
    raise TrainError(f"Run '{run_dir.name}' was trained on other photos ({said}); resume it with the same photos, "
                     "or allow the change (--allow-changed-photos, allow_changed_photos=True), which run.json records.")


def record_photo_change(run_dir: Path, step: int, diff: dict[str, list[str]], photos: list[dict[str, Any]]) -> None:
    """run.json: the new photos, and under ``photo_changes`` the step a resume changed them at and how."""
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if any(diff.values()):
        record.setdefault("photo_changes", []).append({"step": step, **diff})
    record["photos"] = photos
    write_run_record(run_dir, record)
