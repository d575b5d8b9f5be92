"""Validation rows beside the training loop (rows.py): the same pictures and files, events after a later step, Stop."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from dreamy.errors import Cancelled
from dreamy.png.metadata import read_recipe
from dreamy.training import CheckpointSaved, Finished, StepDone, ValidationDone
from dreamy.training.events import ValidationDone as VD
from dreamy.training.rows import RowRenderer, background_rows
from tests.test_train_loop import photos, run


def _rows(models, name):
    """Each validation PNG's pixels and recipe (the run folder's own path left out: the runs live apart)."""
    out = {}
    for p in sorted((models / name / "validation").glob("step*-seed*.png")):
        with Image.open(p) as im:
            out[p.name] = (im.tobytes(), read_recipe(p).to_json().replace(str(models.resolve()), "<models>"))
    return out


def test_background_rows_give_the_same_files_as_rows_in_the_loop(tmp_path, monkeypatch):
    images = photos(tmp_path / "photos")
    settings = {"validation_seeds": "0,1", "max_train_steps": 4, "checkpointing_steps": 2}
    monkeypatch.setenv("DREAMY_VALIDATE_BACKGROUND", "0")
    inline = run(images, tmp_path / "a", "r", settings)
    monkeypatch.setenv("DREAMY_VALIDATE_BACKGROUND", "1")
    beside = run(images, tmp_path / "b", "r", settings)

    assert _rows(tmp_path / "a", "r") == _rows(tmp_path / "b", "r")  # same names, pixels and recipes
    assert len(_rows(tmp_path / "b", "r")) == 3 * 2  # steps 0, 2, 4 x two seeds
    assert (tmp_path / "b" / "r" / "validation" / "grid.png").exists()
    for events in (inline, beside):
        done = [e.step for e in events if isinstance(e, ValidationDone)]
        assert done == [0, 2, 4]
        assert isinstance(events[-1], Finished)
        # a row's event never comes before its checkpoint's
        order = [(type(e).__name__, e.step) for e in events if isinstance(e, CheckpointSaved | ValidationDone)]
        assert order.index(("CheckpointSaved", 2)) < order.index(("ValidationDone", 2))


def test_stop_cuts_a_row_beside_the_loop_and_the_resume_renders_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMY_VALIDATE_BACKGROUND", "1")
    images = photos(tmp_path / "photos")
    settings = {"validation_seeds": "0,1,2", "max_train_steps": 6, "checkpointing_steps": 2}
    events = run(images, tmp_path / "m", "r", settings, cancel_at=3)
    assert events[-1].stopped and events[-1].step == 3
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3]
    resumed = run(images, tmp_path / "m", "r", settings, resume=True)
    assert isinstance(resumed[-1], Finished) and not resumed[-1].stopped
    rows = _rows(tmp_path / "m", "r")
    # the stop's own checkpoint (step 3) gets its row too, as every kept checkpoint does
    assert {n[:10] for n in rows} == {"step000000", "step000002", "step000003", "step000004", "step000006"}
    assert len(rows) == 5 * 3


def test_row_errors_reach_the_loop_and_a_stop_is_no_error():
    import torch

    rows = RowRenderer(torch.device("cpu"), background=True)
    started = threading.Event()

    def slow_failure():
        started.set()
        raise OSError("disk full")

    rows.start(slow_failure)
    started.wait()
    with pytest.raises(OSError, match="disk full"):
        list(rows.results(wait=True))
    rows.start(lambda: (_ for _ in ()).throw(Cancelled("stopped")))
    assert list(rows.results(wait=True)) == []
    rows.start(lambda: [VD(2, 4, (), None)])
    with pytest.raises(RuntimeError, match="already in flight"):
        rows.start(lambda: [VD(2, 4, (), None)])
    assert [e.step for e in rows.results(wait=True)] == [2]
    rows.close()


def test_rows_render_beside_the_loop_on_cuda_only(monkeypatch):
    import torch

    monkeypatch.delenv("DREAMY_VALIDATE_BACKGROUND", raising=False)
    assert background_rows(torch.device("cuda")) and not background_rows(torch.device("cpu"))
    monkeypatch.setenv("DREAMY_VALIDATE_BACKGROUND", "0")
    assert not background_rows(torch.device("cuda"))
