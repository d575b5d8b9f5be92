"""A1111's samplers: names both ways, one generator per seed for the noisy ones (a seed's picture
never depends on its batch), parity with stock diffusers, and Recall of an A1111 file that names one."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from dreamy.errors import PresetError
from dreamy.recipes.samplers import SD1_SCHEDULE, a1111_name, check_sampler_runs, from_a1111, is_noisy

HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None
KARRAS = {**SD1_SCHEDULE, "use_karras_sigmas": True}
DDIM = {**SD1_SCHEDULE, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


@pytest.mark.parametrize("name, sampler, kwargs", [
    ("Euler a", "euler_a", SD1_SCHEDULE),
    ("Euler", "euler", SD1_SCHEDULE),
    ("DPM++ 2M", "dpmpp_2m", SD1_SCHEDULE),
    ("DPM++ 2M Karras", "dpmpp_2m", KARRAS),
    ("DPM++ 2M SDE Karras", "dpmpp_2m_sde", KARRAS),
    ("DDIM", "ddim", DDIM),
    ("PLMS", "pndm", {**SD1_SCHEDULE, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
])
def test_a1111_names_both_ways(name, sampler, kwargs):
    assert from_a1111(name) == (sampler, kwargs)
    assert a1111_name(sampler, kwargs) == name
    check_sampler_runs(sampler, kwargs, 20, "test")  # A1111's usual 20 steps run


def test_a1111_19_writes_the_schedule_apart():
    assert from_a1111("DPM++ 2M", "Karras") == ("dpmpp_2m", KARRAS)
    assert from_a1111("Euler a", "Automatic") == ("euler_a", SD1_SCHEDULE)
    assert from_a1111("  Euler   a ") == ("euler_a", SD1_SCHEDULE)


def test_dpmpp_sde_karras_needs_torchsde():
    if HAS_TORCHSDE:
        assert from_a1111("DPM++ SDE Karras") == ("dpmpp_sde", KARRAS)
        assert a1111_name("dpmpp_sde", KARRAS) == "DPM++ SDE Karras"
    else:
        with pytest.raises(PresetError, match=r"needs the torchsde package, which is not installed here"):
            from_a1111("DPM++ SDE Karras")
        with pytest.raises(PresetError, match=r"torchsde"):
            check_sampler_runs("dpmpp_sde", KARRAS, 20, "x")


@pytest.mark.parametrize("name, schedule, said", [
    ("Heun", "", "sampler 'Heun' has no equivalent"),
    ("DPM adaptive", "", "sampler 'DPM adaptive' has no equivalent"),
    ("Euler a", "Karras", "'Euler a Karras' has no equivalent"),
    ("DPM++ 2M", "Exponential", "schedule type 'Exponential' has no equivalent"),
])
def test_a_sampler_without_an_equivalent_is_named(name, schedule, said):
    with pytest.raises(PresetError, match=said):
        from_a1111(name, schedule)


def test_a_sampler_name_fixes_its_arguments():
    with pytest.raises(PresetError, match="algorithm_type = 'sde-dpmsolver\\+\\+'"):
        check_sampler_runs("dpmpp_2m_sde", {"algorithm_type": "dpmsolver++"}, 10, "x")
    assert is_noisy("euler_a", {}) and is_noisy("dpmpp_2m_sde", {}) and is_noisy("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"})
    assert not is_noisy("dpmpp_2m", {}) and not is_noisy("ddim", {})


def test_the_dry_run_of_a_noisy_sampler_leaves_torchs_global_generator_alone():
    from dreamy.recipes.samplers import _dry_run

    torch.manual_seed(123)
    before = torch.get_rng_state()
    _dry_run.cache_clear()
    check_sampler_runs("euler_a", SD1_SCHEDULE, 7, "x")
    assert torch.equal(torch.get_rng_state(), before)


# ---- one generator per seed ----

NOISY = ["euler_a", "dpmpp_2m_sde", *(["dpmpp_sde"] if HAS_TORCHSDE else [])]
ALL = [*NOISY, "euler", "dpmpp_2m", "ddim", "pndm"]
KWARGS = {"dpmpp_sde": KARRAS, "dpmpp_2m_sde": KARRAS, "ddim": DDIM, "pndm": from_a1111("PLMS")[1]}


def _latents(model, sampler, seeds, steps=4):
    from dreamy.dreaming.blocks import denoise, encode_prompt, initial_noise
    from dreamy.recipes.recipe import resolve

    recipe = resolve("biased-dreams", "dream", {"sampler": sampler, "scheduler": KWARGS.get(sampler, SD1_SCHEDULE),
                                                "steps": steps, "guidance": 5.0}, unlock=True)
    cond, uncond = encode_prompt(model, "a red house"), encode_prompt(model, "")
    noise = torch.cat([initial_noise(model, s, 64, 64) for s in seeds])
    return denoise(model, recipe, noise, cond, uncond, seeds=seeds), (model, recipe, noise, cond, uncond)


@pytest.mark.parametrize("sampler", ALL)
def test_seed_5_alone_is_seed_5_in_a_batch_of_3(tiny_model, sampler):
    alone, _ = _latents(tiny_model, sampler, [5])
    batch, _ = _latents(tiny_model, sampler, [9, 5, 7])
    assert torch.equal(alone[0], batch[1]), f"{sampler}: seed 5 depends on its batch"
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("sampler", NOISY)
def test_the_step_noise_is_the_seeds_own(tiny_model, sampler):
    """The per-step noise comes from the seed (not torch's global generator): the same seed gives the
    same latents whatever the global state, and other step noise gives other latents."""
    from dreamy.dreaming.blocks import denoise

    torch.manual_seed(1)
    a, args = _latents(tiny_model, sampler, [5])
    torch.manual_seed(2)
    b, _ = _latents(tiny_model, sampler, [5])
    assert torch.equal(a, b)
    other = denoise(*args, seeds=[6])  # seed 5's start, seed 6's step noise
    assert not torch.equal(a, other)
    with pytest.raises(ValueError, match="needs the rows' seeds"):
        denoise(*args)


@pytest.mark.parametrize("sampler, cls, extra", [
    ("euler_a", "EulerAncestralDiscreteScheduler", {}),
    ("dpmpp_2m_sde", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
])
def test_noisy_samplers_match_stock_diffusers_with_a_generator_per_image(tiny_model, tiny_dir, sampler, cls, extra):
    """Stock StableDiffusionPipeline with generator=torch.Generator("cpu").manual_seed(seed), one image
    at a time, against Dreamy's batch of two: bit-identical on the CPU."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    from dreamy.dreaming.dreams import dream

    ov = {"width": 64, "height": 64, "steps": 4, "sampler": sampler, "scheduler": KWARGS.get(sampler, SD1_SCHEDULE)}
    results = dream(tiny_model, "biased-dreams", "3,11", overrides=ov, unlock=True, batch_size=2)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = getattr(diffusers, cls)(**SD1_SCHEDULE, **extra)
    pipe.set_progress_bar_config(disable=True)
    s = results[0].recipe.settings
    for r in results:
        out = pipe(s.prompt, negative_prompt=s.negative_prompt, guidance_scale=s.guidance, num_inference_steps=s.steps,
                   width=64, height=64, generator=torch.Generator("cpu").manual_seed(r.seed))
        assert np.array_equal(np.asarray(out.images[0]), np.asarray(r.image)), f"{sampler} seed {r.seed}"


def test_the_parameters_written_name_the_sampler_as_a1111_does(tiny_model, tmp_path):
    from dreamy.dreaming.dreams import dream
    from dreamy.png.metadata import read_text_chunks

    ov = {"width": 64, "height": 64, "steps": 2, "sampler": "dpmpp_2m", "scheduler": KARRAS}
    [r] = dream(tiny_model, "biased-dreams", "1", overrides=ov, unlock=True, out_dir=tmp_path)
    assert "Sampler: DPM++ 2M Karras," in read_text_chunks(r.path)["parameters"]


# ---- Recall / "Use its settings" of an A1111 file ----

A1111_TEXT = ("biomorphic, (fractalism:0.7), a (glowing:1.2) spiral, [haze]\n"
              "Negative prompt: (blurry:1.3), lowres\n"
              "Steps: 2, Sampler: Euler a, CFG scale: 12.5, Seed: 2042420948, Size: 64x64, Model hash: abcdef1234")


def _png(path, text):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_use_its_settings_carries_the_sampler_and_the_syntax(tmp_path):
    from dreamy.png.info import describe_png, dream_form, reproducible

    info = describe_png(_png(tmp_path / "a.png", A1111_TEXT))
    assert (info.values["sampler"], info.values["scheduler"], info.values["prompt_syntax"]) == \
        ("euler_a", SD1_SCHEDULE, "a1111")
    can, cannot = reproducible(info)
    assert {"sampler", "prompt_syntax"} <= set(can) and "Sampler" not in cannot and info.notes == []
    form = dream_form(tmp_path / "a.png", "biased-dreams")
    assert {"sampler", "scheduler", "prompt_syntax", "guidance"} <= set(form.unlock)
    form = dream_form(tmp_path / "a.png", "gigafractal")  # its own recipe's preset: sampler, CFG and syntax agree
    assert not {"sampler", "scheduler", "prompt_syntax", "guidance"} & set(form.unlock)


def test_a_sampler_without_an_equivalent_is_said_plainly(tmp_path):
    from dreamy.png.info import describe_png, foreign_refusal

    info = describe_png(_png(tmp_path / "h.png", A1111_TEXT.replace("Euler a", "Heun")))
    assert "sampler" not in info.values and info.values["prompt_syntax"] == "a1111"
    said = foreign_refusal(info, "h.png")
    assert "A1111's sampler 'Heun' has no equivalent in Dreamy" in said and "preset's sampler is used" in said
    assert "not with its Sampler, Model hash" in said


def test_cli_recall_use_settings_dreams_with_euler_a_and_the_weights(tmp_path, capsys):
    from dreamy.cli.main import main
    from dreamy.png.metadata import read_recipe

    png = _png(tmp_path / "a.png", A1111_TEXT)
    rc = main(["recall", str(png), "--out", str(tmp_path / "out"), "--use-settings", "--model", "tiny",
               "--unlock", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "prompt_syntax, sampler, scheduler, seed" in out.err and "not reproduced: Model hash" in out.err
    r = read_recipe(out.out.strip())
    s = r.settings
    assert (s.sampler, s.scheduler, s.prompt_syntax, s.guidance, s.steps, r.seed) == \
        ("euler_a", SD1_SCHEDULE, "a1111", 12.5, 2, 2042420948)
    assert s.prompt.startswith("biomorphic, (fractalism:0.7)")
    assert json.loads(json.dumps(r.to_dict()))["settings"]["prompt_syntax"] == "a1111"
