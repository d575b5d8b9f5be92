"""What users bring to the studio (issue 14): every upload reaches the core as the user's own file.

Gradio's image box converts uploads by default (to RGB, re-encoded): a cut-out would arrive on black
and a 16-bit picture clipped, unlike the CLI. Here the core's entry points are replaced by spies
that keep the bytes they were handed, and those bytes must be the uploaded file's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from test_app_api import running_studio

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    with running_studio(tmp_path_factory.mktemp("uploads")) as (url, st):
        c = Client(url, verbose=False, download_files=str(st.outputs.parent / "downloads"))
        yield c
        c.close()


def _rgba(path: Path) -> Path:
    a = np.zeros((80, 64, 4), np.uint8)
    a[..., 0] = 200
    a[20:60, 16:48, 3] = 255  # an opaque square on a transparent ground
    Image.fromarray(a, "RGBA").save(path)
    return path


def _grey16(path: Path) -> Path:
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (80, 1))
    Image.fromarray(ramp).save(path)  # mode I;16: 16 bits a pixel
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    return path


def _with_text(path: Path) -> Path:
    """A PNG whose text chunks would be lost to a re-encode."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Seed: 1")
    Image.new("RGB", (64, 80), (10, 20, 30)).save(path, pnginfo=info)
    return path


UPLOADS = [_rgba, _grey16, _with_text]


class Spy:
    """Stands in for a core call: keeps the bytes of the file it was given, then stops the job."""

    def __init__(self):
        self.seen: list[bytes] = []

    def __call__(self, source, *args, **kwargs):
        from dreamy.errors import Cancelled, DreamyError

        self.seen.append(Path(source).read_bytes())
        if "out_dir" in kwargs:  # enlarge: a stop is a clean outcome
            raise Cancelled("spy")
        raise DreamyError("spy saw the file")


@pytest.mark.parametrize("make", UPLOADS)
def test_enlarge_gets_the_uploaded_file_unchanged(client, tmp_path, monkeypatch, make):
    from gradio_client import handle_file

    import dreamy.enlarging

    path = make(tmp_path / "in.png")
    spy = Spy()
    monkeypatch.setattr(dreamy.enlarging, "enlarge", spy)
    args = ["SUPIR-v0Q", 4.0, 30, 3.0, 4.0, 0.9, -1.0, 5.0, 1.003, "wavelet",
            "sharp textures, fine grain, rich color depth", "blurry, low quality, jpeg artifacts"]
    _, status, _ = client.predict(handle_file(str(path)), "biased-dreams", False, *args, api_name="/enlarge")
    assert status == "Stopped; nothing was saved."
    assert spy.seen == [path.read_bytes()]


@pytest.mark.parametrize("make", UPLOADS)
def test_particles_get_the_uploaded_file_unchanged(client, tmp_path, monkeypatch, make):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    import dreamy.particles

    path = make(tmp_path / "in.png")
    spy = Spy()
    monkeypatch.setattr(dreamy.particles, "write_gif", spy)
    with pytest.raises(AppError, match="spy saw the file"):
        client.predict(handle_file(str(path)), 0.2, 0.5, 2.0, api_name="/particles_gif")
    assert spy.seen == [path.read_bytes()]


def test_train_photos_arrive_unchanged(client, tmp_path, monkeypatch):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    import studio.train_tab

    paths = [make(tmp_path / f"{make.__name__}.png") for make in UPLOADS]
    seen: list[bytes] = []

    def spy(files, *args, **kwargs):
        from dreamy.errors import DreamyError

        seen.extend(Path(f).read_bytes() for f in files)
        raise DreamyError("spy saw the photos")

    monkeypatch.setattr(studio.train_tab, "add_to_training_set", spy)
    with pytest.raises(AppError, match="spy saw the photos"):
        client.predict([handle_file(str(p)) for p in paths], "photos", 512, api_name="/add_photos")
    assert seen == [p.read_bytes() for p in paths]


def test_recall_reads_the_uploaded_file_unchanged(client, tmp_path, monkeypatch):
    """Recall shows a PNG's, a JPEG's and a WebP's foreign recipe: the upload keeps its metadata."""
    from gradio_client import handle_file

    png = _with_text(tmp_path / "a.png")
    shown = client.predict(handle_file(str(png)), api_name="/read_recipe")
    assert "| Steps | 20 |" in shown and "a cat" in shown
    text = ("a lighthouse\nNegative prompt: blurry, lowres\nSteps: 28, Sampler: DPM++ 2M, CFG scale: 6.5, "
            "Seed: 123456, Size: 512x768, Template: a {lighthouse|windmill}\non a cliff, Version: v1.5.1")
    for fmt in ("JPEG", "WEBP"):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
        path = tmp_path / f"a.{fmt.lower()}"
        Image.new("RGB", (64, 80)).save(path, format=fmt, exif=exif.tobytes())
        shown = client.predict(handle_file(str(path)), api_name="/read_recipe")
        assert "another tool" in shown and "| Negative prompt |" not in shown
        assert "| negative_prompt | blurry, lowres |" in shown and "| CFG scale | 6.5 |" in shown
        assert "| Size | 512x768 |" in shown and "| Seed | 123456 |" in shown
        assert "puts back its prompt, negative_prompt, steps, guidance, width, height, prompt_syntax, sampler, " \
               "scheduler, seed" in shown
    comfy = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 7, "sampler_name": "euler",
                                                        "positive": ["6", 0]}},
             "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a | pipe\nand a line"}}}
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(comfy))
    path = tmp_path / "comfy.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    shown = client.predict(handle_file(str(path)), api_name="/read_recipe")
    assert "ComfyUI workflow" in shown and "| positive | a \\| pipe and a line |" in shown


@pytest.mark.slow
def test_enlarge_in_the_studio_and_the_cli_note_the_same(client, tmp_path):
    """The real (tiny, offline) enlargement of an RGBA cut-out: the studio's recipe notes are the CLI's."""
    import subprocess
    import sys

    from gradio_client import handle_file

    from conftest import REPO
    from dreamy.png.metadata import read_recipe

    path = _rgba(tmp_path / "cutout.png")
    args = ["SUPIR-v0Q", 1.0, 2, 3.0, 4.0, 0.9, -1.0, 5.0, 1.003, "wavelet",  # x1, 2 steps: unlocked, for speed
            "sharp textures, fine grain, rich color depth", "blurry, low quality, jpeg artifacts"]
    _, status, download = client.predict(handle_file(str(path)), "biased-dreams", True, *args, api_name="/enlarge")
    studio_recipe = read_recipe(download)
    out = tmp_path / "cli"
    p = subprocess.run([sys.executable, "-m", "dreamy", "enlarge", str(path), "--out", str(out), "--unlock", "--scale", "1",
                        "--steps", "2"], cwd=REPO,
                       capture_output=True, text=True, timeout=280)
    if p.returncode != 0:
        pytest.skip(f"the CLI's enlarge could not run here: {p.stderr[-300:]}")
    cli_png = next(out.rglob("*.png"))
    cli_recipe = read_recipe(cli_png)
    s, c = studio_recipe.to_dict(), cli_recipe.to_dict()
    assert "flattened" in status and "flattened" in json.dumps(c)  # the cut-out's note, in both
    for key in ("settings", "unlocked", "input", "notes", "seed"):
        assert s.get(key) == c.get(key), key
    assert np.array_equal(np.asarray(Image.open(download)), np.asarray(Image.open(cli_png)))
    shutil.rmtree(out, ignore_errors=True)
