"""``text_encoder_lr`` as documented is what the optimizer gets: the model card and the setting's
description name the lr each text-encoder part really trains at. SD 1.5's text-encoder LoRA trains
at ``learning_rate`` (in the UNet's group; kept as it always was), SDXL's at ``text_encoder_lr``, and
the new tokens of pivotal tuning at ``text_encoder_lr`` on both. Checked against the optimizer groups
the real mode set-ups build on the tiny models."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from dreamy.recipes.settings import TrainSettings
from dreamy.training.model_card import _text_encoder

LR, TE_LR = 1e-4, 5e-6


def settings(**kw) -> TrainSettings:
    return dataclasses.replace(TrainSettings(), learning_rate=LR, text_encoder_lr=TE_LR, optimizer="adamw",
                               trigger_word="sks", **kw)


def groups_sd15(s: TrainSettings) -> dict[str, float]:
    from dreamy.models.sources import load_model
    from dreamy.models.tiny import build_tiny_components
    from dreamy.training.modes import setup_mode

    c = build_tiny_components()
    tok = copy.deepcopy(load_model("tiny", device="cpu").tokenizer)  # new tokens go into a copy
    return {g["name"]: g["lr"] for g in setup_mode(c["unet"], c["text_encoder"], tok, s).groups}


def groups_sdxl(s: TrainSettings) -> dict[str, float]:
    from dreamy.models.sources import load_model
    from dreamy.models.tiny import build_tiny_sdxl_components
    from dreamy.training.sdxl_modes import setup_sdxl_mode

    c = build_tiny_sdxl_components()
    m = load_model("tiny-sdxl", device="cpu", expected_arch=None)
    tok, tok_2 = copy.deepcopy(m.tokenizer), copy.deepcopy(m.tokenizer_2)  # new tokens go into copies
    return {g["name"]: g["lr"] for g in
            setup_sdxl_mode(c["unet"], c["text_encoder"], c["text_encoder_2"], tok, tok_2, s).groups}


@pytest.mark.parametrize("arch, mode, key", [("sd15", "lora", "learning_rate"), ("sdxl", "lora", "text_encoder_lr"),
                                             ("sd15", "pivotal", "text_encoder_lr"),
                                             ("sdxl", "pivotal", "text_encoder_lr")])
def test_the_card_names_the_lr_the_text_encoder_really_trained_at(arch, mode, key):
    s = settings(mode=mode, lora_text_encoder=mode == "lora")
    groups = (groups_sdxl if arch == "sdxl" else groups_sd15)(s)
    te = groups["text_encoder" if mode == "lora" else "tokens" if "tokens" in groups else next(
        n for n in groups if n != "unet")]
    assert te == getattr(s, key)  # what the optimizer got
    card = _text_encoder(dataclasses.asdict(s), mode, arch == "sdxl")
    assert f"lr {getattr(s, key):g} ({key})" in card, card


def test_sd15_text_encoder_lora_keeps_training_at_learning_rate():
    """Bit-identical SD 1.5 runs: its text-encoder LoRA group has the UNet's lr, whatever text_encoder_lr says."""
    groups = groups_sd15(settings(mode="lora", lora_text_encoder=True))
    assert groups == {"unet": LR, "text_encoder": LR}


def test_prodigy_cards_name_its_multiplier():
    s = dataclasses.asdict(settings(mode="pivotal"))
    s["optimizer"], s["learning_rate"] = "prodigy", 1.0
    assert "lr 1 (Prodigy's multiplier, learning_rate)" in _text_encoder(s, "pivotal", True)


def test_the_setting_says_where_text_encoder_lr_applies():
    doc = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(TrainSettings)}["text_encoder_lr"]
    assert "new tokens" in doc and "SDXL" in doc and "SD 1.5's trains at learning_rate" in doc
