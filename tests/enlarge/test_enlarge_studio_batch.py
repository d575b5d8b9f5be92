"""The studio's Enlarge with many pictures (#18 item 3, #17 Enlarge friction), through gradio_client:
``/enlarge_many`` takes the picture and a batch, loads the models once, reports a bad picture while the
others go on, shows the PNGs in a gallery, and Stop ends it between or within pictures; the settings
carry plain names with the technical one in their info line.

The studio runs on a free loopback port with the tiny models (test_app_api.running_studio); x1 and a
few steps keep each picture to about a second on the CPU.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from test_app_api import running_studio

pytestmark = pytest.mark.timeout(300)
QUICK = dict(unlock=True, upscale=1.0, steps=2)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("studio-enlarge-batch")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    c = Client(studio[0], verbose=False, download_files=str(studio[1].outputs.parent / "downloads"))
    yield c
    c.close()


def noise(path, seed=0, side=64):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.slow
def test_many_pictures_one_load_a_bad_one_reported_and_a_gallery(client, tmp_path, monkeypatch):
    from gradio_client import handle_file

    from dreamy.enlarging import models as enlarge_models
    from dreamy.png.metadata import read_recipe

    loads = []
    real = enlarge_models.load_enlarge_models
    monkeypatch.setattr(enlarge_models, "load_enlarge_models", lambda *a, **k: loads.append(a) or real(*a, **k))
    monkeypatch.setattr(enlarge_models, "_loaded", {})
    first, second, third = (noise(tmp_path / f"{n}.png", i) for i, n in enumerate(("one", "two", "three")))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    slider, status, download, gallery = client.predict(
        image=handle_file(first), pictures=[handle_file(second), handle_file(str(bad)), handle_file(third)],
        **QUICK, api_name="/enlarge_many")
    assert len(loads) == 1
    assert status.startswith("Enlarged 3 of 4 pictures with the dreamy tiny SUPIR demo"), status
    assert "1 could not be enlarged" in status and "bad.png: not an image" in status
    assert [g["caption"] for g in gallery] == ["1. one.png", "2. two.png", "4. three.png"]
    recipes = [read_recipe(g["image"]) for g in gallery]
    assert [r.runtime["input"]["name"] for r in recipes] == ["one.png", "two.png", "three.png"]
    assert all(r.settings.steps == 2 and r.unlocked["steps"]["value"] == 2 for r in recipes)
    assert read_recipe(download).runtime["input"]["name"] == "three.png" and slider is not None


def test_one_picture_batch_says_what_the_single_endpoint_says(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    picture = noise(tmp_path / "solo.png", 4)
    # an API client gives just the list (the picture box is the page's, and optional)
    _, status, download, gallery = client.predict(pictures=[handle_file(picture)], **QUICK, api_name="/enlarge_many")
    _, single, _ = client.predict(image=handle_file(picture), **QUICK, api_name="/enlarge")
    assert status.startswith("Enlarged with the dreamy tiny SUPIR demo") and "`solo-x1-seed000000.png`" in status
    assert status == single and len(gallery) == 1
    with pytest.raises(AppError, match="Choose pictures first"):
        client.predict(pictures=[], **QUICK, api_name="/enlarge_many")
    with pytest.raises(AppError, match="'steps' is locked"):
        client.predict(pictures=[handle_file(picture)], steps=2, api_name="/enlarge_many")


def _wait_for(job, text: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and text not in str(job.status().progress_data):
        time.sleep(0.05)
    assert text in str(job.status().progress_data), f"never saw {text!r}: {job.status().progress_data}"


def test_stop_within_the_first_picture_saves_nothing(client, tmp_path):
    from gradio_client import handle_file

    pictures = [handle_file(noise(tmp_path / f"{n}.png", n)) for n in range(2)]
    job = client.submit(image=pictures[0], pictures=pictures[1:], unlock=True, steps=400, api_name="/enlarge_many")
    _wait_for(job, "picture 1 of 2: 0.png · step")
    assert client.predict(api_name="/stop_enlarge") == "Stopped; nothing was saved."
    slider, status, download, gallery = job.result(timeout=60)
    assert status == "Stopped; nothing was saved." and not gallery and download is None
    assert client.predict(api_name="/stop_enlarge") == "Nothing of yours is running."


@pytest.mark.slow
def test_stop_in_the_second_picture_keeps_the_first(client, tmp_path):
    from gradio_client import handle_file

    pictures = [handle_file(noise(tmp_path / f"{n}.png", n, side)) for n, side in enumerate((64, 512, 64))]
    # the second is 64 times the first's pixels: Stop lands in it however fast the machine is
    job = client.submit(image=pictures[0], pictures=pictures[1:], unlock=True, upscale=1.0, steps=8,
                        api_name="/enlarge_many")
    _wait_for(job, "picture 2 of 3: 1.png · step")
    stopped = client.predict(api_name="/stop_enlarge")
    assert stopped.startswith("Stopped after 1 of 3 pictures; those are kept in `outputs/enlarge/")
    slider, status, download, gallery = job.result(timeout=60)
    assert status == stopped and [g["caption"] for g in gallery] == ["1. 0.png"]


def test_settings_have_plain_names_and_the_api_keeps_its_own(client):
    from studio.enlarge_tab import LABELS

    by_id = {c["props"].get("elem_id"): c["props"] for c in client.config["components"]}
    assert by_id["enlarge-s_cfg"]["label"].startswith("Guidance (CFG)")
    assert by_id["enlarge-spt_linear_cfg"]["label"].startswith("Guidance ramp start")
    assert by_id["enlarge-s_stage1"]["label"].startswith("Stage-1 restoration strength")
    for name, (label, info) in LABELS.items():
        props = by_id[f"enlarge-{name}"]
        assert props["label"].removesuffix(" 🔒") == label and info.startswith(name)
        # locked: who locks it comes first (as in Dream and Train), then the technical name
        assert props["info"] == f"🔒 locked by preset biased-dreams: tick Unlock to change it · {info}"
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for endpoint in ("/enlarge", "/enlarge_many"):
        names = [p["parameter_name"] for p in params[endpoint]["parameters"]]
        assert {"s_cfg", "spt_linear_cfg", "s_stage1", "s_churn", "s_noise"} <= set(names)


def test_locks_keep_the_plain_names():
    from studio.enlarge_tab import FIELDS, field_updates

    locked = field_updates("biased-dreams", False)
    assert {u["label"] for u in locked} >= {"Guidance (CFG) 🔒", "Churn 🔒", "Noise 🔒", "Upscale × 🔒"}
    unlocked = field_updates("biased-dreams", True, None, toggled=True)
    assert not any("🔒" in u["label"] or "_" in u["label"] for u in unlocked)
    assert len(locked) == len(unlocked) == len(FIELDS)
