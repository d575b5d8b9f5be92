"""Training end to end (issue #18, item 2): validation through Dream's own path, checkpoint writes beside
the loop, a resume state without duplicated tensors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train_loop import photos, run

from dreamy.dreaming.dreams import dream_iter
from dreamy.models.checkpoints import checkpoint_sha256
from dreamy.models.sources import load_model
from dreamy.png.metadata import read_recipe
from dreamy.training import StepDone, residuals
from dreamy.training import checkpoints as ckpt


@pytest.mark.parametrize("mode", ["full", "lora", "pivotal"])
def test_a_validation_picture_is_the_picture_dream_gives_for_that_checkpoint(tmp_path, mode):
    """Bit for bit on the CPU: the row of step N is Dream's picture of checkpoint N (same seed, same recipe),
    not a render of the fp32 masters under another precision."""
    settings = {"mode": mode, "max_train_steps": 2, "checkpointing_steps": 2, "validation_seeds": "3,7",
                "learning_rate": 1e-3, "optimizer": "adamw", "trigger_word": "sks"}
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", mode, settings)
    run_dir = tmp_path / "m" / mode
    step = ckpt.step_dir(run_dir, 2)
    for seed in (3, 7):
        png = run_dir / "validation" / f"step000002-seed{seed:06d}.png"
        recipe = read_recipe(png)
        assert recipe.model.source == str(step.resolve())
        dreamed = next(dream_iter(str(step), recipe=recipe, seeds=[seed], device="cpu")).image
        with Image.open(png) as im:
            ours = np.asarray(im.convert("RGB"))
        assert np.array_equal(ours, np.asarray(dreamed)), (mode, seed)
    base_sha = load_model("tiny", device="cpu").ref.sha256
    assert read_recipe(run_dir / "validation" / "step000002-seed000003.png").model.sha256 == \
        checkpoint_sha256(step, base_sha)


def test_a_checkpoint_is_written_while_the_next_steps_train(tmp_path, monkeypatch):
    """The loop hands the write to a thread: steps go on while it is in flight; the folder appears whole."""
    release = threading.Event()
    real = ckpt._write_tensors

    def slow(path, tensors):
        if "step-0002" in str(path):
            assert release.wait(60)
        return real(path, tensors)

    monkeypatch.setattr(ckpt, "_write_tensors", slow)
    run_dir = tmp_path / "m" / "bg"
    seen = []
    from dreamy.training import train

    for ev in train(photos(tmp_path / "photos", n=2), name="bg", base="tiny", models_dir=tmp_path / "m",
                    device="cpu", unlock=True, overrides={"max_train_steps": 4, "checkpointing_steps": 2,
                                                          "resolution": 64, "validation_seeds": ""}):
        if isinstance(ev, StepDone) and ev.step == 3:
            seen.append(ckpt.step_dir(run_dir, 2).exists())  # trained on while step 2 is being written
            release.set()
    assert seen == [False]
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [2, 4]
    assert ckpt.damage(ckpt.step_dir(run_dir, 2)) is None
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_the_resume_state_holds_residuals_not_a_second_copy_of_the_weights(tmp_path):
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "r", {"max_train_steps": 1, "checkpointing_steps": 1,
                                                              "learning_rate": 1e-3})
    step = ckpt.step_dir(tmp_path / "m" / "r", 1)
    stored = load_file(str(step / "resume" / "masters.safetensors"))
    unet = load_file(str(step / "unet" / "diffusion_pytorch_model.safetensors"))
    assert residuals.is_encoded(stored)
    # a tensor stays whole only where most of its values are fp16 subnormals (the tiny model's untrained
    # k_proj biases); the UNet's are all residuals
    fp32 = [k for k, v in stored.items() if v.dtype == torch.float32 and "#" not in k]
    assert not [k for k in fp32 if k.startswith("unet.")], fp32[:3]
    n_unet = sum(t.numel() for t in unet.values())
    residual_bytes = sum(v.numel() * v.element_size() for k, v in stored.items() if k.startswith("unet."))
    assert residual_bytes < 2.1 * n_unet  # int16 per value + a few exceptions (was 4 bytes per value)
    masters, _ = ckpt.read_resume(step)
    for name, half in unet.items():
        assert torch.equal(masters[f"unet.{name}"].half(), half)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_residuals_give_back_every_fp32_bit(scale):
    """Normal values, fp16 subnormals, signed zeros, values beyond fp16's range and its rounding edges."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * scale
    x[:8] = torch.tensor([0.0, -0.0, 1e-30, -6e-8, 6.1e-5, 65504.0, 65520.0, -1e6])
    x[8:16] = torch.tensor([1.0, 2.0, 4.0, 0.5]).repeat(2) * (1 - 2**-12)  # rounds up across a binade
    masters = {"unet.w": x.reshape(64, 64), "text_encoder.b": x[:100].clone(), "text_encoder.token_embedding": x[:10]}
    parts = {"unet": {"w": x.reshape(64, 64).half()}, "text_encoder": {"b": x[:100].half()}}
    stored = residuals.encode(masters, parts)
    assert stored["unet.w#residual"].dtype == torch.int16 and "text_encoder.token_embedding" in stored
    back = residuals.decode(stored, parts)
    assert back.keys() == masters.keys()
    for k, v in masters.items():
        assert torch.equal(back[k].view(torch.int32), v.view(torch.int32)), k


def test_the_fast_step_is_chosen_where_it_fits_and_a_resume_keeps_its_layout(monkeypatch):
    from dreamy.recipes.presets import load_preset
    from dreamy.recipes.recipe import resolve
    from dreamy.training import speed

    monkeypatch.delenv(speed.ENV, raising=False)
    monkeypatch.setattr(speed, "has_triton", lambda: True)
    s = resolve(load_preset("sweet-spot"), "train").settings
    cuda, big, small = torch.device("cuda"), 80 * 2**30, 8 * 2**30
    assert speed.choose(s, torch.device("cpu"), None) == (False, False)
    assert speed.choose(s, cuda, None, big) == (True, False)  # 1200 steps: a cold compile would not pay
    long = resolve(load_preset("sweet-spot"), "train", {"max_train_steps": 3000}, unlock=True).settings
    assert speed.choose(long, cuda, None, big) == (True, True)
    assert speed.choose(s, cuda, None, small) == (False, False)  # does not fit: the plain step
    assert speed.choose(s, cuda, {}, big)[0] is False  # a run started before the choice was recorded
    assert speed.choose(s, cuda, {"fused_params": True}, small)[0] is True  # its optimizer state is flat
    monkeypatch.setenv(speed.ENV, "0")
    assert speed.choose(s, cuda, None, big) == (False, False)
