"""The gigafractal preset: Gigafractal Diffusion's published recipe, and a tiny CPU run of it from
A1111-style class images to the exported model card."""

from __future__ import annotations

import numpy as np
from test_train_loop import photos

from dreamy.models.a1111_prompt import chunk_prompt, parse_weights
from dreamy.recipes.presets import load_preset
from dreamy.recipes.samplers import SD1_SCHEDULE, a1111_name


def test_the_preset_is_the_published_recipe(tiny_model):
    p = load_preset("gigafractal")
    t, d = p.train, p.dream
    assert (t.mode, t.prior_preservation, t.class_prompt, t.num_class_images) == ("prior", True, "biomorphic", 200)
    assert (t.learning_rate, t.max_train_steps, t.instance_prompt) == (1e-6, 2040, "gigafractal artstyle")
    assert (t.class_guidance, t.class_steps) == (12.5, 20)
    # class images: A1111's Euler a on SD 1.5's schedule, A1111's prompt syntax, a long weighted prompt
    assert (d.sampler, d.scheduler, d.prompt_syntax, d.width, d.height) == ("euler_a", SD1_SCHEDULE, "a1111", 512, 512)
    assert a1111_name(d.sampler, d.scheduler) == "Euler a"
    assert ("fractalism", 0.7) in parse_weights(t.class_image_prompt)
    assert len(t.class_negative_prompt) > 300
    assert "stand-in" in p.description
    assert {"learning_rate", "max_train_steps", "class_prompt", "class_image_prompt", "num_class_images"} <= \
        set(p.locked["train"])
    assert {"prompt_syntax", "sampler", "scheduler", "guidance", "steps"} <= set(p.locked["dream"])
    # the tiny tokenizer reads characters, so the stand-in prompts span several 75-token chunks
    assert len(chunk_prompt(tiny_model.tokenizer, t.class_image_prompt)) > 1


def test_gigafractal_trains_the_tiny_model_through_class_images_to_a_model_card(tmp_path, tiny_model):
    from dreamy.dreaming.dreams import recall
    from dreamy.png.metadata import read_recipe
    from dreamy.training import Finished, Notice, train
    from dreamy.training.exports import export

    small = {"resolution": 64, "max_train_steps": 2, "checkpointing_steps": 2, "num_class_images": 2,
             "class_steps": 2, "validation_seeds": ""}
    events = list(train(photos(tmp_path / "photos", n=2), name="giga", preset="gigafractal", base="tiny",
                        models_dir=tmp_path / "m", overrides=small, unlock=True, device="cpu"))
    assert isinstance(events[-1], Finished) and not events[-1].stopped
    assert any("Generating 2 class image(s) of 'biomorphic'" in e.message for e in events if isinstance(e, Notice))

    preset = load_preset("gigafractal")
    class_dir = tmp_path / "m" / "giga" / "class-images"
    pngs = sorted(class_dir.glob("class-*.png"))
    assert [p.name for p in pngs] == ["class-00000.png", "class-00001.png"]
    r = read_recipe(pngs[0])
    s = r.settings
    assert (s.prompt, s.negative_prompt) == (preset.train.class_image_prompt, preset.train.class_negative_prompt)
    assert (s.sampler, s.scheduler, s.prompt_syntax, s.guidance, s.steps, s.width) == \
        ("euler_a", SD1_SCHEDULE, "a1111", 12.5, 2, 64)
    assert "prompt_truncated" not in r.runtime  # the long prompt is read whole, in chunks
    assert read_recipe(pngs[0]).seed != read_recipe(pngs[1]).seed  # one seed per image
    # a class image is a dream like any other: recalled from its recipe, bit for bit
    again = recall(pngs[0], model=tiny_model)
    from PIL import Image

    with Image.open(pngs[0]) as im:
        assert np.array_equal(np.asarray(again.image), np.asarray(im.convert("RGB")))

    files = export(tmp_path / "m" / "giga", tmp_path / "export", formats=("card",))
    card = files["card"].read_text(encoding="utf-8")
    assert "license: creativeml-openrail-m" in card and "- dreambooth" in card
    assert 'instance_prompt: "gigafractal artstyle"' in card
    for shown in ('"learning_rate": 1e-06', '"class_prompt": "biomorphic"', '"prior_preservation": true',
                  "(fractalism:0.7)", '"class_negative_prompt": "lowres'):
        assert shown in card, shown
