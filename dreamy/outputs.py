"""Where jobs write when the caller names no folder: ``outputs/<job>/<time>/`` under the project."""

from __future__ import annotations

import os
import time
from pathlib import Path

OUTPUTS = Path(os.environ.get("DREAMY_OUTPUTS") or Path(__file__).resolve().parent.parent / "outputs")


def new_run_dir(job: str) -> Path:
    """A fresh folder name for one job. It is created by the first file written into it, so a job
    refused before its first image (a locked field, a bad seed) leaves no empty folder behind."""
    base = OUTPUTS / job / time.strftime("%Y%m%d-%H%M%S")
    i = 0
    while (d := base.with_name(f"{base.name}-{i}") if i else base).exists():
        i += 1
    return d
