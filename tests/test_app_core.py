"""The core pieces the studio leans on: path checks, pickers, training sets, prompt sweeps, particles,
dropped-PNG summaries and out-of-memory messages. No server here; see test_app_api.py for that."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from dreamy.errors import DreamyError

# ---- paths ----

def test_user_paths_must_stay_inside_the_roots(tmp_path):
    from dreamy.paths import PathError, within

    root = tmp_path / "models"
    (root / "run").mkdir(parents=True)
    assert within(root / "run", [root]) == (root / "run").resolve()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    for bad in ("../../etc/passwd", "/etc/passwd", str(root / ".." / "outside"), str(root / "link"), "", "a\x00b"):
        with pytest.raises(PathError):
            within(bad, [root])


def test_model_sources_the_studio_accepts(tmp_path):
    from dreamy.paths import PathError, check_model_source

    root = tmp_path / "models"
    (root / "run").mkdir(parents=True)
    assert check_model_source("tiny", [root]) == "tiny"
    assert check_model_source("org/model", [root]) == "org/model"
    assert check_model_source(str(root / "run"), [root]) == str((root / "run").resolve())
    assert check_model_source("/opt/mine.safetensors", [root], allowed=["/opt/mine.safetensors"])  # from the CLI
    with pytest.raises(PathError, match="turned off on shared links"):
        check_model_source("org/model", [root], allow_hub=False)
    for bad in ("/etc/passwd", "../../etc/passwd", "~/.ssh/id_rsa", str(tmp_path)):
        with pytest.raises(PathError, match="outside the folders"):
            check_model_source(bad, [root])


def test_safe_names_never_escape_their_folder():
    from dreamy.paths import PathError, check_name, safe_filename

    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\x\\.bashrc") == "image.bashrc"  # never hidden
    assert safe_filename("my photo (1).JPG") == "my_photo_1.jpg"
    assert safe_filename("..") == "image" and safe_filename(".png") == "image.png"
    for bad in ("../x", "a/b", ".hidden", "", "x" * 101):
        with pytest.raises(PathError):
            check_name(bad)


def test_concurrent_jobs_each_claim_their_own_folder(tmp_path):
    from dreamy.layout import claim_run_dir, release_if_empty

    got: list = []
    threads = [threading.Thread(target=lambda: got.append(claim_run_dir(tmp_path, "dream"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 16 and all(d.is_dir() for d in got)
    release_if_empty(got[0])
    assert not got[0].exists()


# ---- pickers ----

def test_model_picker_lists_runs_and_each_checkpoint(tmp_path):
    from dreamy.layout import model_choices, runs

    run = tmp_path / "my-run" / "checkpoints"
    for step in (100, 200):
        (run / f"step-{step:04d}").mkdir(parents=True)
        (run / f"step-{step:04d}" / "dreamy-checkpoint.json").write_text("{}")
    (run / "step-0300").mkdir()  # incomplete: no checkpoint file yet
    choices = model_choices(tmp_path, [("tiny", "tiny")])
    assert [label for label, _ in choices] == ["tiny", "my-run · step 200", "my-run · step 100"]
    assert runs(tmp_path) == [("my-run (2 checkpoints, last step 200)", str((tmp_path / "my-run").resolve()))]


# ---- training sets ----

def test_adding_to_a_training_set_copies_under_safe_names_once(tmp_path):
    from dreamy.training.sets import add_to_training_set, inspect_training_set

    src = tmp_path / "src"
    src.mkdir()
    a = src / "a.png"
    Image.new("RGB", (80, 80), "red").save(a)
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (600, 600), "blue").save(other / "a.png")  # same name, other picture
    (src / "notes.txt").write_text("hi")
    (src / "fake.png").write_text("not a png")
    Image.new("RGB", (40, 40)).save(src / "tiny.png")
    root = tmp_path / "sets"
    report = add_to_training_set([a, a, other / "a.png", src / "notes.txt", src / "fake.png",
                                  src / "tiny.png"], " faces", root, resolution=512)
    assert [p.name for p in report.added] == ["a.png", "a.png", "a-1.png"]
    assert report.notes[0] == "notes.txt: not an image file, skipped"
    assert report.notes[1].startswith("fake.png: not an image in a supported format") and "corrupt" in report.notes[1]
    assert report.notes[2] == "tiny.png: only 40x40 pixels; images must be at least 64 px on each side, skipped"
    assert (report.name, report.exists, report.files, report.sets) == ("faces", True, 2, ["faces"])
    assert report.usable == 2 and [c.name for c in report.checks] == ["a-1.png", "a.png"]  # refused: not copied
    checks = {c.name: c for c in inspect_training_set(root / "faces", 512)}
    assert checks["a.png"].usable and "smaller than 512 px: will be upscaled" in checks["a.png"].notes
    assert checks["a-1.png"].usable and not checks["a-1.png"].notes
    shutil.copy(src / "fake.png", root / "faces")  # put there by hand: flagged, never trained on
    shutil.copy(src / "tiny.png", root / "faces")
    checks = {c.name: c for c in inspect_training_set(root / "faces", 512)}
    assert not checks["fake.png"].usable and "not an image" in checks["fake.png"].line
    assert not checks["tiny.png"].usable and "at least 64 px" in checks["tiny.png"].line
    assert not add_to_training_set([src / "tiny.png"], "only-refused", root).exists  # nothing kept, no empty set
    with pytest.raises(DreamyError, match="not a usable training set name"):
        add_to_training_set([a], "../up", root)


def test_removing_from_a_training_set_takes_the_photo_and_its_caption_and_nothing_else(tmp_path):
    from dreamy.training.sets import add_to_training_set, remove_from_training_set

    root = tmp_path / "sets"
    for name in ("a.png", "b.png", "c.jpg", "c.png"):
        Image.new("RGB", (80, 80)).save(tmp_path / name)
    add_to_training_set([tmp_path / n for n in ("a.png", "b.png", "c.jpg", "c.png")], "faces", root)
    folder = root / "faces"
    (folder / "a.txt").write_text("a caption")
    (folder / "c.txt").write_text("the caption of both c's")
    (tmp_path / "outside.png").write_bytes((tmp_path / "a.png").read_bytes())
    for bad in ("../../outside.png", "missing.png", "", ".", "..", "sub/a.png", str(folder / "a.png")):
        with pytest.raises(DreamyError, match="has no photo named"):
            remove_from_training_set(root, "faces", ["b.png", bad])
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a.txt", "b.png", "c.jpg", "c.png", "c.txt"]
    report = remove_from_training_set(root, "faces", ["a.png", "c.png", "a.png"], resolution=64)
    assert sorted(p.name for p in folder.iterdir()) == ["b.png", "c.jpg", "c.txt"]  # c.jpg keeps its caption
    assert [c.name for c in report.checks] == ["b.png", "c.jpg"] and (tmp_path / "outside.png").is_file()
    with pytest.raises(DreamyError, match="not a usable training set name"):
        remove_from_training_set(root, "../sets", ["b.png"])


def test_a_training_set_report_says_what_the_studio_shows(tmp_path):
    from dreamy.training.sets import add_to_training_set, training_set_report

    root = tmp_path / "sets"
    new = add_to_training_set([], "later", root, resolution=64)  # nothing given: nothing made
    assert (new.exists, new.files, new.checks, new.sets) == (False, 0, [], []) and not (root / "later").exists()
    photo = tmp_path / "p.png"
    Image.new("RGB", (80, 80)).save(photo)
    add_to_training_set([photo], "later", root)
    (root / "later" / "p.txt").write_text("a caption")
    (root / "later" / ".hidden").write_text("")
    report = training_set_report(root, "later")
    assert (report.files, report.checks, report.sets) == (2, [], ["later"])  # no resolution: not inspected
    assert training_set_report(root, "later", 64).usable == 1
    with pytest.raises(DreamyError, match="not a usable training set name"):
        training_set_report(root, ".hidden")


def test_training_on_a_set_not_made_yet_is_refused_after_the_recipe_checks(tmp_path):
    from dreamy.errors import LockedFieldError, TrainDataError
    from dreamy.training.sets import train_on_set

    kw = {"name": "run", "preset": "sweet-spot", "base": "tiny", "models_dir": tmp_path / "models", "device": "cpu"}
    with pytest.raises(LockedFieldError):  # the recipe speaks first, as train() orders its checks
        next(train_on_set(tmp_path / "sets", "nothing-yet", overrides={"learning_rate": 1e-3}, **kw))
    with pytest.raises(TrainDataError, match="Training set 'nothing-yet' has no photos yet"):
        next(train_on_set(tmp_path / "sets", "nothing-yet", **kw))
    assert not (tmp_path / "models" / "run").exists()


# ---- prompt sweeps ----

def test_prompt_variants_expand_and_need_the_prompt_unlocked(tiny_model, tmp_path):
    from dreamy.dreaming.prompt_sweeps import expand_prompts, prompt_sweep_iter, write_prompt_grid
    from dreamy.errors import LockedFieldError

    assert expand_prompts("{prompt}, by Turner\n\n  {prompt},  by Turner \nstone", "sea") == ["sea, by Turner", "stone"]
    with pytest.raises(DreamyError, match="at least one"):
        expand_prompts(" \n ", "sea")
    small = {"width": 64, "height": 64, "steps": 2}
    with pytest.raises(LockedFieldError, match="'prompt' is locked"):
        next(prompt_sweep_iter(tiny_model, "biased-dreams", "a\nb", "0", tmp_path, overrides=small,
                               unlock=["width", "height", "steps"]))
    assert not list(tmp_path.iterdir())  # refused before any image
    cells = list(prompt_sweep_iter(tiny_model, "biased-dreams", "a\nb", "0-1", tmp_path, overrides=small, unlock=True))
    assert [(c.row, c.image.seed) for c in cells] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert json.loads((tmp_path / "prompts.json").read_text()) == ["a", "b"]  # row NN is prompt NN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00", "01", "prompts.json"]
    assert cells[2].image.recipe.unlocked["prompt"]["value"] == "b"
    grid = write_prompt_grid(cells, tmp_path / "grid.png", cell=64)
    assert Image.open(grid).info["dreamy_prompt_grid"] == '{"prompts": ["a", "b"], "seeds": [0, 1]}'


def test_a_prompt_sweep_checks_every_variant_before_loading_a_model(tmp_path, monkeypatch):
    from dreamy.dreaming import prompt_sweeps
    from dreamy.errors import LockedFieldError

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the variants were checked")

    monkeypatch.setattr(prompt_sweeps, "_cells", no_loading)
    small = {"width": 64, "height": 64, "steps": 2}
    with pytest.raises(LockedFieldError, match="'prompt' is locked"):  # refused when called, not on next()
        prompt_sweeps.prompt_sweep_iter("no/such-model", "biased-dreams", "a\nb", "0", tmp_path, overrides=small,
                                        unlock=["width", "height", "steps"])
    with pytest.raises(LockedFieldError, match="'prompt' is locked"):
        next(prompt_sweeps.prompt_sweep_stream("no/such-model", "biased-dreams", "a\nb", "0", tmp_path,
                                               overrides=small, unlock=["width", "height", "steps"]))
    assert not list(tmp_path.iterdir())


def test_a_prompt_sweep_stream_ends_with_its_grid_and_stops_cleanly(tiny_model, tmp_path):
    from dreamy.dreaming.prompt_sweeps import prompt_sweep_stream
    from dreamy.dreaming.streams import Ended, Landed
    from dreamy.events import CancelToken

    small = {"width": 64, "height": 64, "steps": 2}
    events = list(prompt_sweep_stream(tiny_model, "biased-dreams", "a\nb", "0-1", tmp_path / "all", overrides=small,
                                      unlock=True))
    assert [(e.item.row, e.item.image.seed, e.done, e.total) for e in events[:-1]] == [
        (0, 0, 1, 4), (0, 1, 2, 4), (1, 0, 3, 4), (1, 1, 4, 4)]
    end = events[-1]
    assert isinstance(end, Ended) and not end.stopped and end.sheet == tmp_path / "all" / "prompt-grid.png"
    assert json.loads(Image.open(end.sheet).info["dreamy_prompt_grid"])["prompts"] == ["a", "b"]
    token = CancelToken()
    stopped = []
    for e in prompt_sweep_stream(tiny_model, "biased-dreams", "a\nb", "0-1", tmp_path / "stop", overrides=small,
                                 unlock=True, cancel=token):
        stopped.append(e)
        if isinstance(e, Landed) and e.done == 3:
            token.cancel()
    end = stopped[-1]
    assert (end.done, end.total, end.stopped) == (3, 4, True) and end.sheet.is_file()  # the grid of what finished


# ---- particles ----

def test_particles_loop_seamlessly_and_follow_the_controls(tmp_path):
    from dreamy.particles import PERIOD_S, particle_grid, render_frames, simulate, write_gif

    assert particle_grid(0, 1.0) == (16, 16) and particle_grid(1, 0.5) == (128, 64)
    x0, y0 = simulate(0.5, 0.4, 0.0, 2.0, 1.0)
    x1, y1 = simulate(0.5, 0.4, PERIOD_S / 2.0, 2.0, 1.0)  # one period at speed 2
    assert np.allclose(x0, x1) and np.allclose(y0, y1)
    still = simulate(0.5, 0.0, 1.3, 1.0, 1.0)[0]
    assert np.allclose(still, simulate(0.5, 0.0, 0.0, 1.0, 1.0)[0])  # no drift, no motion
    image = Image.new("RGB", (100, 50), (10, 200, 30))
    frames = render_frames(image, density=0.2, drift=0.5, speed=1.0, frames=6, size=128)
    assert len(frames) == 6 and frames[0].size == (128, 64)
    assert np.asarray(frames[0]).reshape(-1, 3).max(axis=0).tolist() == [10, 200, 30]
    src = tmp_path / "in.png"
    image.save(src)
    with Image.open(write_gif(src, tmp_path / "p.gif", frames=4, size=64)) as gif:
        assert gif.n_frames == 4 and gif.info["loop"] == 0
    with pytest.raises(DreamyError):
        render_frames(image, density=2.0)


# ---- dropped PNGs ----

def test_a_foreign_png_maps_onto_dream_settings_and_hostile_values_are_dropped(tmp_path):
    from dreamy.png.info import describe_png

    def png(text):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", text)
        p = tmp_path / f"{abs(hash(text))}.png"
        Image.new("RGB", (8, 8)).save(p, pnginfo=info)
        return p

    s = describe_png(png("a tower\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, CFG scale: 6.5, Seed: 42, "
                         "Size: 512x768"))
    assert s.kind == "foreign" and s.seed == 42
    assert s.values == {"prompt": "a tower", "negative_prompt": "fog", "guidance": 6.5, "steps": 20,
                        "width": 512, "height": 768, "prompt_syntax": "a1111", "sampler": "euler_a",
                        "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}}
    s = describe_png(png("x" * 200_000 + "\nSteps: lots, CFG scale: nan, Seed: -1, Size: 1e9x2"))
    assert s.kind == "foreign" and s.seed is None and set(s.values) == {"prompt", "negative_prompt", "prompt_syntax"}
    assert len(s.values["prompt"]) <= 4000
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert describe_png(plain).kind == "none"


def test_a_dropped_png_fills_the_dream_form_under_its_preset_with_the_locks_it_changes(tmp_path):
    from dreamy.png.info import dream_form

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a tower\nNegative prompt: fog\nSteps: 20, CFG scale: 6.5, Seed: 42, Size: 512x768")
    foreign = tmp_path / "foreign.png"
    Image.new("RGB", (8, 8)).save(foreign, pnginfo=info)
    form = dream_form(foreign, "biased-dreams")  # no preset of its own: the form's stays
    assert (form.preset, form.seed, form.model) == ("biased-dreams", 42, None)
    assert form.values["steps"] == 20 and set(form.unlock) >= {"prompt", "guidance", "steps", "height"}
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(DreamyError, match="carries no recipe"):
        dream_form(plain, "biased-dreams")


# ---- out of memory ----

def test_out_of_memory_becomes_a_message_with_a_suggestion():
    from dreamy.errors import OutOfMemory, user_error

    err = user_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), "train")
    assert isinstance(err, OutOfMemory) and "Out of GPU memory during train: use LoRA" in str(err)
    err = user_error(RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"), "enlarge")
    assert "Out of memory during enlarge" in str(err)
    assert user_error(ValueError("a bug"), "dream") is None


def test_prompt_helper_needs_a_word_before_it_loads_a_model():
    from dreamy.prompt_helper import expand, load_prompt_model

    before = load_prompt_model.cache_info()  # other tests may have loaded chat models in this process
    with pytest.raises(DreamyError, match="Give a word"):
        expand("  \n ", "no/such-model")
    after = load_prompt_model.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # refused before any model was looked for
