"""Outputs get the modes any other program's files get: 0666/0777 less the umask, never mkstemp's 0600.

A run (its checkpoints, log, grid) and every export format are written under umask 0022 (the usual
default: others read) and 0027 (a group-shared machine: others get nothing), and every file and
folder under them is checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_train_loop import photos, run

from dreamy.atomic import atomic_write_text, umask
from dreamy.training import export


def _bad_modes(root: Path, mask: int) -> list[str]:
    want = {True: 0o777 & ~mask, False: 0o666 & ~mask}
    bad = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != want[path.is_dir()]:
            bad.append(f"{path.relative_to(root)}: {oct(mode)}")
    return bad


@pytest.fixture
def with_umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("with_umask", [0o022, 0o027], indirect=True, ids=["umask-0022", "umask-0027"])
def test_runs_and_exports_respect_the_umask(tmp_path, with_umask):
    assert umask() == with_umask  # read without changing it
    atomic_write_text(tmp_path / "one" / "note.txt", "x")
    assert _bad_modes(tmp_path / "one", with_umask) == []

    settings = {"mode": "pivotal", "optimizer": "prodigy", "learning_rate": 1.0, "text_encoder_lr": 1.0,
                "max_train_steps": 2, "checkpointing_steps": 1, "ti_fraction": 0.5, "validation_seeds": "1"}
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "modes", settings)
    run_dir = tmp_path / "m" / "modes"
    files = export(run_dir, formats=["diffusers", "single-file", "lora", "card"])
    assert {"diffusers", "single_file", "lora_kohya", "lora_diffusers", "embeddings", "card",
            "validation_grid"} <= set(files)
    assert _bad_modes(run_dir, with_umask) == []  # the run, its checkpoints and export/ inside it
