from pathlib import Path

import pytest

from dreamy.errors import LockedFieldError, PresetError
from dreamy.recipes.presets import list_presets, load_preset
from dreamy.recipes.recipe import resolve


def test_builtin_presets_pin_the_package_deal():
    assert {"biased-dreams", "sweet-spot", "too-far", "cooked"} <= set(list_presets())
    p = load_preset("biased-dreams")
    d = p.dream
    assert d.prompt == "monumental, dramatic, atmospheric, transcendent"
    assert (d.negative_prompt, d.guidance, d.steps, d.width, d.height, d.sampler, d.precision) == (
        "", 3.0, 50, 512, 512, "ddim", "fp16")
    assert d.scheduler == {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                           "clip_sample": False, "set_alpha_to_one": False}
    t = p.train
    assert (t.mode, t.train_text_encoder, t.optimizer, t.learning_rate, t.lr_scheduler, t.lr_warmup_steps) == (
        "full", True, "adamw8bit", 2e-6, "constant", 0)
    assert (t.max_train_steps, t.train_batch_size, t.resolution, t.mixed_precision, t.prior_preservation) == (
        1200, 1, 512, "fp16", False)
    assert t.instance_prompt == "a photo of sks person"
    e = p.enlarge
    assert (e.supir_model, e.sdxl_base, e.steps, e.s_cfg, e.spt_linear_cfg, e.s_stage1, e.control_scale) == (
        "SUPIR-v0Q", "Juggernaut XL v9", 30, 3.0, 4.0, -1.0, 0.9)
    assert (e.s_churn, e.s_noise, e.color_fix, e.upscale) == (5.0, 1.003, "wavelet", 4.0)
    assert e.positive_prompt == "sharp textures, fine grain, rich color depth"
    assert e.negative_prompt == "blurry, low quality, jpeg artifacts"
    assert set(p.locked["dream"]) == {"prompt", "negative_prompt", "prompt_syntax", "guidance", "steps", "width",
                                      "height", "sampler", "scheduler", "precision"}


@pytest.mark.parametrize("name, lr, steps", [("sweet-spot", 2e-6, 1200), ("too-far", 2e-6, 1600), ("cooked", 4e-6, 1600)])
def test_corridor_presets(name, lr, steps):
    p = load_preset(name)
    assert (p.train.learning_rate, p.train.max_train_steps) == (lr, steps)
    assert "learning_rate" in p.locked["train"] and "max_train_steps" in p.locked["train"]
    assert p.dream == load_preset("biased-dreams").dream  # inherited whole


def test_scheduler_built_exactly_as_the_recipe():
    from diffusers import DDIMScheduler

    from dreamy.recipes.samplers import make_scheduler

    ours = make_scheduler("ddim", load_preset("biased-dreams").dream.scheduler)
    reference = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    assert dict(ours.config) == dict(reference.config)
    assert ours.config.steps_offset == 0 and ours.config.timestep_spacing == "leading"
    ours.set_timesteps(50)
    assert ours.timesteps[:3].tolist() == [980, 960, 940] and ours.timesteps[-1] == 0


def test_locked_field_is_refused_unless_unlocked():
    with pytest.raises(LockedFieldError, match=r"'guidance' is locked by preset 'biased-dreams'.*--unlock guidance"):
        resolve("biased-dreams", overrides={"guidance": 5.0})
    with pytest.raises(LockedFieldError, match="'steps' is locked"):
        resolve("biased-dreams", overrides={"guidance": 5.0, "steps": 20}, unlock=["guidance"])
    r = resolve("biased-dreams", overrides={"guidance": 5.0, "steps": 50}, unlock=["guidance"])
    assert r.settings.guidance == 5.0
    assert r.unlocked == {"guidance": {"preset": 3.0, "value": 5.0}}  # steps unchanged: not recorded
    assert resolve("biased-dreams", overrides={"guidance": 3.0}).unlocked == {}  # same value is no change
    assert resolve("biased-dreams", overrides={"steps": 20}, unlock=True).unlocked == {
        "steps": {"preset": 50, "value": 20}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps": 0}, "'steps' must be between 1 and 1000"),
        ({"guidance": -1}, "'guidance' must be between 0.0 and 50.0"),
        ({"guidance": "high"}, "'guidance' must be a number"),
        ({"width": 500}, "multiple of 8"),
        ({"sampler": "k_lms"}, "must be one of ddim"),
        ({"guidence": 3}, "did you mean 'guidance'"),
        ({"steps": 2.5}, "'steps' must be an integer"),
        ({"guidance": float("nan")}, "'guidance' must be a number"),
    ],
)
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(PresetError, match=message):
        resolve("biased-dreams", overrides=overrides, unlock=True)


def test_unlocking_an_unknown_field_is_refused():
    with pytest.raises(PresetError, match=r"Cannot unlock \['cfg'\]"):
        resolve("biased-dreams", unlock=["cfg"])


def _write(tmp_path: Path, text: str, name: str = "mine") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, message",
    [
        ("[dream]\nguidance = 'x'\n", r"mine.toml \[dream\]: 'guidance' must be a number, got str"),
        ("[dream]\nstepz = 3\n", r"unknown setting 'stepz' \(did you mean 'steps'\?\)"),
        ("[dreams]\n", "unknown top-level key"),
        ("[dream]\nsteps = 0\n", "'steps' must be between 1 and 1000"),
        ("[dream]\nlocked = ['nope']\n", r"'locked' names unknown setting\(s\) \['nope'\]"),
        ("[dream]\nlocked = 'prompt'\n", "'locked' must be a list"),
        ("[dream\n", "not valid TOML"),
        ("extends = 'mine'\n", "'extends' makes a loop"),
        ("extends = 'no-such-preset'\n", "No preset named 'no-such-preset'"),
        ("[dream.scheduler]\nbeta_begin = 0.1\n", r"DDIMScheduler takes no argument\(s\) \['beta_begin'\]"),
        ("[train]\nlearning_rate = 1e9\n", "'learning_rate' must be between"),
        ("dream = 3\n", "'dream' must be a table"),
    ],
)
def test_invalid_preset_files_get_precise_errors(tmp_path, monkeypatch, text, message):
    monkeypatch.setenv("DREAMY_PRESETS", str(tmp_path))
    _write(tmp_path, text)
    with pytest.raises(PresetError, match=message):
        load_preset("mine")


def test_user_preset_extends_and_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMY_PRESETS", str(tmp_path))
    _write(tmp_path, 'extends = "biased-dreams"\ndescription = "mine"\n[dream]\nguidance = 4.5\nlocked = ["guidance"]\n')
    p = load_preset("mine")
    assert p.name == "mine" and p.dream.guidance == 4.5 and p.dream.steps == 50
    assert p.locked["dream"] == ("guidance",)
    assert resolve(p, overrides={"steps": 20}).settings.steps == 20  # no longer locked here
    with pytest.raises(LockedFieldError):
        resolve(p, overrides={"guidance": 1.0})
    assert load_preset(tmp_path / "mine.toml").name == "mine"  # by path too


def test_locked_changes_name_what_a_form_must_unlock():
    from dreamy.recipes.recipe import locked_changes

    p = load_preset("biased-dreams")
    assert locked_changes(p, "dream", {"prompt": p.dream.prompt, "guidance": 3.0, "steps": 50}) == []
    values = {"height": 64, "steps": 2, "width": 64, "prompt": p.dream.prompt}
    assert locked_changes("biased-dreams", "dream", values) == ["steps", "width", "height"]  # the preset's order
    assert set(locked_changes(p, "dream", values)) == set(resolve(p, "dream", values, unlock=True).unlocked)
    assert locked_changes(p, "train", {"checkpointing_steps": 7, "validation_seeds": "0"}) == []  # not locked
    assert locked_changes(p, "train", {"learning_rate": 1e-3}) == ["learning_rate"]


@pytest.mark.parametrize("name", ["biased-dreams ", "Biased-Dreams", " biased-dreams", "no-such-preset", "/etc/passwd",
                                  "../presets/biased-dreams", "biased-dreams.toml", "presets/biased-dreams.toml", "",
                                  None, 7])
def test_a_preset_named_by_an_untrusted_source_is_found_by_exact_name_only(name):
    from dreamy.recipes.presets import load_named_preset

    with pytest.raises(PresetError):
        load_named_preset(name)


def test_a_named_preset_is_the_installed_one():
    from dreamy.recipes.presets import load_named_preset

    assert load_named_preset("biased-dreams").name == "biased-dreams"
