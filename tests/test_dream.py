"""Dream: parity with stock diffusers, one generator per seed, recall, progress and cancel."""

import numpy as np
import pytest
import torch

from conftest import FAST
from dreamy.dreaming.dreams import dream, dream_iter, recall
from dreamy.errors import Cancelled, LockedFieldError
from dreamy.events import CancelToken
from dreamy.png.metadata import read_recipe


def _stock_pipeline(tiny_dir, sampler_cls, **scheduler_kwargs):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    # Assigned after construction, as the recipe does: the constructor would rewrite steps_offset to 1.
    pipe.scheduler = sampler_cls(**scheduler_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock_image(pipe, seed, prompt, negative, guidance, steps, size):
    out = pipe(prompt, negative_prompt=negative, guidance_scale=guidance, num_inference_steps=steps,
               width=size, height=size, generator=torch.Generator("cpu").manual_seed(seed))
    return np.asarray(out.images[0])


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the preset's own DDIM at the fast size
        {"guidance": 1.0, "prompt": "a photo of sks person", "negative_prompt": "blurry"},  # no CFG
        {"sampler": "euler", "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}},
    ],
)
def test_parity_with_stock_pipeline_is_bit_identical(tiny_model, tiny_dir, overrides):
    import diffusers

    ov = {**FAST, **overrides}
    results = dream(tiny_model, "biased-dreams", "3,11", overrides=ov, unlock=True)
    s = results[0].recipe.settings
    cls = getattr(diffusers, {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}[s.sampler])
    pipe = _stock_pipeline(tiny_dir, cls, **s.scheduler)
    for r in results:
        stock = _stock_image(pipe, r.seed, s.prompt, s.negative_prompt, s.guidance, s.steps, s.width)
        assert np.array_equal(np.asarray(r.image), stock), f"seed {r.seed} differs from stock diffusers"


def test_image_of_a_seed_does_not_depend_on_batch(tiny_model):
    alone = {r.seed: np.asarray(r.image) for r in dream(tiny_model, seeds="5", overrides=FAST, unlock=True)}
    batched = dream(tiny_model, seeds="9,5,7", overrides=FAST, unlock=True, batch_size=3)
    other_batch = dream(tiny_model, seeds="7,9,5", overrides=FAST, unlock=True, batch_size=2)
    by_seed = {r.seed: np.asarray(r.image) for r in batched}
    assert np.array_equal(by_seed[5], alone[5])
    for r in other_batch:
        assert np.array_equal(np.asarray(r.image), by_seed[r.seed])
    assert not np.array_equal(by_seed[9], by_seed[5])  # different seeds, different pictures


def test_locked_fields_cannot_be_changed_through_the_api(tiny_model):
    with pytest.raises(LockedFieldError):
        next(dream_iter(tiny_model, seeds=0, overrides={"prompt": "a cat"}))


def test_every_png_carries_its_recipe_and_recall_reproduces_bytes(tiny_model, tmp_path):
    results = dream(tiny_model, seeds="1-2", overrides={**FAST, "guidance": 4.0}, unlock=["width", "height", "steps", "guidance"],
                    out_dir=tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["contact-sheet.png", "seed000001.png", "seed000002.png"]
    original = results[1].path
    recipe = read_recipe(original)
    assert recipe.seed == 2 and recipe.preset == "biased-dreams" and recipe.settings.guidance == 4.0
    assert recipe.unlocked["guidance"] == {"preset": 3.0, "value": 4.0}
    assert recipe.model.kind == "tiny" and len(recipe.model.sha256) == 64
    assert recipe.runtime["device"] == "cpu" and recipe.runtime["dtype"] == "fp32"
    again = recall(original, tmp_path / "b", model=tiny_model)
    assert again.path.name == original.name
    assert again.path.read_bytes() == original.read_bytes()


def test_progress_events_and_cancel_keep_finished_images(tiny_model, tmp_path):
    events, token = [], CancelToken()

    def on_progress(p):
        events.append(p)
        if p.item == 1 and p.step == 3:  # stop during the second seed
            token.cancel()

    finished = []
    with pytest.raises(Cancelled):
        for r in dream_iter(tiny_model, seeds="0-2", overrides=FAST, unlock=True, out_dir=tmp_path,
                            on_progress=on_progress, cancel=token):
            finished.append(r)
    assert [r.seed for r in finished] == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["seed000000.png"]  # nothing half-written
    assert [(e.step, e.item) for e in events[:2]] == [(1, 0), (2, 0)]
    assert events[FAST["steps"] - 1].fraction == pytest.approx(1 / 3)


def test_recall_refuses_a_changed_model(tiny_model, tmp_path):
    from dataclasses import replace

    from dreamy.errors import RecallError

    r = dream(tiny_model, seeds=0, overrides=FAST, unlock=True, out_dir=tmp_path)[0]
    other = replace(tiny_model, ref=replace(tiny_model.ref, sha256="0" * 64))
    with pytest.raises(RecallError, match="has changed since the image was made"):
        recall(r.path, tmp_path / "b", model=other)
    assert recall(r.path, tmp_path / "c", model=other, allow_model_change=True).seed == 0


def test_recall_refuses_an_edited_recipe_that_breaks_a_lock(tiny_model, tmp_path):
    import json

    from dreamy.errors import RecallError
    from dreamy.png.metadata import save_png

    r = dream(tiny_model, seeds=0, overrides=FAST, unlock=True, out_dir=tmp_path)[0]
    d = r.recipe.to_dict()
    d["unlocked"] = {}  # claims to be the locked preset although size and steps differ
    forged = r.recipe.from_dict(json.loads(json.dumps(d)))
    save_png(r.image, tmp_path / "forged.png", forged)
    with pytest.raises(RecallError, match="differs from preset 'biased-dreams', which locks it"):
        recall(tmp_path / "forged.png", tmp_path / "out", model=tiny_model)
