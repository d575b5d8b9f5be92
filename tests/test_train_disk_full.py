"""A checkpoint that cannot be written (disk full, read-only) stops the run with one sentence and
leaves every earlier checkpoint intact and loadable."""

import errno

import numpy as np
import pytest
from PIL import Image

from dreamy.errors import OutputError
from dreamy.training import checkpoints as ckpt
from dreamy.training import train


@pytest.mark.parametrize("code, words, writer", [(errno.ENOSPC, "the disk is full", "_write_state"),
                                                 (errno.EROFS, "read-only", "_write_tensors")])
def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, code, words, writer):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 60 * i, np.uint8)).save(photos / f"p{i}.png")
    real_write = getattr(ckpt, writer)  # the resume state's writer, or the one of every .safetensors file

    def failing_write(path, what):
        if "step-0004" in str(path):
            raise OSError(code, "simulated")
        return real_write(path, what)

    monkeypatch.setattr(ckpt, writer, failing_write)
    run = tmp_path / "models" / "full"
    overrides = {"max_train_steps": 6, "checkpointing_steps": 2, "resolution": 64, "validation_seeds": ""}
    with pytest.raises(OutputError, match=f"Cannot write .*step-0004: .*{words}"):
        for _ in train(photos, name="full", preset="sweet-spot", base="tiny", overrides=overrides, unlock=True,
                       models_dir=tmp_path / "models", device="cpu"):
            pass
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    masters, state = ckpt.read_resume(ckpt.step_dir(run, 2))
    assert state["step"] == 2 and masters
    monkeypatch.setattr(ckpt, writer, real_write)  # space freed: the run resumes from step 2
    events = list(train(photos, name="full", preset="sweet-spot", base="tiny", overrides=overrides, unlock=True,
                        models_dir=tmp_path / "models", device="cpu", resume=True))
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2, 4, 6] and type(events[-1]).__name__ == "Finished"
