"""What each mode trains: pivotal tuning's pivot sticks, prior preservation's class images, fall-backs."""

from __future__ import annotations

import builtins

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import photos, run

from dreamy.models.sources import load_model
from dreamy.png.metadata import read_recipe
from dreamy.training import Notice, StepDone
from dreamy.training.checkpoints import list_checkpoints


def test_pivotal_tokens_train_until_the_pivot_and_stay_frozen_across_a_resume(tmp_path, tiny_model):
    settings = {"mode": "pivotal", "optimizer": "prodigy", "learning_rate": 1.0, "text_encoder_lr": 1.0,
                "max_train_steps": 4, "ti_fraction": 0.5, "checkpointing_steps": 1, "keep_resume_state": "all"}
    images = photos(tmp_path / "photos", n=2)
    run(images, tmp_path / "m", "pivot", settings, cancel_at=3)  # stop after the pivot (step 2)...
    run(images, tmp_path / "m", "pivot", settings, resume=True)  # ...and resume: it must stay frozen
    ckpts = dict(list_checkpoints(tmp_path / "m" / "pivot"))
    assert sorted(ckpts) == [1, 2, 3, 4]
    rows = {s: load_file(str(p / "resume" / "masters.safetensors"))["text_encoder.token_embedding"] for s, p in ckpts.items()}
    base = tiny_model.text_encoder.get_input_embeddings().weight
    for w in rows.values():
        assert w.shape == (516, 32) and torch.equal(w[:514], base)  # CLIP's own vocabulary never moves
    assert not torch.equal(rows[1][514:], rows[2][514:])  # steps 1-2 train the new tokens
    assert torch.equal(rows[2][514:], rows[3][514:]) and torch.equal(rows[3][514:], rows[4][514:])
    lora = [load_file(str(ckpts[s] / "lora_unet.safetensors")) for s in (2, 4)]
    assert any(not torch.equal(lora[0][k], lora[1][k]) for k in lora[0])  # the UNet LoRA keeps training
    emb = load_file(str(ckpts[4] / "embeddings.safetensors"))["clip_l"]
    assert torch.equal(emb, rows[4][514:].half())
    model = load_model(str(ckpts[4]), device="cpu")
    ids = model.tokenizer("a photo of <s0><s1> person").input_ids
    assert 514 in ids and 515 in ids  # the checkpoint loads with its tokens


def test_prior_preservation_generates_class_images_once(tmp_path):
    # batch 2 with min-SNR weighting: the weights come from the instance half only (diffusers #5791)
    settings = {"mode": "prior", "class_prompt": "a photo of a person", "num_class_images": 2, "class_steps": 2,
                "max_train_steps": 2, "train_batch_size": 2, "snr_gamma": 5.0}
    images = photos(tmp_path / "photos", n=2)
    events = run(images, tmp_path / "m", "prior", settings)
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert any("Generating 2 class image(s) of 'a photo of a person'" in n for n in notes)
    class_dir = tmp_path / "m" / "prior" / "class-images"
    assert sorted(p.name for p in class_dir.iterdir()) == ["class-00000.png", "class-00001.png"]
    r = read_recipe(class_dir / "class-00000.png")
    assert (r.settings.prompt, r.settings.guidance, r.settings.steps, r.model.kind) == (
        "a photo of a person", 7.5, 2, "tiny")
    # a second run that names the folder reuses the images: nothing is generated
    again = run(images, tmp_path / "m", "prior2", {**settings, "class_images_dir": str(class_dir)})
    assert not any("Generating" in e.message for e in again if isinstance(e, Notice))
    assert [e.step for e in again if isinstance(e, StepDone)] == [1, 2]


def test_full_without_the_text_encoder_and_the_adamw_fallback(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    events = run(photos(tmp_path / "photos", n=1), tmp_path / "m", "unet-only",
                 {"train_text_encoder": False, "max_train_steps": 1, "optimizer": "adamw8bit", "noise_offset": 0.05})
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert any("bitsandbytes is not usable here" in n and "torch AdamW" in n for n in notes)
    step = list_checkpoints(tmp_path / "m" / "unet-only")[-1][1]
    assert (step / "unet").is_dir() and not (step / "text_encoder").exists()
    assert all(k.startswith("unet.") for k in load_file(str(step / "resume" / "masters.safetensors")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_keeps_fp32_masters_through_validation(tmp_path):
    """fp16 autocast + GradScaler with fp32 masters; validation renders must not cast the live modules."""
    events = run(photos(tmp_path / "photos", n=2), tmp_path / "m", "cuda", {"max_train_steps": 3, "checkpointing_steps": 1,
                                                                           "validation_seeds": "0", "mixed_precision": "fp16"},
                 device="cuda")
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3]
    masters = load_file(str(list_checkpoints(tmp_path / "m" / "cuda")[-1][1] / "resume" / "masters.safetensors"))
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in masters.values())
