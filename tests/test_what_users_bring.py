"""Issue 14, "What users bring": long prompts, broken numbers, presets that crash the sampler, and
files that are something else than what the message said (CPU, tiny model)."""

from __future__ import annotations

import codecs
import logging
import shutil

import numpy as np
import pytest
import torch

from dreamy.errors import NonFiniteOutput, PresetError, SourceError, TrainSetupError, check_finite

LONG = ", ".join(["monumental, dramatic, atmospheric, transcendent"] * 20)
SMALL = {"width": 64, "height": 64, "steps": 2}


# --------------------------------------------------------------------------- 1. the 77-token cut


def test_dropped_text_names_the_words_the_encoder_cuts(tiny_model):
    from dreamy.models.tokens import dropped_text, kept_text, survives, token_budget

    tok = tiny_model.tokenizer
    assert token_budget(tok) == 75
    assert dropped_text(tok, "a red lighthouse") == ""
    assert dropped_text(tok, "") == ""
    cut = dropped_text(tok, f"{LONG}, red lighthouse")
    assert cut.endswith("red lighthouse")
    assert "red lighthouse" not in kept_text(tok, f"{LONG}, red lighthouse")
    assert survives(tok, f"sks, {LONG}", "sks")
    assert not survives(tok, f"{LONG}, sks", "sks")
    exactly = "x" * 75  # the byte-level tiny tokenizer: one token per character
    assert dropped_text(tok, exactly) == "" and dropped_text(tok, exactly + "yz") == "yz"


@pytest.mark.parametrize("tail", ["red lighthouse", "blue windmill"])
def test_a_cut_prompt_is_noted_logged_and_recorded(tiny_model, tmp_path, caplog, tail):
    from dreamy import dream
    from dreamy.png.metadata import read_recipe

    with caplog.at_level(logging.WARNING):
        [img] = dream(tiny_model, seeds=0, overrides={**SMALL, "prompt": f"{LONG}, {tail}"}, unlock=True,
                      out_dir=tmp_path)
    assert img.notes and tail in img.notes[0] and "dropped" in img.notes[0]
    assert any(tail in r.getMessage() for r in caplog.records)
    assert img.recipe.runtime["prompt_truncated"].endswith(tail)
    assert "negative_prompt_truncated" not in img.recipe.runtime
    assert read_recipe(img.path).runtime["prompt_truncated"].endswith(tail)
    assert read_recipe(img.path).settings.prompt == f"{LONG}, {tail}"  # the full prompt is still recorded


def test_a_cut_negative_prompt_is_recorded_and_a_prompt_that_fits_is_untouched(tiny_model):
    from dreamy import dream

    [img] = dream(tiny_model, seeds=0, overrides={**SMALL, "negative_prompt": f"{LONG}, blurry"}, unlock=True)
    assert img.recipe.runtime["negative_prompt_truncated"].endswith("blurry")
    assert "prompt_truncated" not in img.recipe.runtime and len(img.notes) == 1
    [fits] = dream(tiny_model, seeds=0, overrides={**SMALL, "prompt": "a red lighthouse"}, unlock=True)
    assert fits.notes == [] and not any("truncated" in k for k in fits.recipe.runtime)


def test_prompt_sweep_cells_carry_the_notice(tiny_model, tmp_path):
    from dreamy.dreaming.prompt_sweeps import prompt_sweep_iter

    cells = list(prompt_sweep_iter(tiny_model, "biased-dreams", ["a cat", f"{LONG}, a dog"], "0", tmp_path,
                                   overrides=SMALL, unlock=True))
    assert [bool(c.notes) for c in cells] == [False, True]
    assert cells[1].image.recipe.runtime["prompt_truncated"].endswith("a dog")


def test_validation_renders_record_the_cut(tiny_model):
    from dreamy.recipes.recipe import resolve
    from dreamy.training.validation import render_seeds

    recipe = resolve("biased-dreams", "dream", {**SMALL, "prompt": f"{LONG}, sks"}, unlock=True)
    [(image, r)] = list(render_seeds(tiny_model, recipe, [0]))
    assert r.runtime["prompt_truncated"].endswith("sks")


def test_a_trigger_word_the_encoder_would_cut_stops_training(tiny_model, caplog):
    from dreamy.training.data import apply_trigger, check_caption
    from dreamy.training.loss import tokenize

    tok = tiny_model.tokenizer
    assert check_caption(tok, "a photo of sks person", "sks") == ""
    assert check_caption(tok, apply_trigger(LONG, "sks"), "sks")  # cut, but the trigger comes first: fine
    for caption in (f"{LONG}, sks", f"{LONG}, a photo of [trigger] person".replace("[trigger]", "sks")):
        with pytest.raises(TrainSetupError, match="trigger word 'sks'"):
            check_caption(tok, caption, "sks")
    notices: list[str] = []
    with caplog.at_level(logging.WARNING):
        ids = tokenize(tok, [f"{LONG}, a class photo"], notices)
    assert ids.shape == (1, 77) and any("a class photo" in r.getMessage() for r in caplog.records)
    assert len(notices) == 1 and "a class photo" in notices[0]


def test_pivotal_substitution_checks_the_new_tokens(tiny_model):
    from dreamy.training.modes import Trainables

    tr = Trainables.__new__(Trainables)
    tr.tokenizer, tr.tokens = tiny_model.tokenizer, []
    assert tr.substitute("sks, a dog", "sks") == "sks, a dog"
    with pytest.raises(TrainSetupError):
        tr.substitute(f"{LONG}, sks", "sks")


# --------------------------------------------------------------------------- 2. NaN / inf refused


@pytest.fixture(scope="module")
def nan_model_dir(tiny_dir, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("nan") / "tiny-nan"
    shutil.copytree(tiny_dir, d)
    f = d / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["conv_out.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, f, metadata={"format": "pt"})
    return d


def test_a_model_with_a_nan_weight_is_refused_and_nothing_is_saved(nan_model_dir, tmp_path):
    from dreamy import dream

    out = tmp_path / "out"
    with pytest.raises(NonFiniteOutput, match="NaN/inf.*damaged"):
        dream(str(nan_model_dir), seeds="0,1", overrides=SMALL, unlock=True, out_dir=out, device="cpu")
    assert not list(out.rglob("*.png")) if out.exists() else True


def test_sweep_and_validation_refuse_nan_too(nan_model_dir, tmp_path):
    from dreamy.models.sources import load_model
    from dreamy.recipes.recipe import resolve
    from dreamy.training.validation import render

    model = load_model(str(nan_model_dir), device="cpu")
    recipe = resolve("biased-dreams", "dream", SMALL, unlock=True)
    with pytest.raises(NonFiniteOutput):
        render(model, recipe, [0], tmp_path, 0)
    assert not list(tmp_path.glob("*.png"))


def test_check_finite_is_the_one_check():
    check_finite(torch.zeros(2, 3))
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.zeros(4)
        t[2] = bad
        with pytest.raises(NonFiniteOutput):
            check_finite(t)


def test_cli_refuses_a_damaged_model_in_one_sentence(nan_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "DREAMY_OUTPUTS": str(tmp_path / "outputs"), "DREAMY_FAST": "0"}
    p = subprocess.run([sys.executable, "-m", "dreamy", "dream", "--model", str(nan_model_dir), "--seeds", "0",
                        "--unlock", "--width", "64", "--height", "64", "--steps", "2",
                        "--out", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0, p.stdout + p.stderr
    assert "NaN/inf" in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.rglob("*.png"))


# --------------------------------------------------------------------------- 3. presets that crash the sampler


def _user_preset(folder, scheduler: dict, **dream):
    lines = ['extends = "biased-dreams"', "[dream]", *(f"{k} = {v!r}" for k, v in dream.items()),
             "[dream.scheduler]", *(f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace(
                 "False", "false") for k, v in scheduler.items())]
    path = folder / "mine.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_issues_preset_is_refused_at_load_time(tmp_path):
    from dreamy.recipes.presets import load_preset

    path = _user_preset(tmp_path, {"steps_offset": 1}, steps=1000)
    with pytest.raises(PresetError) as e:
        load_preset(str(path))
    msg = str(e.value)
    assert str(path) in msg and "[dream]" in msg and "steps_offset" in msg and "1000" in msg and "999" in msg
    load_preset(str(_user_preset(tmp_path, {"steps_offset": 1}, steps=999)))  # one fewer step runs


def test_an_override_is_checked_at_resolve_time(tmp_path):
    from dreamy import dream
    from dreamy.recipes.recipe import resolve

    bad = {"steps": 1000, "scheduler": {"steps_offset": 1}}
    with pytest.raises(PresetError, match="1000 steps"):
        resolve("biased-dreams", "dream", bad, unlock=True)
    with pytest.raises(PresetError):  # refused before any model is loaded
        dream("no/such-model", seeds=0, overrides=bad, unlock=True)
    with pytest.raises(PresetError, match="pndm"):
        resolve("biased-dreams", "dream", {"sampler": "pndm", "scheduler": {}, "steps": 1}, unlock=True)


SAMPLERS = ["ddim", "euler", "dpmpp_2m", "pndm"]
ODD = [{}, {"steps_offset": 1}, {"timestep_spacing": "trailing"}, {"timestep_spacing": "linspace"},
       {"steps_offset": 1, "timestep_spacing": "trailing"}, {"num_train_timesteps": 50}]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kwargs", ODD, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_accepted_sampler_settings_really_dream(tiny_model, sampler, kwargs):
    """Every combination the check accepts dreams a finite picture (few steps: really run); every
    one it refuses is refused in one sentence naming the sampler."""
    from dreamy import dream
    from dreamy.recipes.samplers import check_sampler_runs

    for steps in (1, 2, 3):
        overrides = {**SMALL, "steps": steps, "sampler": sampler, "scheduler": kwargs}
        try:
            check_sampler_runs(sampler, kwargs, steps, "test")
        except PresetError as e:
            assert f"'{sampler}'" in str(e) and f"{steps} steps" in str(e)
            continue
        [img] = dream(tiny_model, seeds=0, overrides=overrides, unlock=True)
        assert np.asarray(img.image).shape == (64, 64, 3)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("kwargs", ODD[:5], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
@pytest.mark.parametrize("steps", [999, 1000])
def test_many_steps_are_checked_without_crashing(sampler, kwargs, steps):
    from dreamy.recipes.samplers import check_sampler_runs

    try:
        check_sampler_runs(sampler, kwargs, steps, "test")
    except PresetError as e:
        assert "cannot run" in str(e)


def test_known_verdicts():
    from dreamy.recipes.samplers import check_sampler_runs

    check_sampler_runs("ddim", {}, 1000, "x")
    check_sampler_runs("euler", {"steps_offset": 1}, 1000, "x")
    for sampler, kwargs, steps in [("ddim", {"steps_offset": 1}, 1000), ("pndm", {"steps_offset": 1}, 1000),
                                   ("pndm", {}, 1), ("ddim", {"beta_schedule": "nope"}, 10)]:
        with pytest.raises(PresetError):
            check_sampler_runs(sampler, kwargs, steps, "x")


# --------------------------------------------------------------------------- 4. say what a file is


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be-bom", "utf-8-sig", "utf-32"])
def test_captions_in_utf16_with_a_bom_are_read(tmp_path, codec):
    from PIL import Image

    from dreamy.training.data import prepare_images

    Image.new("RGB", (96, 96), "red").save(tmp_path / "a.png")
    text = "a café by the sea"
    raw = (codecs.BOM_UTF16_BE + text.encode("utf-16-be")) if codec == "utf-16-be-bom" else text.encode(codec)
    (tmp_path / "a.txt").write_bytes(raw)
    data = prepare_images(tmp_path, resolution=64, prompt="fallback", captions="files")
    assert data.images[0].caption == text


def test_a_caption_that_is_not_text_says_so(tmp_path):
    from PIL import Image

    from dreamy.training.data import prepare_images

    Image.new("RGB", (96, 96), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\xfd\x00\x81")
    data = prepare_images(tmp_path, resolution=64, prompt="fallback", captions="files")
    assert data.images[0].caption == "fallback" and "not UTF-8 or UTF-16 text" in "; ".join(data.images[0].notes)


OLD_LORA = {f"down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_{x}_lora.{ud}.weight":
            torch.zeros(4, 4) for x in "qkv" for ud in ("down", "up")}


@pytest.mark.parametrize("name", ["pytorch_lora_weights.bin", "pytorch_lora_weights.safetensors", "lora.pt"])
def test_an_old_diffusers_lora_is_called_a_lora(tmp_path, name):
    from safetensors.torch import save_file

    from dreamy.models.sources import load_model

    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file({f"unet.{k}": v for k, v in OLD_LORA.items()}, path)
    else:
        torch.save(OLD_LORA, path)
    with pytest.raises(SourceError) as e:
        load_model(str(path), device="cpu")
    assert "is a LoRA" in str(e.value) and "base model" in str(e.value) and "single diffusers" not in str(e.value)


@pytest.mark.parametrize("payload", [
    {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.zeros(2, 768)}, "name": "style", "step": 3000},
    {"emb_params": torch.zeros(2, 768)},
    {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)},
])
def test_an_a1111_embedding_is_called_an_embedding(tmp_path, payload):
    from dreamy.models.sources import load_model

    path = tmp_path / "style.pt"
    torch.save(payload, path)
    with pytest.raises(SourceError) as e:
        load_model(str(path), device="cpu")
    assert "textual-inversion embedding" in str(e.value) and "no weights" not in str(e.value)


def _heic(path, size=(96, 80), colour=(200, 30, 40)):
    pillow_heif = pytest.importorskip("pillow_heif")
    from PIL import Image

    pillow_heif.from_pillow(Image.new("RGB", size, colour)).save(path, quality=95)
    return path


def test_an_iphone_heic_photo_is_read(tmp_path):
    from dreamy.images import load_image, load_images, sniff

    _heic(tmp_path / "IMG_0001.HEIC")
    _heic(tmp_path / "renamed.dat")  # a HEIC photo under another suffix: classified by its bytes
    li = load_image(tmp_path / "IMG_0001.HEIC")
    assert li.format == "HEIF" and li.image.size == (96, 80) and li.image.mode == "RGB"
    assert np.allclose(li.image.getpixel((10, 10)), (200, 30, 40), atol=6)
    assert sniff(tmp_path / "renamed.dat") == "HEIF"
    scan = load_images(tmp_path)
    assert sorted(i.path.name for i in scan.images) == ["IMG_0001.HEIC", "renamed.dat"]
    assert not scan.failed and not any("not an image" in s for s in scan.skipped)


def test_cli_prints_the_dropped_words(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "DREAMY_OUTPUTS": str(tmp_path / "outputs"), "DREAMY_FAST": "0"}
    p = subprocess.run([sys.executable, "-m", "dreamy", "dream", "--model", "tiny", "--seeds", "0", "--unlock",
                        "--prompt", f"{LONG}, red lighthouse", "--width", "64", "--height", "64", "--steps", "2",
                        "--device", "cpu", "--out", str(tmp_path / "o")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "were dropped" in p.stderr and "red lighthouse" in p.stderr


def test_a_recipe_given_whole_is_tried_too(tiny_model):
    from dataclasses import replace

    from dreamy import dream
    from dreamy.recipes.recipe import resolve

    r = resolve("biased-dreams", "dream", SMALL, unlock=True)
    bad = r.replace(settings=replace(r.settings, steps=1000, scheduler={**r.settings.scheduler, "steps_offset": 1}))
    with pytest.raises(PresetError, match="1000 steps"):
        dream(tiny_model, seeds=0, recipe=bad)


def test_a_training_run_whose_trigger_is_cut_stops_before_it_starts(tmp_path):
    from PIL import Image

    from dreamy import train

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (96, 96), "red").save(photos / "a.png")
    with pytest.raises(TrainSetupError, match="trigger word 'sks'"):
        list(train(photos, name="cut", base="tiny", models_dir=tmp_path / "models", unlock=True, device="cpu",
                   overrides={"instance_prompt": f"{LONG}, a photo of sks dog", "trigger_word": "sks",
                              "resolution": 64, "max_train_steps": 1, "validation_seeds": ""}))
    assert not list((tmp_path / "models").rglob("step-*"))


def test_a_cut_training_caption_is_a_notice_of_the_run(tmp_path):
    """The trigger survives (it comes first) but the caption's tail is cut: the run says so as a Notice."""
    from PIL import Image

    from dreamy import train
    from dreamy.training.events import Notice

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (96, 96), "red").save(photos / "a.png")
    events = list(train(photos, name="long", base="tiny", models_dir=tmp_path / "models", unlock=True, device="cpu",
                        overrides={"instance_prompt": f"a photo of sks dog, {LONG}, under a lighthouse",
                                   "trigger_word": "sks", "resolution": 64, "max_train_steps": 1,
                                   "validation_seeds": ""}))
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert any("lighthouse" in n for n in notes), notes
    assert type(events[-1]).__name__ == "Finished"
