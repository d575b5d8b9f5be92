"""A1111's samplers: names both ways, one generator per seed for the noisy ones (a seed's picture
never depends on its batch), parity with stock diffusers, and Recall of an A1111 file that names one."""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from dreamy.errors import PresetError
from dreamy.recipes.samplers import SD1_SCHEDULE, a1111_name, check_sampler_runs, from_a1111, is_noisy

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


def test_dpmpp_sde_karras_runs_and_its_name_goes_both_ways():
    assert from_a1111("DPM++ SDE Karras") == ("dpmpp_sde", KARRAS)
    assert from_a1111("DPM++ SDE", "Karras") == ("dpmpp_sde", KARRAS)
    assert from_a1111("DPM++ SDE") == ("dpmpp_sde", SD1_SCHEDULE)
    assert a1111_name("dpmpp_sde", KARRAS) == "DPM++ SDE Karras" and a1111_name("dpmpp_sde", {}) == "DPM++ SDE"
    check_sampler_runs("dpmpp_sde", KARRAS, 20, "test")


def test_without_torchsde_dpmpp_sde_is_refused_in_one_sentence(monkeypatch):
    """torchsde is a requirement; an install without it (someone embedding Dreamy) is told what to do."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchsde" else real(name, *a))
    with pytest.raises(PresetError, match=r"needs the torchsde package, which is not installed here \(pip install"):
        from_a1111("DPM++ SDE Karras")
    with pytest.raises(PresetError, match=r"torchsde"):
        check_sampler_runs("dpmpp_sde", {**KARRAS, "beta_end": 0.0121}, 20, "x")


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

NOISY = ["euler_a", "dpmpp_2m_sde", "dpmpp_sde"]
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


def test_dpmpp_sde_matches_stock_diffusers_seeded_per_image(tiny_model, tiny_dir):
    """Stock StableDiffusionPipeline, one image at a time, its DPMSolverSDEScheduler's Brownian tree
    seeded with the image's seed (``noise_sampler_seed``, as A1111 seeds it) and its generator too,
    against Dreamy's batch of three: bit-identical on the CPU, and no torchsde warning escapes."""
    from diffusers import DPMSolverSDEScheduler, StableDiffusionPipeline

    from dreamy.dreaming.dreams import dream

    ov = {"width": 64, "height": 64, "steps": 4, "sampler": "dpmpp_sde", "scheduler": KARRAS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = dream(tiny_model, "biased-dreams", "3,11,12", overrides=ov, unlock=True, batch_size=3)
    assert not [w for w in caught if "Should have" in str(w.message)]  # torchsde's harmless clamp note is silenced
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    s = results[0].recipe.settings
    for r in results:
        pipe.scheduler = DPMSolverSDEScheduler(**KARRAS, noise_sampler_seed=r.seed)
        out = pipe(s.prompt, negative_prompt=s.negative_prompt, guidance_scale=s.guidance, num_inference_steps=s.steps,
                   width=64, height=64, generator=torch.Generator("cpu").manual_seed(r.seed))
        assert np.array_equal(np.asarray(out.images[0]), np.asarray(r.image)), f"seed {r.seed}"


def test_dpmpp_sde_draws_its_brownian_noise_on_the_cpu_in_fp32():
    """Whatever the latents' device and dtype, a seed's Brownian tree is the fp32 CPU one (as its
    starting noise is), cast to the latents' dtype: a seed's noise does not depend on the machine."""
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    from dreamy.recipes.samplers import make_scheduler

    draws = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        scheduler = make_scheduler("dpmpp_sde", KARRAS)
        scheduler.set_timesteps(4)
        scheduler.noise_sampler_seed = [5, 9]
        x = torch.zeros(2, 4, 8, 8, dtype=dtype)
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x)
        s = scheduler.sigmas
        draws[dtype] = scheduler.noise_sampler(s[0], s[1])
        assert draws[dtype].dtype == dtype
    ref = BrownianTreeNoiseSampler(torch.zeros(2, 4, 8, 8), s[s > 0].min().item(), s.max().item(), [5, 9])(s[0], s[1])
    assert torch.equal(draws[torch.float32], ref)
    assert torch.equal(draws[torch.bfloat16], ref.to(torch.bfloat16)) and torch.equal(draws[torch.float64], ref.double())
    alone = BrownianTreeNoiseSampler(torch.zeros(1, 4, 8, 8), s[s > 0].min().item(), s.max().item(), [9])(s[0], s[1])
    assert torch.equal(alone[0], ref[1])  # seed 9's tree is its own, whatever row it is in


def test_dpmpp_sde_karras_round_trips_through_a1111_parameters(tiny_model, tmp_path):
    """Dreamy writes "Sampler: DPM++ SDE Karras"; that text, read as another tool's file, maps back."""
    from dreamy.dreaming.dreams import dream
    from dreamy.png.info import describe_png
    from dreamy.png.metadata import read_recipe, read_text_chunks

    ov = {"width": 64, "height": 64, "steps": 2, "sampler": "dpmpp_sde", "scheduler": KARRAS}
    [r] = dream(tiny_model, "biased-dreams", "4", overrides=ov, unlock=True, out_dir=tmp_path)
    text = read_text_chunks(r.path)["parameters"]
    assert "Sampler: DPM++ SDE Karras," in text
    assert (read_recipe(r.path).settings.sampler, read_recipe(r.path).settings.scheduler) == ("dpmpp_sde", KARRAS)
    info = describe_png(_png(tmp_path / "only-parameters.png", text))
    assert (info.values["sampler"], info.values["scheduler"], info.seed) == ("dpmpp_sde", KARRAS, 4)


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
