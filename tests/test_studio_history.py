"""The way back (issue #17: history, the corridor loop) and the corridor curves in Train (#20).

A run trained through the API (4 steps, then resumed to 6) and a dream and a checkpoint grid made
through the API are read back by ``dreamy.history``; a browser reloads the page and reopens them:
the run with its whole loss history, grid, curves, log and recipe, one of its grid cells opened in
Dream with that checkpoint and seed (and dreamed), and the grid back in Dream's gallery.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from browser_util import ARTIFACTS, CHROMIUM, PLAYWRIGHT, open_page
from PIL import Image
from test_app_api import SMALL, dream, running_studio
from test_studio_train import photos, train_args

pytestmark = pytest.mark.timeout(600)

RUN = "hist-run"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A studio with a run (trained to 4, resumed to 6, checkpoints every 2, seeds 0-1), a dream and a
    checkpoint grid on disk; yields (url, studio, client, results of /train and /resume_train)."""
    from gradio_client import Client, handle_file

    root = tmp_path_factory.mktemp("history")
    with running_studio(root) as (url, st):
        c = Client(url, verbose=False, download_files=str(root / "downloads"))
        c.predict([handle_file(str(p)) for p in photos(root / "photos")], "subject", 64, api_name="/add_photos")
        seeds = {14: "0-1"}  # validation seeds: two columns in the grid
        first = c.predict(*[seeds.get(i, a) for i, a in enumerate(train_args(RUN, 4))], api_name="/train")
        second = c.predict(*[seeds.get(i, a) for i, a in enumerate(train_args(RUN, 6))], api_name="/resume_train")
        dream(c, "0-2")
        c.predict(str(st.models / RUN), "2,6", "biased-dreams", "0-1", True, *SMALL.values(), api_name="/checkpoint_grid")
        yield url, st, c, (first, second)
        c.close()


# ---- the core: dreamy.history ----

@pytest.mark.slow  # the module's studio trains a run (two sessions) and dreams: ~1-2 min on 2 cores
def test_runs_are_listed_newest_first_and_read_back_whole(made, tmp_path):
    from dreamy.errors import DreamyError, PathError
    from dreamy.history import checkpoint_source, list_runs, open_run

    st = made[1]
    older = st.models / "older"
    shutil.copytree(st.models / RUN, older)
    os.utime(older / "run.json", (1, 1))
    for f in (older / "logs" / "loss.jsonl", older / "corridor.json"):
        os.utime(f, (1, 1))
    try:
        listed = list_runs(st.models)
        assert [r.name for r in listed][:2] == [RUN, "older"]
        assert listed[0].steps == (2, 4, 6) and listed[0].total == 6 and listed[0].state == "finished"
        assert listed[0].label.startswith(f"{RUN} · step 6 of 6 · ")
    finally:
        shutil.rmtree(older)

    view = open_run(RUN, st.models)
    assert [r["step"] for r in view.losses] == [1, 2, 3, 4, 5, 6]  # before and after the resume
    assert [(c.step, c.seed) for c in view.cells] == [(s, seed) for s in (0, 2, 4, 6) for seed in (0, 1)]
    assert view.seeds == [0, 1] and view.grid is not None and view.validation == {"width": 64, "height": 64, "steps": 2}
    assert [r["step"] for r in view.corridor] == [0, 2, 4, 6]
    assert view.status.startswith(f"Run **{RUN}**: finished at step **6** of 6, 3 checkpoint(s).")
    log = view.log_lines()
    assert "loss: step 1 " in "\n".join(log) and any(line.lstrip().startswith("step") and "mark" in line for line in log)

    run = st.models / RUN
    assert checkpoint_source(run, 4) == str((run / "checkpoints" / "step-0004").resolve())
    assert checkpoint_source(run, 0) == "tiny"  # step 0 is the base model run.json records
    with pytest.raises(DreamyError, match="has no checkpoint at step 3"):
        checkpoint_source(run, 3)
    for bad in ("../../etc", str(tmp_path), "/etc"):
        with pytest.raises(PathError):
            open_run(bad, st.models)
    (st.models / "escape").symlink_to(tmp_path, target_is_directory=True)
    try:
        (tmp_path / "run.json").write_text("{}")
        with pytest.raises(PathError, match="symbolic link"):
            open_run("escape", st.models)
        assert "escape" not in [r.name for r in list_runs(st.models)]
    finally:
        (st.models / "escape").unlink()
    (st.models / "not-a-run").mkdir()
    with pytest.raises(DreamyError, match="not a training run"):
        open_run("not-a-run", st.models)
    (st.models / "not-a-run").rmdir()


@pytest.mark.slow
def test_past_dreams_are_listed_newest_first_with_their_recipes(made, tmp_path):
    from dreamy.errors import PathError
    from dreamy.history import list_dreams, open_dreams

    st = made[1]
    jobs = list_dreams(st.outputs)
    assert [j.kind for j in jobs] == ["checkpoint-grid", "dream"]  # newest first
    grid = open_dreams(jobs[0].folder, st.outputs)
    assert [c for _, c in grid.pictures] == [f"step {s} · seed {seed}" for s in (2, 6) for seed in (0, 1)]
    assert grid.sheet.name == "grid.png" and grid.recipe.seed == 0
    assert "Reopened the checkpoint grid of " in grid.status and "**Dreamy recipe**" in grid.status
    dreamed = open_dreams(jobs[1].folder, st.outputs)
    assert [c for _, c in dreamed.pictures] == ["seed 0", "seed 1", "seed 2"]
    assert dreamed.sheet.name == "contact-sheet.png"
    with pytest.raises(PathError):
        open_dreams(tmp_path, st.outputs)
    with pytest.raises(PathError):
        open_dreams(st.outputs / ".." / "models", st.outputs)


# ---- the API ----

@pytest.mark.slow
def test_train_and_resume_take_the_presets_values_as_defaults(made):
    from dreamy.recipes.presets import load_preset, preset_fields

    api = made[2].view_api(return_format="dict", print_info=False)["named_endpoints"]
    preset = load_preset("sweet-spot")
    train, shown = preset_fields(preset, "train"), preset_fields(preset, "dream")
    for endpoint in ("/train", "/resume_train"):
        params = {p["parameter_name"]: p for p in api[endpoint]["parameters"]}
        assert all(p["parameter_has_default"] and p["parameter_default"] is not None for p in params.values()), params
        for name in ("learning_rate", "max_train_steps", "checkpointing_steps", "resolution", "train_batch_size",
                     "gradient_accumulation_steps", "validation_seeds", "instance_prompt", "mode"):
            assert params[name]["parameter_default"] == train[name], name
        for name in ("width", "height", "steps"):
            assert params[f"validation_{name}"]["parameter_default"] == shown[name]
        assert params["preset"]["parameter_default"] == "sweet-spot" and params["unlock"]["parameter_default"] is False


@pytest.mark.slow
def test_train_streams_the_corridor_curves_with_their_marks(made):
    from dreamy.training.corridor_report import MARK_LEVEL, MARK_SERIES, read_rows

    first, second = made[3]
    assert len(first) == len(second) == 5  # status, loss, grid, log, corridor curves
    curves = second[4]
    assert curves["datatypes"]["step"] == curves["datatypes"]["value"] == "quantitative"
    cols = curves["columns"]
    data = [dict(zip(cols, row, strict=True)) for row in curves["data"]]
    assert {d["signal"] for d in data} == {"drift", "gap", "diversity", "retention", MARK_SERIES}
    assert sorted({d["step"] for d in data}) == [0, 2, 4, 6]  # the resumed run's whole meter
    stored = {r["step"]: r for r in read_rows(made[1].models / RUN)}
    for d in data:
        want = MARK_LEVEL[stored[d["step"]]["mark"]] if d["signal"] == MARK_SERIES else stored[d["step"]][d["signal"]]
        assert d["value"] == pytest.approx(want, abs=1e-6) and d["mark"] == stored[d["step"]]["mark"]
    assert [row[0] for row in first[4]["data"]][-1] == 4


# ---- in the browser ----

@pytest.fixture(scope="module")
def page(made):
    pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium: apt-get install -y chromium (as root)")
    with open_page(made[0]) as page:
        yield page


def expect():
    from playwright.sync_api import expect

    return expect


def pick(page, dropdown: str, starts: str) -> list[str]:
    """Open a dropdown, choose the first option starting with ``starts``; returns every option."""
    page.locator(f"{dropdown} input").first.click()
    page.wait_for_timeout(400)
    items = page.locator("ul[role=listbox] li")
    found = [t.replace("✓", "").strip() for t in items.all_inner_texts()]
    items.filter(has_text=starts).first.click()
    return found


def line_points(page, plot: str) -> list[int]:
    """The number of points of each line the Vega plot draws (the paths of its line marks)."""
    paths = page.locator(f"{plot} svg g.mark-line path").evaluate_all("ps => ps.map(p => p.getAttribute('d') || '')")
    return [d.count("L") + 1 for d in paths]


@pytest.mark.slow
def test_a_reload_reopens_the_run_and_a_grid_cell_opens_in_dream(page, made):
    ex = expect()
    page.reload()
    page.locator("#dream-prompt textarea").wait_for()
    page.get_by_role("tab", name="Train").click()
    options = pick(page, "#train-open", RUN)
    assert options[0].startswith(f"{RUN} · step 6 of 6 · ")
    ex(page.locator("#train-status")).to_contain_text(f"Run {RUN}: finished at step 6 of 6", timeout=20_000)
    ex(page.locator("#train-cells img")).to_have_count(8)  # steps 0, 2, 4, 6 × seeds 0, 1
    page.wait_for_timeout(1500)  # the plots draw
    assert line_points(page, "#train-loss") == [6]  # the whole history: steps 1-6, across the resume
    assert sorted(line_points(page, "#train-corridor")) == [4] * 5  # four signals and the marks, steps 0-6
    frame = page.locator("#train-corridor").bounding_box()
    for name in ("drift", "gap", "diversity", "retention", "mark"):  # the legend, inside the frame (not cut off)
        box = page.locator("#train-corridor svg text").filter(has_text=re.compile(f"^{name}$")).first.bounding_box()
        assert box and box["y"] + box["height"] <= frame["y"] + frame["height"], (name, box, frame)
    ex(page.locator("#train-grid img")).to_be_visible()
    log = page.locator("#train-log textarea")
    ex(log).to_have_value(re.compile(r"corridor meter:[\s\S]*Run hist-run: finished"))
    page.wait_for_timeout(300)
    top, height, full = log.evaluate("e => [e.scrollTop, e.clientHeight, e.scrollHeight]")
    assert top + height >= full - 2, (top, height, full)  # the newest lines show, not the first
    assert page.locator("#train-max_train_steps input").input_value() == "6"  # the run's recipe, for Resume
    assert page.locator("#train-unlock input").is_checked()
    assert page.locator("#train-run-name textarea, #train-run-name input").first.input_value() == RUN
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "train-opened-run.png"), full_page=True)

    page.locator("#train-cells img").nth(3).click()  # step 2, seed 1
    page.keyboard.press("Escape")  # the gallery's preview, if it opened
    page.locator("#train-to-dream").click()
    ex(page.locator("#dream-seeds textarea, #dream-seeds input").first).to_have_value("1", timeout=10_000)
    ex(page.locator("#dream-model input").first).to_have_value(f"{RUN} · step 2")
    page.locator("#dream-unlock input").check()
    for name, value in (("steps", 2), ("width", 64), ("height", 64)):
        box = page.locator(f"#dream-{name} input").first
        box.fill(str(value))
        box.press("Tab")
    page.locator("#dream-go").click()
    ex(page.locator("#dream-status")).to_contain_text("1 dreamed", timeout=120_000)
    made_png = max((made[1].outputs / "dream").glob("*/*seed000001.png"), key=lambda f: f.stat().st_mtime)
    assert made_png.name == "step000002-seed000001.png"
    recipe = json.loads(Image.open(made_png).info["dreamy"])
    assert recipe["seed"] == 1 and recipe["model"]["checkpoint_step"] == 2 and RUN in recipe["model"]["source"]


@pytest.mark.slow
def test_past_dreams_come_back_into_the_gallery(page, made):
    ex = expect()
    page.reload()
    page.locator("#dream-prompt textarea").wait_for()
    options = pick(page, "#dream-past", "checkpoint grid")
    assert "dream · 1 picture" in options[0], options  # the dream of the test above, newest first
    assert [o.split(" · ")[1] for o in options] == ["dream", "checkpoint grid", "dream"]
    ex(page.locator("#dream-status")).to_contain_text("Reopened the checkpoint grid", timeout=20_000)
    ex(page.locator("#dream-gallery img")).to_have_count(4)
    ex(page.locator("#dream-gallery")).to_contain_text("step 6 · seed 1")
    page.screenshot(path=str(ARTIFACTS / "dream-past.png"), full_page=True)


# ---- without a studio ----

def test_dreams_of_a_checkpoint_are_listed_and_empty_jobs_are_not(tmp_path, capsys):
    from dreamy.cli.main import main
    from dreamy.history import list_dreams, open_dreams

    out = tmp_path / "outputs"
    job = out / "dream" / "20260101-120000"
    job.mkdir(parents=True)
    for seed in (3, 1):  # a checkpoint's dreams are named by step and seed (dreaming/dreams.py image_name)
        Image.new("RGB", (8, 8)).save(job / f"step000400-seed{seed:06d}.png")
    (out / "dream" / "20260101-130000").mkdir()  # a job stopped before its first picture
    (out / "dream" / "20260101-140000-1").mkdir()
    Image.new("RGB", (8, 8)).save(out / "dream" / "20260101-140000-1" / "contact-sheet.png")  # no dream in it
    jobs = list_dreams(out)
    assert [j.folder.name for j in jobs] == ["20260101-120000"] and jobs[0].label == "2026-01-01 12:00:00 · dream · 2 pictures"
    view = open_dreams(job, out)
    assert [c for _, c in view.pictures] == ["seed 1", "seed 3"] and view.recipe is None  # no recipe: none shown
    assert view.status == "Reopened the dream of 2026-01-01 12:00:00: 2 picture(s)."

    assert main(["history", "--models-dir", str(tmp_path / "models"), "--outputs-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "runs: none" in printed and f"2026-01-01 12:00:00 · dream · 2 pictures  {job}" in printed


def test_the_curves_carry_every_mark():
    from dreamy.training.corridor_report import MARK_SERIES, curves, marks_line

    rows = [{"step": 0, "drift": 0.0, "gap": 0.0, "diversity": 1.0, "retention": 1.0, "mark": "before", "why": ""},
            {"step": 200, "drift": 0.3, "gap": None, "diversity": 0.9, "retention": 0.8, "mark": "inside",
             "why": "drift 0.30 >= 0.2"},
            {"step": 400, "drift": 0.5, "gap": float("nan"), "diversity": 0.4, "retention": 0.3, "mark": "past",
             "why": "diversity 0.40 <= 0.5"}]
    long = curves(rows)
    assert [(d["step"], d["value"]) for d in long if d["signal"] == MARK_SERIES] == [(0, 0.0), (200, 0.5), (400, 1.0)]
    assert not [d for d in long if d["signal"] == "gap" and d["step"] > 0]  # None and NaN are left out
    assert MARK_SERIES not in {d["signal"] for d in curves(rows, marks=False)}
    assert marks_line(rows) == "Marks: step 0 before · step 200 inside · step 400 past (diversity 0.40 <= 0.5)."
    assert marks_line([]) == ""


def test_a_shared_studio_offers_no_past_dreams(tmp_path):
    import app
    from studio.session import Studio

    job = tmp_path / "outputs" / "dream" / "20260101-120000"
    job.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(job / "seed000000.png")
    for shared in (False, True):
        demo = app.build(Studio(default_model="tiny", outputs=tmp_path / "outputs", models=tmp_path / "models",
                                shared=shared))
        past = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "dream-past")
        assert past.visible is (not shared)  # another visitor's dreams are not listed to everyone
        assert [c[1] for c in past.choices] == ([] if shared else ["dream/20260101-120000"])
