"""What the studio can offer in its pickers: models (base, trained runs, each checkpoint) and runs.

A training run is ``models/<run>/`` with ``checkpoints/step-XXXX/`` folders (Train's layout);
a plain diffusers folder in ``models/`` is offered as a model too.
"""

from __future__ import annotations

import re
from pathlib import Path

_STEP = re.compile(r"(?:checkpoint|step)-(\d+)")
_CHECKPOINT_FILE = "dreamy-checkpoint.json"  # dreamy.sources.TRAIN_CHECKPOINT_FILE, without importing torch


def is_model_folder(path: Path) -> bool:
    return (path / _CHECKPOINT_FILE).is_file() or (path / "unet" / "config.json").is_file()


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """A run's complete checkpoints, oldest first (``checkpoints/`` or directly inside the run)."""
    found = []
    for parent in (run / "checkpoints", run):
        if parent.is_dir():
            for d in parent.iterdir():
                m = _STEP.fullmatch(d.name)
                if m and d.is_dir() and is_model_folder(d):
                    found.append((int(m.group(1)), d))
    return sorted(found)


def runs(models_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of every run with at least one checkpoint, by name."""
    out = []
    if models_dir.is_dir():
        for run in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found = checkpoints(run)
            if found:
                out.append((f"{run.name} ({len(found)} checkpoints, last step {found[-1][0]})", str(run.resolve())))
    return out


def model_choices(models_dir: Path, base: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(label, source) for the model picker: ``base`` first, then each trained model and checkpoint."""
    out = list(base)
    if models_dir.is_dir():
        for d in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if is_model_folder(d):
                out.append((d.name, str(d.resolve())))
            for step, ckpt in reversed(checkpoints(d)):
                out.append((f"{d.name} · step {step}", str(ckpt.resolve())))
    return out
