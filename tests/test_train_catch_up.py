"""A resume completes what a killed run left out: each kept checkpoint's validation row (rendered with that
checkpoint's own weights), step 0's, the grid and the loss plot; a run already at its last step only completes.

Tiny model, one validation seed at 64 px with 4 steps: every render counts on a 2-core CPU.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_loop import photos, run

from dreamy.models.sources import load_model
from dreamy.png.metadata import read_recipe
from dreamy.recipes.presets import load_preset
from dreamy.recipes.recipe import resolve
from dreamy.training import CheckpointSaved, Finished, Notice, StepDone, TrainError, ValidationDone
from dreamy.training.catch_up import load_params
from dreamy.training.checkpoints import list_checkpoints, read_resume, step_dir
from dreamy.training.modes import TOKEN_PARAM, setup_mode

pytestmark = pytest.mark.timeout(600)


class Killed(BaseException):
    """The process dying: nothing after it runs."""


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.int16)


def grid_steps(run_dir):
    with Image.open(run_dir / "validation" / "grid.png") as im:
        return json.loads(im.text["dreamy_grid"])["steps"]


def val(run_dir, step, seed=3):
    return run_dir / "validation" / f"step{step:06d}-seed{seed:06d}.png"


@pytest.mark.slow
def test_a_finished_run_killed_before_its_last_row_completes_it_on_resume_without_training(tmp_path):
    """The kill after the final checkpoint: `--resume` renders the last row, step 0's and an older checkpoint's
    (without a resume state: from its fp16 parts), draws the plot and finishes; once complete, it refuses."""
    images = photos(tmp_path / "photos", n=2)
    settings = {"validation_seeds": "3", "checkpointing_steps": 1, "max_train_steps": 4,
                "checkpoints_total_limit": 3, "learning_rate": 1e-3}
    run(images, tmp_path / "m", "r", settings)
    run_dir = tmp_path / "m" / "r"
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 3, 4]  # step 1 was pruned; its row stays
    assert not (step_dir(run_dir, 2) / "resume").exists()  # the two newest keep a resume state
    before = {s: pixels(val(run_dir, s)) for s in range(5)}
    for s in (0, 2, 4):
        val(run_dir, s).unlink()
    (run_dir / "logs" / "loss.png").unlink()

    events = run(images, tmp_path / "m", "r", settings, resume=True)
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert any("already trained its 4 steps" in n and "steps 0, 2 and 4" in n and "loss plot" in n for n in notes)
    assert [e.step for e in events if isinstance(e, ValidationDone)] == [0, 2, 4]
    assert not [e for e in events if isinstance(e, StepDone | CheckpointSaved)]
    fin = events[-1]
    assert isinstance(fin, Finished) and not fin.stopped and fin.step == 4 and fin.checkpoint.name == "step-0004"
    assert fin.files["plot"].is_file() and grid_steps(run_dir) == [0, 1, 2, 3, 4]
    # step 0 and the resumed checkpoint: exactly the renders of the uninterrupted run
    assert np.array_equal(pixels(val(run_dir, 0)), before[0]) and np.array_equal(pixels(val(run_dir, 4)), before[4])
    # step 2 from its own fp16 weights, not the live (step 4) ones
    again = pixels(val(run_dir, 2))
    assert np.abs(again - before[2]).max() <= 3 and np.abs(again - before[4]).max() > 20
    r = read_recipe(val(run_dir, 2))
    assert r.model.checkpoint_step == 2 and r.model.source == str(step_dir(run_dir, 2).resolve())

    with pytest.raises(TrainError, match=r"already at step 4 of 4 and complete; raise max_train_steps"):
        run(images, tmp_path / "m", "r", settings, resume=True)


def test_a_kill_between_a_checkpoint_and_its_row_is_rendered_before_training_on(tmp_path, monkeypatch):
    """The SIGKILL within ~2 ms of the rename: the resumed run renders that checkpoint's row, then trains."""
    images = photos(tmp_path / "photos", n=2)
    settings = {"validation_seeds": "3", "checkpointing_steps": 2, "max_train_steps": 3}
    from dreamy.training import checkpointing

    real_render = checkpointing.render

    def killed_at_step_2(model, recipe, seeds, out_dir, step, *a, **kw):
        if step == 2:
            raise Killed  # the process dies right after checkpoint 2 was renamed into place
        return real_render(model, recipe, seeds, out_dir, step, *a, **kw)

    monkeypatch.setattr(checkpointing, "render", killed_at_step_2)
    with pytest.raises(Killed):
        run(images, tmp_path / "m", "k", settings)
    monkeypatch.setattr(checkpointing, "render", real_render)
    run_dir = tmp_path / "m" / "k"
    assert [s for s, _ in list_checkpoints(run_dir)] == [2] and not val(run_dir, 2).exists()

    events = run(images, tmp_path / "m", "k", settings, resume=True)
    order = [(type(e).__name__, e.step) for e in events if isinstance(e, ValidationDone | StepDone)]
    assert order == [("ValidationDone", 2), ("StepDone", 3), ("ValidationDone", 3)]
    assert grid_steps(run_dir) == [0, 2, 3]
    assert read_recipe(val(run_dir, 2)).model.checkpoint_step == 2


@pytest.mark.parametrize("mode", ["full", "lora", "pivotal"])
def test_a_checkpoint_without_its_resume_state_loads_its_fp16_parts_into_the_live_weights(tmp_path, mode):
    """What an older checkpoint's row is rendered with: every trained tensor from its parts, named like the run's."""
    settings = {"mode": mode, "max_train_steps": 1, "checkpointing_steps": 1, "optimizer": "adamw",
                "trigger_word": "sks", "learning_rate": 1e-3}
    run(photos(tmp_path / "photos", n=1), tmp_path / "m", mode, settings)
    path = step_dir(tmp_path / "m" / mode, 1)
    masters, _ = read_resume(path)
    shutil.rmtree(path / "resume")  # as pruning leaves an older checkpoint

    model = load_model("tiny", device="cpu")  # a fresh model: setting up a mode changes it
    s = resolve(load_preset("sweet-spot"), "train", {**settings, "resolution": 64}, unlock=True).settings
    tr = setup_mode(model.unet, model.text_encoder, model.tokenizer, s)
    assert load_params(path, tr) is None
    assert tr.params.keys() == masters.keys()
    for key, p in tr.params.items():
        want = masters[key].half().float()
        if key == TOKEN_PARAM:  # pivotal: the new rows are stored, CLIP's own vocabulary is the base's (fp32)
            want[: -len(tr.tokens)] = masters[key][: -len(tr.tokens)]
        assert torch.equal(p.detach(), want), key


def test_stop_cuts_a_validation_render_short_and_promises_no_checkpoint_that_does_not_exist(tmp_path, monkeypatch):
    """Issue #17 bug 4: Stop during the step-0 renders waited for the whole row and then offered 'step 0'.
    Now the render ends at its next denoising step; with no step trained there is no checkpoint, and a Stop
    during a later row keeps the checkpoint of that step and leaves the rest of the row to the resume."""
    from dreamy.events import CancelToken
    from dreamy.training import train
    from dreamy.training import validation as validation_module

    images = photos(tmp_path / "photos", n=2)
    token = CancelToken()
    token.cancel()  # pressed while the base model's row renders
    events = list(train(images, name="early", base="tiny", models_dir=tmp_path / "m", cancel=token, unlock=True,
                        overrides={"validation_seeds": "3,4", "checkpointing_steps": 2, "max_train_steps": 4,
                                   "resolution": 64, "train_batch_size": 1},
                        validation={"width": 64, "height": 64, "steps": 4}))
    end = events[-1]
    assert isinstance(end, Finished) and end.stopped and end.step == 0 and end.checkpoint is None
    assert not any(isinstance(e, ValidationDone | StepDone | CheckpointSaved) for e in events)
    assert list_checkpoints(tmp_path / "m" / "early") == []

    saved = validation_module.save_png
    token = CancelToken()

    def first_then_stop(image, path, recipe, **kw):  # Stop pressed while step 2's first seed is being saved
        if "step000002" in path.name:
            token.cancel()
        return saved(image, path, recipe, **kw)

    monkeypatch.setattr(validation_module, "save_png", first_then_stop)
    events = list(train(images, name="late", base="tiny", models_dir=tmp_path / "m", cancel=token, unlock=True,
                        overrides={"validation_seeds": "3,4", "checkpointing_steps": 2, "max_train_steps": 4,
                                   "resolution": 64, "train_batch_size": 1},
                        validation={"width": 64, "height": 64, "steps": 4}))
    run_dir = tmp_path / "m" / "late"
    end = events[-1]
    assert end.stopped and end.step == 2 and end.checkpoint == list_checkpoints(run_dir)[-1][1]
    assert val(run_dir, 2, 3).is_file() and not val(run_dir, 2, 4).exists()  # the row was cut short
    assert not any(isinstance(e, StepDone) and e.step > 2 for e in events)
    monkeypatch.setattr(validation_module, "save_png", saved)
    resumed = list(train(images, name="late", base="tiny", models_dir=tmp_path / "m", resume=True, unlock=True,
                         overrides={"validation_seeds": "3,4", "checkpointing_steps": 2, "max_train_steps": 4,
                                    "resolution": 64, "train_batch_size": 1},
                         validation={"width": 64, "height": 64, "steps": 4}))
    assert val(run_dir, 2, 4).is_file() and resumed[-1].step == 4 and not resumed[-1].stopped
