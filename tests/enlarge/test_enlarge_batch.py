"""Batches of keepers (#18 item 3): many pictures and folders, models loaded once, a rerun skips what
is enlarged already (judged by the PNG's recipe and the input's hash, never by its name), a bad
picture costs only itself, Stop between pictures, and output sizes known before a run.

All on the tiny SUPIR demo on the CPU at x1 and 1-2 steps (64 px in, 64 px out): seconds each.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import dreamy
from dreamy.enlarging import models as enlarge_models
from dreamy.enlarging.batch import collect_pictures, enlarge_iter, enlarge_many
from dreamy.enlarging.plan import planned_sizes
from dreamy.errors import Cancelled, LockedFieldError
from dreamy.events import CancelToken
from dreamy.png.metadata import read_recipe

TINY = dict(supir="tiny", base="tiny", device="cpu")
QUICK = dict(overrides={"upscale": 1.0, "steps": 1}, unlock=["upscale", "steps"])
CLI_QUICK = ["--supir", "tiny", "--base", "tiny", "--device", "cpu", "--unlock", "upscale,steps", "--scale", "1",
             "--steps", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core CPU run several times faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def loads(monkeypatch):
    """Counts every real model load; the cache starts empty so the count is this test's."""
    calls = []
    real = enlarge_models.load_enlarge_models

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(enlarge_models, "load_enlarge_models", counting)
    monkeypatch.setattr(enlarge_models, "_loaded", {})
    return calls


def noise(path, size=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def keepers(tmp_path):
    """a.png on its own; keepers/ with b.png, c (a JPEG without a suffix), a corrupt PNG and a note."""
    folder = tmp_path / "keepers"
    folder.mkdir()
    a = noise(tmp_path / "a.png", (64, 80), 1)
    noise(folder / "b.png", seed=2)
    Image.open(noise(tmp_path / "c.png", seed=3)).convert("RGB").save(folder / "c", format="JPEG")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "notes.md").write_text("which ones to print")
    return a, folder


def test_cli_batch_loads_once_reports_the_bad_picture_and_a_rerun_skips(keepers, tmp_path, capsys, loads):
    from dreamy.cli.main import main

    a, folder = keepers
    out = tmp_path / "big"
    args = ["enlarge", str(a), str(folder), "--out", str(out), *CLI_QUICK]
    assert main(args) == 1  # one picture failed: the others are done, the exit status says so
    said = capsys.readouterr()
    written = said.out.split()
    assert [os.path.basename(p) for p in written] == ["a-x1-seed000000.png", "b-x1-seed000000.png",
                                                      "c-x1-seed000000.png"]
    assert len(loads) == 1  # SDXL base + SUPIR loaded once for the batch
    bad = [line for line in said.err.splitlines() if "failed: broken.png" in line]
    assert len(bad) == 1 and bad[0].count("broken.png") == 1  # one sentence that names it once
    assert bad[0].startswith("picture 3 of 4 failed") and "4 pictures: 3 enlarged, 0 already enlarged, 1 failed." in said.err
    assert "notes.md: not an image file" in said.err
    for p in written:
        r = read_recipe(p)
        assert r.job == "enlarge" and r.settings.steps == 1 and r.seed == 0
    assert read_recipe(written[2]).runtime["input"]["name"] == "c"  # found by its first bytes
    stamps = {p: os.stat(p).st_mtime_ns for p in written}

    enlarge_models._loaded.clear()
    assert main(args) == 1  # the rerun: everything done is skipped, nothing loads, the bad one says so again
    again = capsys.readouterr()
    assert again.out.split() == written and len(loads) == 1
    assert again.err.count("; skipped") == 3 and "0 enlarged, 3 already enlarged, 1 failed" in again.err
    assert {p: os.stat(p).st_mtime_ns for p in written} == stamps  # untouched

    assert main(["enlarge", str(folder / "broken.png"), "--out", str(out), *CLI_QUICK]) == 2  # nothing could run
    assert main(["enlarge", str(a), "--out", str(out), *CLI_QUICK, "--redo"]) == 0
    assert capsys.readouterr().out.split() == [written[0]]  # done again, in place
    assert len(loads) == 2  # the cache was emptied before the rerun: --redo had to load


def test_done_is_read_from_the_recipe_and_the_input_hash_not_the_name(tmp_path, loads):
    out = tmp_path / "out"
    a, b = noise(tmp_path / "a.png", seed=1), noise(tmp_path / "b.png", seed=2)
    first = enlarge_many([a], out_dir=out, **QUICK, **TINY)[0]
    # renamed, the enlargement is still recognised by what its recipe says
    renamed = first.path.rename(out / "my favourite.png")
    again = enlarge_many([a], out_dir=out, **QUICK, **TINY)[0]
    assert again.status == "skipped" and again.path == renamed
    # another picture under a's name (a.png edited since): enlarged, and the old PNG is not overwritten
    shutil.copy(b, a)
    edited = enlarge_many([a], out_dir=out, **QUICK, **TINY)[0]
    assert edited.status == "enlarged" and edited.path.name == "a-x1-seed000000.png"
    # other settings or another seed: not the same recipe; the existing name is kept, the new gets -2
    steps = enlarge_many([a], out_dir=out, overrides={"upscale": 1.0, "steps": 2}, unlock=True, **TINY)[0]
    assert steps.status == "enlarged" and steps.path.name == "a-x1-seed000000-2.png"
    assert read_recipe(edited.path).settings.steps == 1 and read_recipe(steps.path).settings.steps == 2
    seeded = enlarge_many([a], out_dir=out, seed=3, **QUICK, **TINY)[0]
    assert seeded.status == "enlarged" and seeded.path.name == "a-x1-seed000003.png"
    # a PNG without our recipe, or another job's, under the name never counts as done
    (out / "a-x1-seed000004.png").write_bytes(b.read_bytes())
    foreign = enlarge_many([a], out_dir=out, seed=4, **QUICK, **TINY)[0]
    assert foreign.status == "enlarged" and foreign.path.name == "a-x1-seed000004-2.png"
    assert len(loads) == 1


def test_python_batch_takes_images_repeats_once_and_reports_per_picture(tmp_path, loads):
    out = tmp_path / "out"
    a = noise(tmp_path / "a.png")
    picture = Image.open(noise(tmp_path / "p.png", seed=5)).convert("RGB")
    events = []
    outcomes = dreamy.enlarge_many([a, picture, a, tmp_path / "missing.png", Image.new("RGB", (32, 32))],
                                   out_dir=out, on_progress=events.append, **QUICK, **TINY)
    assert [o.status for o in outcomes] == ["enlarged", "enlarged", "skipped", "failed", "failed"]
    assert outcomes[2].path == outcomes[0].path  # the same picture twice is enlarged once
    assert outcomes[1].path.name == "picture-x1-seed000000.png" and outcomes[1].source == "picture 2"
    assert outcomes[3].error == "missing.png: no such file."
    assert "64 px" in outcomes[4].error and outcomes[4].error.count(".") <= 2
    assert {e.items for e in events} == {5} and any(e.message.startswith("picture 2 of 5: picture 2 · step")
                                                    for e in events)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(0.6)  # 3 of 5 done, the last failed
    assert len(loads) == 1 and dreamy.enlarge_iter is enlarge_iter


def test_stop_between_pictures_keeps_the_finished_ones(tmp_path, loads):
    out = tmp_path / "out"
    pictures = [noise(tmp_path / f"{n}.png", seed=n) for n in range(3)]
    token = CancelToken()
    seen = []
    with pytest.raises(Cancelled):
        for outcome in enlarge_iter(pictures, out_dir=out, cancel=token, **QUICK, **TINY):
            seen.append(outcome)
            token.cancel()  # Stop pressed while the first picture was saved
    assert [o.status for o in seen] == ["enlarged"] and sorted(p.name for p in out.iterdir()) == [
        "0-x1-seed000000.png"]


def test_stop_within_a_picture_writes_nothing_of_it(tmp_path, loads):
    out = tmp_path / "out"
    pictures = [noise(tmp_path / f"{n}.png", seed=n) for n in range(2)]
    token = CancelToken()

    def on_progress(e):
        if e.item == 1 and "step" in e.message:
            token.cancel()

    with pytest.raises(Cancelled):
        enlarge_many(pictures, out_dir=out, cancel=token, on_progress=on_progress,
                     overrides={"upscale": 1.0, "steps": 3}, unlock=True, **TINY)
    assert sorted(p.name for p in out.iterdir()) == ["0-x1-seed000000.png"]


def test_locks_and_seeds_are_refused_before_any_picture(tmp_path, loads):
    a = noise(tmp_path / "a.png")
    with pytest.raises(LockedFieldError):
        enlarge_many([a], overrides={"steps": 2}, out_dir=tmp_path / "out", **TINY)
    with pytest.raises(dreamy.DreamyError, match="seed"):
        enlarge_many([a], seed=-1, out_dir=tmp_path / "out", **QUICK, **TINY)
    assert not (tmp_path / "out").exists() and loads == []


def test_folders_give_their_pictures_sorted_and_leave_out_enlargements(tmp_path, loads):
    folder = tmp_path / "keepers"
    folder.mkdir()
    for name in ("z.png", "m.jpg", "a.webp"):
        Image.open(noise(tmp_path / "src.png")).save(folder / name)
    (folder / "sub").mkdir()
    enlarged = enlarge_many([folder / "z.png"], out_dir=folder, **QUICK, **TINY)[0].path  # --out keepers/
    pictures, notes = collect_pictures([folder, tmp_path / "src.png"])
    assert [p.name for p in pictures] == ["a.webp", "m.jpg", "z.png", "src.png"]
    assert any(enlarged.name in n and "an enlargement already" in n for n in notes)
    assert any("sub/" in n for n in notes)


def test_output_sizes_are_known_before_a_run(tmp_path):
    p512 = noise(tmp_path / "p512.png", (512, 512))
    wide = noise(tmp_path / "wide.png", (100, 50))
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # a camera held upright: the file is 96x64, the picture 64x96
    Image.new("RGB", (96, 64)).save(turned, exif=exif)
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    real = dict(supir="SUPIR-v0Q", base="Juggernaut XL v9")  # not loaded: the sizes need no weights
    plans = planned_sizes([p512, wide, turned, tmp_path / "bad.png"], **real)
    assert [(p.before, p.after) for p in plans[:3]] == [((512, 512), (2048, 2048)), ((100, 50), (2048, 1024)),
                                                        ((64, 96), (1024, 1536))]
    assert str(plans[0]) == "p512.png: 512×512 → 2048×2048" and plans[3].problem and plans[3].after is None
    assert planned_sizes([p512], overrides={"upscale": 8.0}, unlock=True, **real)[0].after == (4096, 4096)
    big = planned_sizes([noise(tmp_path / "big.png", (640, 512))], overrides={"upscale": 8.0}, unlock=True,
                        **real)[0]
    assert "megapixel limit" in big.problem
    assert planned_sizes([p512], **TINY_SOURCES)[0].after == (2048, 2048)
    assert planned_sizes([wide], **TINY_SOURCES)[0].after == (384, 192)  # the demo's 64 px minimum side
    with pytest.raises(LockedFieldError):
        planned_sizes([p512], overrides={"upscale": 2.0})


TINY_SOURCES = dict(supir="tiny", base="tiny")


@pytest.mark.slow
def test_the_bench_batch_mode_runs_on_the_tiny_models(tmp_path):
    import json

    from bench.enlarge import main

    main(["--tiny", "--arms", "", "--batch", "2", "--out", str(tmp_path / "b.json")])
    batch = json.loads((tmp_path / "b.json").read_text())["batch"]
    assert batch["statuses"] == ["enlarged", "enlarged"] and batch["rerun_all_skipped"]
    assert batch["first_s"] > 0 and batch["s_per_picture_after_first"] > 0 and len(batch["per_picture_s"]) == 2
