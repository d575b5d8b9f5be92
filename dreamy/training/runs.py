"""A training run's folder: its name, ``models/<run>/run.json``, and whether it may be resumed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import TrainError
from ..layout import RUN_NAME, models_root
from ..recipes.recipe import ModelRef, Recipe

# Settings a resumed run may change: they decide when to save and what to render, not what is learned.
RESUMABLE_CHANGES = {"max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "keep_resume_state",
                     "validation_seeds"}


def run_dir_for(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise TrainError(f"'{name}' is not a usable run name: use letters, digits, '.', '_' or '-' "
                         "(up to 100, not starting with a dot).")
    return Path(models_dir or models_root()) / name


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
