"""Where things live on disk: the models and outputs folders, run names and checkpoint folders.

    models/<run>/run.json                                  what the run is (recipe, base, photos)
    models/<run>/checkpoints/step-0400/dreamy-checkpoint.json   one complete checkpoint (the marker)
    outputs/<job>/<YYYYmmdd-HHMMSS>[-n]/                   one folder per dream, sweep or enlarge job

No torch here: the studio's pickers and the CLI read the layout without loading any engine.
A ``checkpoint-N`` folder (diffusers' training scripts) counts as a checkpoint of step N too.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from .paths import HUB_ID as HUB_ID  # run names and hub ids are defined with the path checks
from .paths import RUN_NAME as RUN_NAME
from .paths import within

PROJECT = Path(__file__).resolve().parent.parent
CHECKPOINT_FILE = "dreamy-checkpoint.json"
STEP_DIR = re.compile(r"(?:checkpoint|step)-(\d+)")


def models_root() -> Path:
    """Where trained runs live: ``$DREAMY_MODELS``, else ``models/`` in the project."""
    return Path(os.environ.get("DREAMY_MODELS") or PROJECT / "models")


def outputs_root() -> Path:
    """Where jobs write when the caller names no folder: ``$DREAMY_OUTPUTS``, else ``outputs/``."""
    return Path(os.environ.get("DREAMY_OUTPUTS") or PROJECT / "outputs")


def step_dir(run_dir: Path, step: int) -> Path:
    """``run_dir/checkpoints/step-XXXX`` (four digits at least, so folders sort by step)."""
    return Path(run_dir) / "checkpoints" / f"step-{step:04d}"


def step_of(folder: str | os.PathLike) -> int | None:
    """The training step a checkpoint folder's name gives (``step-0400``, ``checkpoint-400``), else None."""
    m = STEP_DIR.fullmatch(Path(folder).name)
    return int(m.group(1)) if m else None


def is_model_folder(path: Path) -> bool:
    return (path / CHECKPOINT_FILE).is_file() or (path / "unet" / "config.json").is_file()


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """A run's complete checkpoints as (step, folder), oldest first (in ``checkpoints/`` or the run)."""
    found = []
    for parent in (Path(run) / "checkpoints", Path(run)):
        if parent.is_dir():
            for d in parent.iterdir():
                step = step_of(d)
                if step is not None and d.is_dir() and is_model_folder(d):
                    found.append((step, d))
    return sorted(found)


def _folders(models_dir: Path) -> list[Path]:
    """The visible folders in ``models_dir``, by name; a link that leads out of it is not one of them."""
    if not models_dir.is_dir():
        return []
    root = models_dir.resolve()
    return sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p.resolve() == root or root in p.resolve().parents))


def runs(models_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of every run with at least one checkpoint, by name."""
    out = []
    if models_dir.is_dir():
        for run in _folders(models_dir):
            found = checkpoints(run)
            if found:
                out.append((f"{run.name} ({len(found)} checkpoints, last step {found[-1][0]})", str(run.resolve())))
    return out


def model_choices(models_dir: Path, base: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(label, source) for the model picker: ``base`` first, then each trained model and checkpoint."""
    out = list(base)
    if models_dir.is_dir():
        for d in _folders(models_dir):
            if is_model_folder(d):
                out.append((d.name, str(d.resolve())))
            for step, ckpt in reversed(checkpoints(d)):
                out.append((f"{d.name} · step {step}", str(ckpt.resolve())))
    return out


def _run_dir_names(root: Path, job: str) -> Iterator[Path]:
    base = Path(root) / job / time.strftime("%Y%m%d-%H%M%S")
    yield base
    for i in range(1, 10_000):
        yield base.with_name(f"{base.name}-{i}")


def new_run_dir(job: str, root: str | os.PathLike | None = None) -> Path:
    """A fresh ``outputs/<job>/<time>[-n]/`` name, not yet created: the first file written creates it,
    so a job refused before its first image (a locked field, a bad seed) leaves no empty folder."""
    return next(d for d in _run_dir_names(Path(root or outputs_root()), job) if not d.exists())


def claim_run_dir(root: str | os.PathLike, job: str) -> Path:
    """Create and return a fresh ``root/<job>/<time>[-n]/``; concurrent jobs never get the same folder.

    Raises PathError if ``root/<job>`` leads outside ``root`` through a symbolic link, FileExistsError
    only if ten thousand folders of this second are taken."""
    names = _run_dir_names(Path(root), job)
    first = next(names)
    within(first.parent, [root], "job folder")  # outputs/<job> planted as a link elsewhere: refused
    first.parent.mkdir(parents=True, exist_ok=True)
    for d in (first, *names):
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a fresh folder under {first.parent}.")


def release_if_empty(folder: Path) -> None:
    """Remove a job folder nothing was written into (a job refused before its first file)."""
    try:
        folder.rmdir()
    except OSError:
        pass
