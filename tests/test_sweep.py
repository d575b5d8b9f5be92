"""Sweeps: checkpoint x seed plans, resumable, duplicate-free, the same on 1 or 2 processes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from dreamy.dreaming.sweeps import SweepPlan, expand_models, model_folder
from dreamy.errors import DreamyError

SMALL = ["--unlock", "--steps", "3", "--width", "64", "--height", "64"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    """A training run with two checkpoints (copies of the tiny model) and a non-checkpoint folder."""
    run = tmp_path_factory.mktemp("run")
    for step in (20, 10):
        shutil.copytree(tiny_dir, run / "checkpoints" / f"step-{step:06d}")
    (run / "checkpoints" / "logs").mkdir()
    return run


def test_a_run_folder_expands_to_its_checkpoints_in_step_order(run_dir):
    ckpts = expand_models([str(run_dir)])
    assert [os.path.basename(c) for c in ckpts] == ["step-000010", "step-000020"]
    assert expand_models([str(run_dir)], "20") == [str(run_dir / "checkpoints" / "step-000020")]
    assert expand_models(["tiny"]) == ["tiny"]
    with pytest.raises(DreamyError, match="No checkpoints match"):
        expand_models([str(run_dir)], "30")


def test_batches_are_cut_from_the_whole_plan(tmp_path):
    plan = SweepPlan(["a", "b"], [5, 6, 7], tmp_path, batch_size=2)
    assert plan.batches == [(0, (5, 6)), (0, (7,)), (1, (5, 6)), (1, (7,))]
    plan.folder(0).mkdir(parents=True)
    plan.path(0, 5).write_bytes(b"x")  # a batch done by half is still pending, whole
    plan.path(0, 7).write_bytes(b"x")
    assert plan.pending() == [(0, (5, 6)), (1, (5, 6)), (1, (7,))]
    assert model_folder(0, "models/run/checkpoints/step-000010/", 2) == "00-step-000010"
    assert model_folder(0, "tiny", 1) == "tiny"


def test_sweep_returns_the_sheets_and_grid_it_drew(run_dir, tmp_path):
    from dreamy.dreaming.sweeps import sweep

    quick = {"steps": 2, "width": 64, "height": 64}
    result = sweep(str(run_dir), "biased-dreams", "0-1", tmp_path / "run", overrides=quick, unlock=True, device="cpu")
    out = tmp_path / "run"
    assert result["grid"] == out / "grid.png" and result["grid"].is_file()
    assert result["sheets"] == [out / "00-step-000010" / "contact-sheet.png", out / "01-step-000020" / "contact-sheet.png"]
    assert all(p.is_file() for p in result["sheets"]) and len(result["images"]) == 4  # the manifest, as before
    one = sweep("tiny", "biased-dreams", "3", tmp_path / "one", overrides=quick, unlock=True, device="cpu")
    assert one["grid"] is None and one["sheets"] == [tmp_path / "one" / "tiny" / "contact-sheet.png"]


def _sweep(out, run_dir, launcher=()):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "dreamy", "sweep", "--model", str(run_dir), "--seeds", "0-4", "--out", str(out),
           "--batch-size", "2", "--device", "cpu", *SMALL]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "manifest.json").read_text())


def _accelerate(port):
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]


@pytest.mark.slow
def test_two_processes_make_the_same_files_once_and_resume(run_dir, tmp_path):
    one = _sweep(tmp_path / "one", run_dir, [sys.executable])
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("seed*.png"))
    assert len(files) == 10 and {e["rank"] for e in one["images"]} == {0}
    assert (tmp_path / "one" / "grid.png").is_file() and (tmp_path / "one" / "00-step-000010" / "contact-sheet.png").is_file()

    two = _sweep(tmp_path / "two", run_dir, _accelerate(29621))
    assert {e["rank"] for e in two["images"]} == {0, 1} and two["duplicates"] == []
    assert sorted(e["file"] for e in two["images"]) == sorted(str(f) for f in files)
    for f in files:  # same bits whichever process made them
        assert (tmp_path / "two" / f).read_bytes() == (tmp_path / "one" / f).read_bytes()

    # a crash lost three images (one of them half of a batch): the re-run makes exactly those
    lost = [files[0], files[3], files[9]]
    for f in lost:
        (tmp_path / "two" / f).unlink()
    before = {f: (tmp_path / "two" / f).stat().st_mtime_ns for f in files if f not in lost}
    again = _sweep(tmp_path / "two", run_dir, _accelerate(29622))
    assert again["duplicates"] == []
    for f in files:
        assert (tmp_path / "two" / f).read_bytes() == (tmp_path / "one" / f).read_bytes()
    assert all((tmp_path / "two" / f).stat().st_mtime_ns == t for f, t in before.items())  # untouched
    assert len(again["images"]) == 10
