"""Crash safety: a training run SIGKILLed at random moments, checkpoint writes included, resumes from
its last complete checkpoint every time and ends with exactly the weights of an uninterrupted run, and
with its whole story: every checkpoint's validation row (even one killed right after its rename), the
grid and the loss plot."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from dreamy.models.checkpoints import read_meta
from dreamy.training import checkpoints as ckpt

STEPS, EVERY = 14, 3
SEED = 5  # the crashing run's one validation seed (64 px, 2 steps)


def _photos(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64)).save(folder / f"p{i}.png")
    return folder


def _cmd(photos, models, name, resume, seeds=""):
    return [sys.executable, "-m", "dreamy", "train", "--preset", "sweet-spot", "--base", "tiny", "--images",
            str(photos), "--name", name, "--unlock", "--steps", str(STEPS), "--checkpoint-every", str(EVERY),
            "--resolution", "64", "--validation-seeds", seeds, "--validation-size", "64", "--validation-steps", "2",
            "--models-dir", str(models), "--device", "cpu", *(["--resume"] if resume else [])]


def _row(run, step):
    return run / "validation" / f"step{step:06d}-seed{SEED:06d}.png"


def _steps(run):
    return {p.name for p in (run / "checkpoints").glob("step-*")} if (run / "checkpoints").is_dir() else set()


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _last_logged_step(run, since):
    """The last step in the loss log, once this process has written it (resume first truncates it)."""
    log = run / "logs" / "loss.jsonl"
    try:
        if log.stat().st_mtime < since:
            return None
        lines = log.read_text().strip().splitlines()
        return json.loads(lines[-1])["step"] if lines else None
    except (OSError, ValueError, KeyError):
        return None


def _assert_every_checkpoint_loads(run):
    for _step, path in ckpt.list_checkpoints(run):
        read_meta(path)  # complete folders only: a torn write never shows up as a checkpoint
        if ckpt.has_resume_state(path):
            masters, state = ckpt.read_resume(path)
            assert masters and all(torch.isfinite(t).all() for t in masters.values())


def _final_masters(run):
    masters, _ = ckpt.read_resume(ckpt.step_dir(run, STEPS))
    return masters


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    photos, models = _photos(tmp_path / "photos"), tmp_path / "models"
    ref = subprocess.run(_cmd(photos, models, "ref", False), env=_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run, rng, kills, during_write, after_rename, history = models / "crash", random.Random(11), 0, 0, 0, []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        latest = ckpt.latest_resumable(run)
        resumable = latest is not None
        start_step = int(latest.name.split("-")[1]) if latest else 0
        if run.exists() and not resumable:
            shutil.rmtree(run)  # killed before its first checkpoint: nothing to resume, start again
        started = time.time()
        stale = set((run / "checkpoints").glob(".tmp-*")) if (run / "checkpoints").is_dir() else set()
        old_steps = _steps(run)
        proc = subprocess.Popen(_cmd(photos, models, "crash", resumable, str(SEED)), env=_env(), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills >= 6:  # the last resume trains to the end, or only completes what the last kill left out
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-2000:]
            break
        # Kill at a random logged step plus a random fraction of a step, as soon as a checkpoint is being
        # written (its hidden temporary folder exists), or as soon as one was renamed into place (before
        # its validation row is rendered): an earlier one, and last the final one (before its row and plot).
        target, aim = rng.randint(start_step + 1, STEPS - 1), ("rename", "write", "step", "rename", "write", "rename")[kills]
        if aim == "rename" and kills < 5 and start_step + EVERY >= STEPS:
            aim = "step"  # only the final checkpoint is left to write: keep it for the last kill
        while proc.poll() is None:
            tmp_dirs = set((run / "checkpoints").glob(".tmp-*")) - stale if (run / "checkpoints").is_dir() else set()
            new_steps = {d for d in _steps(run) - old_steps if (d == f"step-{STEPS:04d}") == (kills == 5)}
            step = _last_logged_step(run, started)
            if ((aim == "write" and tmp_dirs) or (aim == "rename" and new_steps)
                    or (aim == "step" and step is not None and step >= target)):
                time.sleep(rng.random() * 0.05 if aim == "step" else 0)
                during_write += bool(tmp_dirs)
                after_rename += any(not _row(run, int(s.split("-")[1])).exists() for s in new_steps)
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        history.append((start_step, _last_logged_step(run, 0), [s for s, _ in ckpt.list_checkpoints(run)]))
        _assert_every_checkpoint_loads(run)
    else:
        pytest.fail("the crash loop did not finish in time")

    print(history, during_write, after_rename)
    assert kills == 6 and during_write >= 1 and after_rename >= 1
    assert sum(start > 0 for start, _, _ in history) >= 3  # most restarts really resumed from a checkpoint
    assert len({start for start, _, _ in history}) >= 3  # ... from different checkpoints
    assert all(not list((run / "checkpoints").glob(".tmp-*")) for _ in [0])  # leftovers cleaned on resume
    ours, theirs = _final_masters(run), _final_masters(models / "ref")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed weights differ from the uninterrupted run"
    steps = [s for s, _ in ckpt.list_checkpoints(run)]
    assert steps == [3, 6, 9, 12, 14]
    assert [s for s in (0, *steps) if not _row(run, s).is_file()] == [], "a checkpoint lacks its validation row"
    with Image.open(run / "validation" / "grid.png") as grid:
        assert json.loads(grid.text["dreamy_grid"]) == {"steps": [0, *steps], "seeds": [SEED]}
    assert (run / "logs" / "loss.png").is_file()
