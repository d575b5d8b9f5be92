"""The CLI end to end, as a user runs it (subprocesses, no network)."""

import os
import subprocess
import sys

from PIL import Image

from conftest import REPO
from dreamy.png.metadata import read_recipe


def _run(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "dreamy", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_dream_with_the_preset_writes_pngs_and_a_contact_sheet(tmp_path):
    """The issue's acceptance command, with the preset's own 512x512 x 50 DDIM steps."""
    out = tmp_path / "out"
    p = _run("dream", "--preset", "biased-dreams", "--model", "tiny", "--seeds", "0-3", "--out", str(out))
    assert p.returncode == 0, p.stderr
    names = sorted(f.name for f in out.iterdir())
    assert names == ["contact-sheet.png", "seed000000.png", "seed000001.png", "seed000002.png", "seed000003.png"]
    for seed in range(4):
        path = out / f"seed{seed:06d}.png"
        with Image.open(path) as im:
            assert im.size == (512, 512)
            assert f"Seed: {seed}, Size: 512x512" in im.text["parameters"]
        r = read_recipe(path)
        assert (r.seed, r.settings.steps, r.settings.guidance, r.unlocked) == (seed, 50, 3.0, {})
    assert "tiny demo model" in p.stderr  # labelled as the demo it is
    recalled = _run("recall", str(out / "seed000002.png"), "--out", str(tmp_path / "again"))
    assert recalled.returncode == 0, recalled.stderr
    assert (tmp_path / "again" / "seed000002.png").read_bytes() == (out / "seed000002.png").read_bytes()
    info = _run("info", str(out / "seed000002.png"))
    assert '"preset": "biased-dreams"' in info.stdout


def test_locked_override_is_refused_and_unlock_is_recorded(tmp_path):
    p = _run("dream", "--model", "tiny", "--seeds", "0", "--out", str(tmp_path), "--guidance", "5")
    assert p.returncode == 2
    assert "error: 'guidance' is locked by preset 'biased-dreams'" in p.stderr and "Traceback" not in p.stderr
    p = _run("dream", "--model", "tiny", "--seeds", "0", "--out", str(tmp_path), "--guidance", "5", "--steps", "4",
             "--width", "64", "--height", "64", "--unlock", "guidance,steps,width,height")
    assert p.returncode == 0, p.stderr
    r = read_recipe(tmp_path / "seed000000.png")
    assert r.unlocked["guidance"] == {"preset": 3.0, "value": 5.0} and r.settings.steps == 4


def test_errors_are_one_sentence_without_traceback(tmp_path):
    cases = [
        (("dream", "--model", "tiny", "--seeds", "10-1", "--out", str(tmp_path)), "ends before it starts"),
        (("dream", "--model", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)), "No model file or folder"),
        (("dream", "--model", "tiny", "--preset", "nope", "--out", str(tmp_path)), "No preset named 'nope'"),
        (("recall", str(tmp_path / "missing.png"), "--out", str(tmp_path)), "No file at"),
    ]
    for args, message in cases:
        p = _run(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_presets_command_lists_and_shows_locks():
    p = _run("presets")
    assert p.returncode == 0 and "biased-dreams" in p.stdout and "cooked" in p.stdout
    p = _run("presets", "cooked")
    assert "learning_rate" in p.stdout and "4e-06" in p.stdout and "locked" in p.stdout
