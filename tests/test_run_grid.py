"""Runs side by side: the checkpoint x seed grid of two training runs (rows = steps matched across runs,
one block of seed columns per run, the same seeds and prompt everywhere), from the core and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from dreamy.errors import DreamyError

QUICK = {"steps": 2, "width": 64, "height": 64, "prompt": "figure dancing"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_dir):
    """Run "adamw" with checkpoints at steps 10 and 20, run "prodigy" at 10 and 30 (copies of the tiny
    model: the same weights at step 10, so the two blocks must agree there pixel for pixel)."""
    root = tmp_path_factory.mktemp("runs")
    for name, steps in (("adamw", (10, 20)), ("prodigy", (10, 30))):
        for step in steps:
            shutil.copytree(tiny_dir, root / name / "checkpoints" / f"step-{step:06d}")
        (root / name / "run.json").write_text(json.dumps({"base": {"source": "tiny"}}))
    return root


def test_two_runs_render_side_by_side(two_runs, tmp_path):
    from dreamy.dreaming.sweeps import sweep

    runs = [str(two_runs / "adamw"), str(two_runs / "prodigy")]
    result = sweep(runs, "biased-dreams", "0-1", tmp_path, overrides=QUICK, unlock=True, device="cpu")
    grid = result["grid"]
    assert grid == tmp_path / "grid.png" and grid.is_file()
    with Image.open(grid) as im:
        info = json.loads(im.text["dreamy_runs_grid"])
        size = im.size
    assert info == {"runs": ["adamw", "prodigy"], "steps": ["step 0 (base)", "step 10", "step 20", "step 30"],
                    "seeds": [0, 1]}
    assert size[0] > 2 * 2 * 128 and size[1] > 4 * 128  # two blocks of two seeds, four rows of steps
    rows = [c["row"] for c in result["cells"]]
    assert rows[:2] == ["adamw · step 0 (base)"] * 2 and rows[-1] == "prodigy · step 30" and len(rows) == 12
    by = {(c["row"], c["seed"]): c["path"] for c in result["cells"]}
    for seed in (0, 1):  # the same weights, seed and prompt: the same picture in both blocks
        with Image.open(by[("adamw · step 10", seed)]) as a, Image.open(by[("prodigy · step 10", seed)]) as b:
            assert a.tobytes() == b.tobytes()
    from dreamy.png.metadata import read_recipe

    assert {read_recipe(p).settings.prompt for p in by.values()} == {"figure dancing"}


def test_runs_are_compared_with_runs_only(two_runs, tmp_path):
    from dreamy.dreaming.sweeps import expand_rows

    with pytest.raises(DreamyError, match="runs are compared only with runs"):
        expand_rows([str(two_runs / "adamw"), str(two_runs / "prodigy"), "tiny"])
    rows, _ = expand_rows([str(two_runs / "adamw")], "10")  # one run: the one-run grid, as before
    assert [(r.label, r.block) for r in rows] == [("step 10", "")]
    rows, _ = expand_rows([str(two_runs / "adamw"), str(two_runs / "prodigy")], "20,30")
    assert [(r.block, r.step) for r in rows] == [("adamw", "step 20"), ("prodigy", "step 30")]


def test_cli_sweep_takes_two_runs(two_runs, tmp_path, capsys):
    from dreamy.cli.main import main

    rc = main(["sweep", "--model", str(two_runs / "adamw"), str(two_runs / "prodigy"), "--checkpoints", "10,20",
               "--seeds", "3", "--out", str(tmp_path), "--unlock", "--steps", "2", "--width", "64", "--height", "64",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    with Image.open(tmp_path / "grid.png") as im:
        assert json.loads(im.text["dreamy_runs_grid"])["steps"] == ["step 10", "step 20"]
