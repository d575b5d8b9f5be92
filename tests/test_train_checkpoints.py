"""Any training checkpoint is a model: load_model completes it from its base and Dream uses it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_loop import VALIDATION, photos, run

from dreamy.dreaming.dreams import dream_iter, recall
from dreamy.errors import SourceError
from dreamy.models.sources import load_model
from dreamy.training.checkpoints import read_resume


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    run(photos(tmp / "photos", n=2), tmp / "m", "full", {"max_train_steps": 2, "validation_seeds": "5"})
    return tmp / "m" / "full"


def test_a_full_checkpoint_dreams_and_its_validation_image_recalls(full_run, tiny_model):
    step = full_run / "checkpoints" / "step-0002"
    model = load_model(str(step), device="cpu")
    assert (model.ref.kind, model.ref.checkpoint_step) == ("checkpoint", 2)
    assert model.ref.sha256 != tiny_model.ref.sha256
    masters, _ = read_resume(step)
    for name, p in model.unet.named_parameters():  # the fp16 copy of the trained fp32 masters
        assert torch.equal(p, masters[f"unet.{name}"].half().float()), name
    for name, p in model.text_encoder.named_parameters():
        assert torch.equal(p, masters[f"text_encoder.{name}"].half().float()), name
    assert model.vae.state_dict().keys() == tiny_model.vae.state_dict().keys()  # the shared part, from the base
    img = next(dream_iter(model, seeds=[5], overrides=VALIDATION, unlock=True)).image
    val = full_run / "validation" / "step000002-seed000005.png"
    again = recall(val, full_run / "recalled")  # loads the checkpoint named in the PNG, hash checked
    assert again.recipe.model.source == str(step.resolve())
    dreamed, recalled = np.asarray(img, dtype=np.int16), np.asarray(again.image, dtype=np.int16)
    assert np.array_equal(dreamed, recalled)
    with Image.open(val) as live:  # rendered from the fp32 live weights; the checkpoint is fp16
        assert np.abs(np.asarray(live, dtype=np.int16) - dreamed).max() <= 3


def test_a_changed_base_is_refused(full_run, tmp_path):
    import shutil

    copy = tmp_path / "step-0002"
    shutil.copytree(full_run / "checkpoints" / "step-0002", copy)
    meta = json.loads((copy / "dreamy-checkpoint.json").read_text())
    meta["base"]["sha256"] = "0" * 64
    del meta["marker_sha256"]  # an edited marker is damaged; one without its checksum (older) is read as is
    (copy / "dreamy-checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(SourceError, match="has changed since training"):
        load_model(str(copy), device="cpu")
