"""``python -m dreamy train`` as a user runs it, then Dream on what it made."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_train_loop import photos

from conftest import REPO
from dreamy.png.metadata import read_recipe


def _run(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dreamy", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow  # four CLI processes (~30 s on 2 idle cores, mostly imports)
def test_train_then_dream_on_the_checkpoint(tmp_path):
    images = photos(tmp_path / "photos", n=2)
    (images / "notes.md").write_text("not a photo")
    common = ["train", "--preset", "sweet-spot", "--base", "tiny", "--images", str(images), "--name", "cli",
              "--models-dir", str(tmp_path / "models")]
    refused = _run(*common, "--steps", "2")
    assert refused.returncode == 2
    assert "error: 'max_train_steps' is locked by preset 'sweet-spot'" in refused.stderr and "--unlock" in refused.stderr

    p = _run(*common, "--steps", "2", "--checkpoint-every", "1", "--resolution", "64", "--unlock",
             "max_train_steps,checkpointing_steps,resolution", "--validation-size", "64", "--validation-steps", "2",
             "--validation-seeds", "4", "--export", "diffusers,card")
    assert p.returncode == 0, p.stderr
    assert "photo0.png: 'a photo of sks person' (center-cropped to 64x64)" in p.stderr
    assert "skipped notes.md: not an image file" in p.stderr
    assert "2/2" in p.stderr  # the progress bar reached the end
    run_dir = tmp_path / "models" / "cli"
    ckpt = run_dir / "checkpoints" / "step-0002"
    assert f"checkpoint: {ckpt.resolve()}" in p.stdout and "card: " in p.stdout
    assert (run_dir / "export" / "step-0002" / "diffusers" / "model_index.json").is_file()
    assert (run_dir / "validation" / "grid.png").is_file() and (run_dir / "logs" / "loss.png").is_file()

    e = _run("train", "--name", "cli", "--models-dir", str(tmp_path / "models"), "--export-only", "1",
             "--export", "single-file")
    assert e.returncode == 0, e.stderr
    assert (run_dir / "export" / "step-0001" / "cli.safetensors").is_file()

    d = _run("dream", "--model", str(ckpt), "--seeds", "1", "--out", str(tmp_path / "dreams"), "--unlock",
             "--width", "64", "--height", "64", "--steps", "2")
    assert d.returncode == 0, d.stderr
    r = read_recipe(tmp_path / "dreams" / "step000002-seed000001.png")
    assert (r.model.kind, r.model.checkpoint_step) == ("checkpoint", 2)
