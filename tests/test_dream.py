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


def test_dream_stream_lands_each_picture_then_its_contact_sheet(tiny_model, tmp_path):
    from PIL import Image

    from dreamy.dreaming.dreams import dream_stream
    from dreamy.dreaming.streams import Ended, Landed

    small = {"width": 64, "height": 64, "steps": 2}
    events = list(dream_stream(tiny_model, seeds="3-5", out_dir=tmp_path / "a", overrides=small, unlock=True))
    assert [(e.item.seed, e.done, e.total) for e in events[:-1]] == [(3, 1, 3), (4, 2, 3), (5, 3, 3)]
    assert all(isinstance(e, Landed) and e.item.path.is_file() for e in events[:-1])
    end = events[-1]
    assert isinstance(end, Ended) and not end.stopped and end.sheet == tmp_path / "a" / "contact-sheet.png"
    assert Image.open(end.sheet).info["dreamy_sheet"] == '{"seeds": [3, 4, 5], "files": ["seed000003.png", ' \
                                                         '"seed000004.png", "seed000005.png"]}'  # dream()'s sheet
    one = list(dream_stream(tiny_model, seeds="7", out_dir=tmp_path / "b", overrides=small, unlock=True))
    assert one[-1].sheet == tmp_path / "b" / "seed000007.png"  # one picture is its own sheet
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["seed000007.png"]


def test_dream_stream_stops_with_the_sheet_of_what_finished(tiny_model, tmp_path):
    from dreamy.dreaming.dreams import dream_stream

    token = CancelToken()
    small = {"width": 64, "height": 64, "steps": 2}
    events = []
    for e in dream_stream(tiny_model, seeds="0-5", out_dir=tmp_path, overrides=small, unlock=True, cancel=token):
        events.append(e)
        if e.done == 2 and not token.cancelled:
            token.cancel()
    end = events[-1]
    assert (end.done, end.total, end.stopped) == (2, 6, True) and end.sheet == tmp_path / "contact-sheet.png"
    token = CancelToken()
    token.cancel()
    (end,) = dream_stream(tiny_model, seeds="0-5", out_dir=tmp_path / "none", overrides=small, unlock=True,
                          cancel=token)
    assert (end.done, end.sheet, end.stopped) == (0, None, True) and not (tmp_path / "none").exists()


def test_dream_stream_refuses_locks_seeds_and_batch_size_before_loading_a_model(tmp_path, monkeypatch):
    from dreamy.dreaming import dreams
    from dreamy.errors import DreamyError, SeedSyntaxError

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the checks")

    monkeypatch.setattr(dreams, "cached_model", no_loading)
    monkeypatch.setattr(dreams, "load_model", no_loading)
    for kwargs, error in (({"overrides": {"prompt": "a cat"}}, LockedFieldError), ({"seeds": "x"}, SeedSyntaxError),
                          ({"batch_size": 0}, DreamyError)):
        with pytest.raises(error):
            next(dreams.dream_stream("tiny", **{"seeds": "0", **kwargs}, out_dir=tmp_path, keep_loaded=True))
    assert not list(tmp_path.iterdir())


def test_a_dream_model_kept_loaded_is_loaded_once(monkeypatch):
    from dreamy.dreaming.dreams import dream_model
    from dreamy.models import sources

    monkeypatch.setattr(sources, "_loaded", {})
    first = dream_model("tiny", device="cpu", precision="fp32", keep_loaded=True)
    assert dream_model("tiny", device="cpu", precision="fp32", keep_loaded=True) is first
    assert dream_model("tiny", device="cpu", precision="fp32") is not first  # not kept: a fresh load


def test_recall_vets_the_model_its_png_names_before_loading_it(tiny_model, tmp_path, monkeypatch):
    from dreamy.errors import PathError
    from dreamy.models import sources

    monkeypatch.setattr(sources, "_loaded", {})

    r = dream(tiny_model, seeds=4, overrides=FAST, unlock=True, out_dir=tmp_path)[0]
    seen = []

    def studio_check(source: str) -> str:
        seen.append(source)
        raise PathError(f"The model path '{source}' is outside the folders the studio may use.")

    with pytest.raises(PathError, match="outside the folders"):
        recall(r.path, tmp_path / "b", check_source=studio_check)
    assert seen == ["tiny"] and not (tmp_path / "b").exists()
    again = recall(r.path, tmp_path / "c", device="cpu", check_source=lambda s: s, keep_loaded=True)
    assert again.path.read_bytes() == r.path.read_bytes()
