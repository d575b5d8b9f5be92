"""The studio through its HTTP API (gradio_client), as a script or another program would use it.

One studio runs on a free loopback port with the tiny model, outputs and models in a temporary
folder. Dreams are 64 px with 2 steps, so the preset's locked size and steps are unlocked explicitly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

pytestmark = pytest.mark.timeout(300)

PACKAGE_DEAL = "monumental, dramatic, atmospheric, transcendent"
SMALL = {"prompt": PACKAGE_DEAL, "negative_prompt": "", "guidance": 3.0, "steps": 2, "width": 64, "height": 64}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_studio(root: Path, **studio_kwargs):
    """The real studio (build + launch settings) on a free loopback port; yields (url, studio)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    previous_tmp = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio-tmp")  # uploads and returned files stay in this test's folder
    import app
    from studio.session import Studio

    studio = Studio(default_model="tiny", outputs=root / "outputs", models=root / "models", **studio_kwargs)
    studio.models.mkdir(parents=True, exist_ok=True)
    demo = app.build(studio)
    _, url, _ = app.launch(demo, studio, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url, studio
    finally:
        demo.close()
        if previous_tmp is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous_tmp


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("studio")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    c = Client(studio[0], verbose=False, download_files=str(studio[1].outputs.parent / "downloads"))
    yield c
    c.close()


def dream(client, seeds="0-1", unlock=True, model="tiny", **fields):
    f = {**SMALL, **fields}
    return client.predict(model, "biased-dreams", seeds, unlock, 1, f["prompt"], f["negative_prompt"], f["guidance"],
                          f["steps"], f["width"], f["height"], api_name="/dream")


def test_every_endpoint_has_a_stable_name_and_ui_events_stay_private(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert names == {"/dream", "/stop", "/prompt_sweep", "/checkpoint_grid", "/read_recipe", "/recall", "/train",
                     "/resume_train", "/stop_train", "/add_photos", "/remove_photos", "/export", "/enlarge",
                     "/enlarge_many", "/stop_enlarge", "/particles_gif", "/word_picture"}


def test_dream_streams_pngs_that_carry_their_recipe(client, studio):
    from dreamy.png.metadata import read_recipe

    job = client.submit("tiny", "biased-dreams", "3-5", True, 1, *SMALL.values(), api_name="/dream")
    updates = list(job)  # one update per image as it lands, then the final one with the contact sheet
    gallery, sheet, status, *_ = job.result()
    assert len(updates) >= 3 and [len(u[0]) for u in updates[:3]] == [1, 2, 3]
    assert [g["caption"] for g in gallery] == ["seed 3", "seed 4", "seed 5"]
    for g, seed in zip(gallery, (3, 4, 5), strict=True):
        recipe = read_recipe(Path(g["image"]))  # survives the trip through the gallery: PNG, not webp
        assert recipe.seed == seed and recipe.settings.width == 64 and recipe.preset == "biased-dreams"
        assert recipe.unlocked["steps"] == {"preset": 50, "value": 2}
        assert f"Seed: {seed}" in Image.open(g["image"]).info["parameters"]
    assert Image.open(sheet).size[0] > 64 and "3 dreamed" in status
    on_disk = sorted(p.name for p in (studio[1].outputs / "dream").glob("*/*.png"))
    assert {"seed000003.png", "seed000004.png", "seed000005.png", "contact-sheet.png"} <= set(on_disk)


def test_a_locked_field_cannot_be_changed_through_the_api(client, studio):
    from gradio_client.exceptions import AppError

    before = set((studio[1].outputs / "dream").glob("*")) if (studio[1].outputs / "dream").exists() else set()
    for change in ({"prompt": "a cat"}, {"guidance": 3.0001}, {"steps": 3}):
        with pytest.raises(AppError, match="is locked by preset 'biased-dreams'.*Unlock"):
            dream(client, "0", unlock=False, **{**SMALL, "steps": 50, "width": 512, "height": 512, **change})
    after = set((studio[1].outputs / "dream").glob("*"))
    assert after == before  # refused before any folder or model work


def test_recall_shows_the_recipe_and_redreams_the_same_pixels(client):
    from gradio_client import handle_file

    gallery, *_ = dream(client, "7")
    png = gallery[0]["image"]
    info = client.predict(handle_file(png), api_name="/read_recipe")
    assert "seed **7**" in info and "preset **biased-dreams**" in info and "steps 50 → 2" in info
    again, status = client.predict(handle_file(png), api_name="/recall")
    assert "Re-dreamed seed 7" in status
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(png)))


def test_a_foreign_png_shows_its_parameters_but_is_not_recreated(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse at dusk\nNegative prompt: blurry\nSteps: 30, Sampler: Euler a, "
                                "CFG scale: 7, Seed: 1234, Size: 512x768, Model: dreamshaper")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    shown = client.predict(handle_file(str(path)), api_name="/read_recipe")
    assert "another tool" in shown and "| Sampler | Euler a |" in shown and "a lighthouse at dusk" in shown
    with pytest.raises(AppError, match="made by another tool"):
        client.predict(handle_file(str(path)), api_name="/recall")


def test_stop_ends_a_running_dream_at_the_next_step_and_keeps_what_is_done(client, studio):
    job = client.submit("tiny", "biased-dreams", "100-159", True, 1, *{**SMALL, "steps": 3}.values(), api_name="/dream")
    deadline = time.monotonic() + 60
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.outputs(), "the dream never started"
    stop_status, stop_sheet = client.predict(api_name="/stop")  # answers once the dream has wound down
    gallery, sheet, status, *_ = job.result(timeout=60)
    assert status.startswith("Stopped after") and 1 <= len(gallery) < 60 and stop_status == status
    assert Path(stop_sheet).name == Path(sheet).name  # the contact sheet of what was finished (or its one image)
    folder = next(p for p in (studio[1].outputs / "dream").iterdir() if (p / "seed000100.png").exists())
    assert len(list(folder.glob("seed*.png"))) == len(gallery)  # every finished image kept, none half-written
    assert not list(folder.glob(".*"))
    assert client.predict(api_name="/stop")[0] == "Nothing of yours is running."


def test_prompt_sweep_needs_the_prompt_unlocked_and_draws_a_labelled_grid(client):
    from gradio_client.exceptions import AppError

    args = ("{prompt}, by Turner\n{prompt}, by Yoshida", "", 3.0, 2, 64, 64)
    with pytest.raises(AppError, match="'prompt' is locked"):  # even with every other field as the preset has it
        client.predict("tiny", "biased-dreams", "0-1", False, args[0], "", 3.0, 50, 512, 512, api_name="/prompt_sweep")
    gallery, grid, status, *_ = client.predict("tiny", "biased-dreams", "0-1", True, *args, api_name="/prompt_sweep")
    assert [g["caption"] for g in gallery] == ["1 · seed 0", "1 · seed 1", "2 · seed 0", "2 · seed 1"]
    assert Image.open(grid).info["dreamy_prompt_grid"].count("by Turner") == 1
    from dreamy.png.metadata import read_recipe

    assert read_recipe(Path(gallery[2]["image"])).settings.prompt == PACKAGE_DEAL + ", by Yoshida"


def test_train_a_few_steps_then_the_checkpoint_by_seed_grid(client, studio, tmp_path):
    from gradio_client import handle_file

    photos = []
    for i in range(3):
        p = tmp_path / f"photo {i}.png"
        Image.new("RGB", (96, 80), (60 * i, 120, 200 - 40 * i)).save(p)
        photos.append(handle_file(str(p)))
    thumbs, report, _ = client.predict(photos, "subject", 64, api_name="/add_photos")
    assert len(thumbs) == 3 and "**3** usable" in report
    train_args = ("subject", "tiny", "sweet-spot", "api-run", True, "full", 1e-4, 4, 2, 64, 1, 1,
                  "a photo of sks person", "", "0-1", 64, 64, 2)
    status, loss, grid, log, _curves = client.predict(*train_args, api_name="/train")  # and the corridor curves
    assert status.startswith("Finished at step 4") and "checkpoint step-0004" in log
    assert [row[1] for row in loss["data"]][-1] is not None and len(loss["data"]) == 4
    assert Image.open(grid).info.get("dreamy_grid")  # validation grid: steps 0, 2, 4 x seeds 0-1
    run = studio[1].models / "api-run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0002", "step-0004"]

    files, note = client.predict("api-run", "2", "single-file,card", api_name="/export")
    assert sorted(Path(f).name for f in files) == ["README.md", "api-run.safetensors", "validation-grid.png"]
    assert (run / "export" / "step-0002" / "api-run.safetensors").is_file() and "Exported single_file, card" in note

    gallery, sheet, status, *_, grid_png = client.predict(str(run), "all", "biased-dreams", "0-2", True,
                                                          *SMALL.values(), api_name="/checkpoint_grid")
    assert "Grid of api-run: 9 images" in status
    assert Path(grid_png).name == "grid.png" and Path(sheet).name == "grid.png"
    folders = sorted(p.name for p in studio[1].outputs.glob("checkpoint-grid/*/*") if p.is_dir())
    assert folders == ["00-base", "01-step-0002", "02-step-0004"]  # the base model, then checkpoints by step
    assert all(len(list((studio[1].outputs / "checkpoint-grid").glob(f"*/{f}/seed*.png"))) == 3 for f in folders)
    # the cells are the gallery (so one can be picked and sent on), labelled by step, not by folder
    assert [g["caption"] for g in gallery][::3] == ["step 0 (base) · seed 0", "step 2 · seed 0", "step 4 · seed 0"]
    from dreamy.png.metadata import read_recipe

    cell = read_recipe(Path(gallery[4]["image"]))  # row 2, seed 1: checkpoint step 2's picture
    assert (cell.model.checkpoint_step, cell.seed) == (2, 1) and read_recipe(Path(gallery[0]["image"])).model.kind == "tiny"
    im = Image.open(grid_png)
    assert im.height == 3 * (128 + 24 + 4) + 4 and im.width > 3 * 128  # 3 rows x 3 seeds of 128-px cells


def test_locked_training_settings_cannot_be_changed_through_the_api(client):
    from gradio_client.exceptions import AppError

    args = ["subject", "tiny", "sweet-spot", "api-locked", False, "full", 2e-6, 1200, 100, 512, 1, 1,
            "a photo of sks person", "", "0-3", 512, 512, 50]
    args[6] = 1e-3  # learning rate: locked by the preset
    with pytest.raises(AppError, match="'learning_rate' is locked by preset 'sweet-spot'"):
        client.predict(*args, api_name="/train")


def test_path_parameters_cannot_leave_the_studio_folders(client, studio, tmp_path):
    from gradio_client.exceptions import AppError

    for bad in ("../../etc/passwd", "/etc/passwd", str(tmp_path)):
        with pytest.raises(AppError, match="outside the folders"):
            dream(client, "0", model=bad)
        with pytest.raises(AppError, match="outside the folders"):
            client.predict(bad, "all", "biased-dreams", "0", True, *SMALL.values(), api_name="/checkpoint_grid")
    outside = tmp_path / "elsewhere"
    shutil.copytree(studio[1].models / "api-run", outside) if (studio[1].models / "api-run").exists() \
        else outside.mkdir()
    link = studio[1].models / "sneaky"
    link.symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(AppError, match="through a symbolic link"):
            client.predict(str(link), "all", "biased-dreams", "0", True, *SMALL.values(), api_name="/checkpoint_grid")
        with pytest.raises(AppError, match="through a symbolic link"):
            dream(client, "0", model=str(link))
    finally:
        link.unlink()
    for bad_name in ("../escape", "/tmp/x", ".hidden"):
        with pytest.raises(AppError, match="not a usable"):
            client.predict([], bad_name, 64, api_name="/add_photos")


def test_a_recipe_naming_a_model_outside_the_studio_is_refused(client, studio, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from dreamy.png.metadata import read_recipe, save_png

    gallery, *_ = dream(client, "1")
    recipe = read_recipe(Path(gallery[0]["image"]))
    hostile = recipe.replace(model=dataclasses.replace(recipe.model, source="/etc"))
    path = save_png(Image.new("RGB", (64, 64)), tmp_path / "hostile.png", hostile)
    with pytest.raises(AppError, match="outside the folders"):
        client.predict(handle_file(str(path)), api_name="/recall")


def test_out_of_memory_is_a_clear_message_and_the_next_job_runs(client, monkeypatch):
    import torch
    from gradio_client.exceptions import AppError

    import dreamy.dreaming.dreams
    from dreamy.models import sources

    real = dreamy.dreaming.dreams.dream_iter

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield

    monkeypatch.setattr(dreamy.dreaming.dreams, "dream_iter", exhausted)
    with pytest.raises(AppError, match="Out of GPU memory during dream: lower the batch size"):
        dream(client, "0")
    loaded = dict(sources._loaded)
    monkeypatch.setattr(dreamy.dreaming.dreams, "dream_iter", real)
    assert loaded and sources._loaded == loaded  # the model stayed loaded
    gallery, *_ = dream(client, "0")
    assert len(gallery) == 1


def test_enlarge_through_the_api_with_locks(client, tmp_path):
    """The Enlarge tab on the tiny SUPIR demo (no weights offline): the locked recipe, x4, recipe in the PNG."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from dreamy.png.metadata import read_recipe

    p = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (120, 60, 30)).save(p)
    args = ["SUPIR-v0Q", 4.0, 30, 3.0, 4.0, 0.9, -1.0, 5.0, 1.003, "wavelet",
            "sharp textures, fine grain, rich color depth", "blurry, low quality, jpeg artifacts"]
    slider, status, download = client.predict(handle_file(str(p)), "biased-dreams", False, *args, api_name="/enlarge")
    with Image.open(download) as im:
        assert im.size == (256, 256)
    r = read_recipe(download)
    assert r.job == "enlarge" and r.settings.steps == 30 and r.unlocked == {}
    args[2] = 10  # fewer steps: a locked field
    with pytest.raises(AppError, match="'steps' is locked"):
        client.predict(handle_file(str(p)), "biased-dreams", False, *args, api_name="/enlarge")


def test_particles_gif_loops_the_picture(client, tmp_path):
    from gradio_client import handle_file

    p = tmp_path / "in.png"
    Image.new("RGB", (80, 64), (200, 40, 40)).save(p)
    gif, preview = client.predict(handle_file(str(p)), 0.2, 0.5, 2.0, api_name="/particles_gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 24 and im.info.get("loop") == 0 and im.size == (256, 205)


@pytest.mark.parametrize("unlock", ["false", "False", "0", [False], 1])
def test_a_non_boolean_unlock_is_refused_by_name_on_every_locked_endpoint(client, studio, unlock):
    """bool("false") is True: a string, number or list that arrives for Unlock must not unlock."""
    from gradio_client.exceptions import AppError

    before = set((studio[1].outputs / "dream").glob("*")) if (studio[1].outputs / "dream").exists() else set()
    with pytest.raises(AppError, match="'unlock'.*must be true or false"):
        client.predict("tiny", "biased-dreams", "7", unlock, 1, PACKAGE_DEAL, "", 3.0, 2, 64, 64, api_name="/dream")
    with pytest.raises(AppError, match="'unlock'.*must be true or false"):
        client.predict("tiny", "biased-dreams", "0", unlock, "{prompt}, by Turner", "", 3.0, 2, 64, 64,
                       api_name="/prompt_sweep")
    assert set((studio[1].outputs / "dream").glob("*")) == before


def test_recall_recomputes_locks_from_the_installed_preset_never_from_the_png(client, studio, tmp_path):
    """An edited dreamy chunk cannot dream past the locks under a preset's name, name a preset file by
    path, or carry its own unlock record into the output."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    gallery, *_ = dream(client, "7")  # unlocked: steps 2, 64x64 (recorded as unlocked)
    png = Path(gallery[0]["image"])
    original = json.loads(Image.open(png).info["dreamy"])

    def forged(name: str, **changes) -> str:
        rec = json.loads(json.dumps(original))
        rec.update(changes.pop("top", {}))
        rec["settings"].update(changes)
        info = PngImagePlugin.PngInfo()
        info.add_text("dreamy", json.dumps(rec))
        out = tmp_path / f"{name}.png"
        Image.open(png).save(out, pnginfo=info)
        return str(out)

    # locked fields changed with no unlock record, under the genuine name and under look-alikes / paths
    probe = tmp_path / "probe.toml"
    probe.write_text('name = "probe"\n[dream]\nsteps = 2\n')
    for i, name in enumerate(["biased-dreams", "biased-dreams ", "Biased-Dreams", "no-such-preset", "/etc/passwd",
                              str(probe)]):
        path = forged(f"edit{i}", prompt="a cat", top={"preset": name, "unlocked": {}})
        with pytest.raises(AppError, match="preset|locks"):
            client.predict(handle_file(path), api_name="/recall")
    # a forged unlock record is recomputed: the output says what really changed (50 -> 2), not the file's story
    path = forged("lie", top={"unlocked": {"steps": {"preset": 0, "value": 1}, "width": {}, "height": {}}})
    again, _ = client.predict(handle_file(path), api_name="/recall")
    out = json.loads(Image.open(again).info["dreamy"])
    assert out["unlocked"]["steps"] == {"preset": 50, "value": 2}
    assert out["unlocked"] == original["unlocked"]
