"""Issue #17's friction items in the studio, through its API and its pieces: lock notes and "differs
from preset" marks, the quick try (recorded as unlocked changes), one plain progress line with no
estimate copied from earlier runs, the contact sheet as a picture, Recall saying "byte-identical",
GIF sizes (studio, CLI), Dreamy's own start-up lines, and "Use its settings" carrying the sampler and
prompt syntax (#21). The browser half is tests/test_browser_friction.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from test_app_api import PACKAGE_DEAL, running_studio

pytestmark = pytest.mark.timeout(300)
SMALL = (PACKAGE_DEAL, "", 3.0, 2, 64, 64)  # prompt, negative, guidance, steps, width, height


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("friction")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    c = Client(studio[0], verbose=False, download_files=str(studio[1].outputs.parent / "downloads"))
    yield c
    c.close()


# ---- 1. locks: who locks a field, and what an unlocked form changed ----

def test_a_locked_field_says_which_preset_locks_it_and_how_to_change_it():
    from studio.widgets import lock_mark

    m = lock_mark("biased-dreams", "dream", "guidance", False, 3.0)
    assert m["label"] == "guidance 🔒" and m["info"] == "🔒 locked by preset biased-dreams: tick Unlock to change it"
    m = lock_mark("gigafractal", "dream", "steps", False, 20, label="Steps", info="sampling steps")
    assert m["label"] == "Steps 🔒" and m["info"].startswith("🔒 locked by preset gigafractal") \
        and m["info"].endswith("sampling steps")  # the field's own info is kept


@pytest.mark.parametrize("name, value, preset_value", [
    ("guidance", 5.0, "3.0"), ("steps", 12, "50"), ("width", 256, "512"), ("negative_prompt", "fog", "empty"),
    ("prompt", "a tower", "monumental, dramatic, atmospheric, tran…"),
    ("scheduler", '{"beta_start": 0.001}', '{"beta_start": 0.00085, "beta_end": 0.0…'),
    ("sampler", "euler_a", "ddim"),
])
def test_an_unlocked_field_that_differs_from_the_preset_says_so_with_the_presets_value(name, value, preset_value):
    from studio.widgets import lock_mark

    m = lock_mark("biased-dreams", "dream", name, True, value)
    assert m["label"] == f"{name.replace('_', ' ')} · differs from preset ({preset_value})"
    assert m["elem_classes"] == ["dreamy-differs"] and m["info"] == ""  # "" clears the lock note


@pytest.mark.parametrize("name, value", [("guidance", 3), ("guidance", 3.0), ("steps", 50), ("negative_prompt", ""),
                                         ("scheduler", '{"set_alpha_to_one": false, "clip_sample": false, '
                                          '"beta_schedule": "scaled_linear", "beta_end": 0.012, "beta_start": 0.00085}')])
def test_an_unlocked_field_with_the_presets_value_is_plain(name, value):
    from studio.widgets import lock_mark

    m = lock_mark("biased-dreams", "dream", name, True, value)
    assert m["label"] == name.replace("_", " ") and m["elem_classes"] == [] and m["info"] == ""


def test_unlocking_keeps_typed_values_and_marks_them_locking_again_restores_the_preset():
    from studio.widgets import lock_toggled

    names = ["guidance", "steps", "width"]
    up = lock_toggled("biased-dreams", "dream", names, True, [3.0, 12, 256], marks=True)
    assert [u.get("value", "kept") for u in up] == ["kept"] * 3 and all(u["interactive"] for u in up)
    assert [u["label"] for u in up] == ["guidance", "steps · differs from preset (50)",
                                        "width · differs from preset (512)"]
    down = lock_toggled("biased-dreams", "dream", names, False, [3.0, 12, 256], marks=True)
    assert [u["value"] for u in down] == [3.0, 50, 512] and [u["label"] for u in down] == \
        ["guidance 🔒", "steps 🔒", "width 🔒"]
    plain = lock_toggled("biased-dreams", "dream", names, False)  # callers without marks: as before
    assert [u["label"] for u in plain] == ["guidance 🔒", "steps 🔒", "width 🔒"] and "info" not in plain[0]


def _props(client) -> dict[str, dict]:
    return {c["props"].get("elem_id"): c["props"] for c in client.config["components"]}


@pytest.mark.parametrize("tab, preset, locked, free", [
    ("train", "sweet-spot", ["mode", "learning_rate", "max_train_steps", "resolution", "train_batch_size",
                             "gradient_accumulation_steps"],
     ["checkpointing_steps", "instance_prompt", "class_prompt", "validation_seeds"]),
    ("enlarge", "biased-dreams", ["supir_model", "upscale", "steps", "s_cfg", "spt_linear_cfg", "control_scale",
                                  "s_stage1", "s_churn", "s_noise", "color_fix", "positive_prompt",
                                  "negative_prompt"], []),
])
def test_train_and_enlarge_say_who_locks_a_field_from_the_first_paint(client, tab, preset, locked, free):
    props = _props(client)
    note = f"🔒 locked by preset {preset}: tick Unlock to change it"
    for name in locked:
        p = props[f"{tab}-{name}"]
        assert p["label"].endswith(" 🔒") and p["info"].startswith(note) and p["interactive"] is False, (name, p)
    for name in free:
        p = props[f"{tab}-{name}"]
        assert "🔒" not in p["label"] and "locked by" not in (p.get("info") or ""), (name, p)


def test_train_marks_what_an_unlocked_run_changes_and_locking_again_restores_the_preset():
    from studio.train_tab import FIELDS
    from studio.widgets import lock_toggled, locked_updates

    now = ["full", 2e-6, 4, 2, 64, 1, 1, "a photo of sks person", "", "0-1"]
    up = dict(zip(FIELDS, lock_toggled("sweet-spot", "train", FIELDS, True, now, marks=True), strict=True))
    assert up["max_train_steps"]["label"] == "max train steps · differs from preset (1200)"
    assert up["resolution"]["label"] == "resolution · differs from preset (512)"
    assert up["validation_seeds"]["label"] == "validation seeds · differs from preset (0-3)"  # not locked: marked too
    assert up["learning_rate"]["label"] == "learning rate" and up["learning_rate"]["info"] == ""  # the note goes
    down = dict(zip(FIELDS, lock_toggled("sweet-spot", "train", FIELDS, False, now, marks=True), strict=True))
    assert down["max_train_steps"]["value"] == 1200 and down["max_train_steps"]["label"] == "max train steps 🔒"
    assert down["max_train_steps"]["info"].startswith("🔒 locked by preset sweet-spot")
    assert down["validation_seeds"]["label"] == "validation seeds · differs from preset (0-3)"  # unlocked: kept
    other = dict(zip(FIELDS, locked_updates("cooked", "train", FIELDS, False, marks=True), strict=True))
    assert other["learning_rate"]["info"].startswith("🔒 locked by preset cooked")  # another preset picked


def test_enlarge_marks_keep_the_plain_names_and_the_technical_ones():
    from dreamy.recipes.presets import load_preset, preset_fields
    from studio.enlarge_tab import FIELDS, LABELS, field_updates

    base = preset_fields(load_preset("biased-dreams"), "enlarge")
    values = [base[n] for n in FIELDS]
    values[FIELDS.index("steps")] = 2
    up = dict(zip(FIELDS, field_updates("biased-dreams", True, values, toggled=True), strict=True))
    assert up["steps"]["label"] == "Steps · differs from preset (30)" and up["steps"]["info"] == "steps"
    assert up["s_cfg"]["label"] == "Guidance (CFG)" and up["s_cfg"]["info"] == LABELS["s_cfg"][1]
    down = dict(zip(FIELDS, field_updates("biased-dreams", False, values, toggled=True), strict=True))
    assert down["steps"]["value"] == 30 and down["steps"]["label"] == "Steps 🔒"
    assert down["s_churn"]["info"] == "🔒 locked by preset biased-dreams: tick Unlock to change it · s_churn · EDM's S_churn"


def test_a_batchs_notes_are_said_once_naming_the_pictures_they_concern():
    from types import SimpleNamespace as NS

    from studio.enlarge_tab import _grouped_notes

    def made(source, *notes):
        return NS(source=source, result=NS(notes=list(notes)))

    demo, small = "the tiny demo ran instead", "smaller than 512 px"
    batch = [made("a.png", demo, small), made("b.png", demo), made("c.png", demo, small)]
    assert _grouped_notes(batch) == [demo, f"a.png, c.png: {small}"]
    assert _grouped_notes([made("a.png", demo)]) == [f"a.png: {demo}"]  # one picture: named as before
    assert _grouped_notes([made("a.png"), made("b.png")]) == []


# ---- 2. quick try ----

def test_the_quick_try_is_what_quick_try_changes_in_its_parent_preset():
    from studio.widgets import quick_try_values

    assert quick_try_values("dream") == {"steps": 12, "width": 256, "height": 256}
    assert quick_try_values("train") == {"max_train_steps": 40, "checkpointing_steps": 10, "resolution": 256}
    assert quick_try_values("enlarge") == {"steps": 10}


def test_the_quick_try_button_unlocks_and_fills_the_form_over_any_preset():
    from studio.dream_form import FIELDS, quick_try
    from studio.widgets import as_json

    now = ["gigafractal artstyle", "", 12.5, 20, 512, 512, "euler_a", "a1111",
           as_json({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})]
    unlock, *updates = quick_try("gigafractal", *now)
    got = dict(zip(FIELDS, updates, strict=True))
    assert unlock is True and [got[n]["value"] for n in ("steps", "width", "height")] == [12, 256, 256]
    assert got["sampler"]["value"] == "euler_a" and got["guidance"]["value"] == 12.5  # the rest stays the preset's
    assert got["steps"]["label"] == "steps · differs from preset (20)" and got["steps"]["interactive"]


def test_a_quick_try_dream_records_its_changes_as_unlocked(client):
    from dreamy.png.metadata import read_recipe

    gallery, sheet, status, *_ = client.predict("tiny", "biased-dreams", "5", True, 1, PACKAGE_DEAL, "", 3.0, 12, 256,
                                                256, api_name="/dream")
    r = read_recipe(gallery[0]["image"])
    assert r.preset == "biased-dreams" and (r.settings.steps, r.settings.width) == (12, 256)
    assert r.unlocked["steps"] == {"preset": 50, "value": 12} and r.unlocked["width"] == {"preset": 512, "value": 256}


# ---- 3. progress and results ----

def test_progress_is_one_plain_line():
    from dreamy.events import Progress
    from studio.dream_form import progress_line

    said = []
    show = progress_line(lambda f, desc: said.append((round(f, 3), desc)))
    show(Progress("dream", 12, 50, item=0, items=4, message="seeds 1-1 of 4"))
    show(Progress("dream", 3, 50, item=2, items=4))
    assert said == [(0.06, "picture 1 of 4 · step 12/50"), (0.515, "picture 3 of 4 · step 3/50")]
    batched = []
    progress_line(lambda f, desc: batched.append(desc), batch=4)(Progress("dream", 1, 50, item=12, items=14))
    assert batched == ["pictures 13-14 of 14 · step 1/50"]


def test_dream_jobs_draw_one_progress_bar_and_the_sheet_is_a_picture(studio):
    import app

    demo = app.build(studio[1])
    cfg = demo.get_config_file()
    by_id = {c["id"]: c for c in cfg["components"]}
    gallery = next(c["id"] for c in cfg["components"] if c["props"].get("elem_id") == "dream-gallery")
    sheet = next(c for c in cfg["components"] if c["props"].get("elem_id") == "dream-sheet")
    assert sheet["type"] == "image"  # a preview, not a file link
    jobs = [d for d in cfg["dependencies"] if d.get("api_name") in ("dream", "prompt_sweep", "checkpoint_grid")]
    assert len(jobs) == 3 and all(d["show_progress_on"] == [gallery] for d in jobs)
    mine = ("PNG, JPEG or WebP", "GIF (one seamless loop)")  # Dream's Recall drop and Particles' GIF
    clipped = [c["props"]["label"] for c in by_id.values() if c["type"] == "file" and c["props"].get("label") in mine
               and c["props"].get("height")]
    assert len([c for c in by_id.values() if c["props"].get("label") in mine]) == 2
    assert not clipped, f"File boxes with a fixed height clip their rows: {clipped}"


def test_no_estimate_from_an_earlier_run_reaches_the_page(client):
    """Gradio's ETA is the mean of the event's earlier runs: a long dream after a short one (or the
    other way round) showed the other's time. After a first dream, a second one gets no estimate."""
    client.predict("tiny", "biased-dreams", "0", True, 1, *SMALL, api_name="/dream")
    job = client.submit("tiny", "biased-dreams", "1", True, 1, *SMALL, api_name="/dream")
    seen = []
    while not job.done():
        seen.append(job.status().eta)
    job.result()
    seen.append(job.status().eta)
    assert not [e for e in seen if e], f"an estimate reached the client: {seen}"


def test_recall_says_byte_identical_next_to_its_result(client):
    gallery, *_ = client.predict("tiny", "biased-dreams", "7", True, 1, *SMALL, api_name="/dream")
    from gradio_client import handle_file

    again, status = client.predict(handle_file(gallery[0]["image"]), api_name="/recall")
    assert "Re-dreamed seed 7: **byte-identical** to the PNG you dropped" in status
    assert Path(again).read_bytes() == Path(gallery[0]["image"]).read_bytes()


def test_recall_says_how_far_off_a_re_dream_is(tmp_path):
    from studio.dream_form import sameness

    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.new("RGB", (10, 10), (10, 20, 30)).save(a)
    im = Image.new("RGB", (10, 10), (10, 20, 30))
    im.putpixel((0, 0), (13, 20, 30))
    im.save(b)
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "x")
    Image.new("RGB", (10, 10), (10, 20, 30)).save(c, pnginfo=info)
    assert "byte-identical" in sameness(str(a), a)
    assert sameness(str(a), b) == ("**not identical**: 1.0% of the pixels differ, by at most 3 of 255 "
                                   "(another device, dtype or library version)")
    assert sameness(str(a), c).startswith("the same pixels")


# ---- 4. particles: GIF sizes ----

@pytest.mark.parametrize("size", [512, 1024])
def test_particles_gif_in_the_size_asked_for(client, tmp_path, size):
    from gradio_client import handle_file

    p = tmp_path / "wide.png"
    Image.new("RGB", (120, 60), (200, 80, 40)).save(p)
    gif, _ = client.predict(handle_file(str(p)), 0.2, 0.5, 2.0, size, api_name="/particles_gif")
    assert Image.open(gif).size == (size, size // 2)


def test_particles_gif_defaults_to_256_and_refuses_other_sizes(client, tmp_path):
    from gradio_client import handle_file

    p = tmp_path / "square.png"
    Image.new("RGB", (40, 40), (20, 80, 140)).save(p)
    gif, _ = client.predict(handle_file(str(p)), 0.2, 0.5, 2.0, api_name="/particles_gif")  # a client of before
    assert Image.open(gif).size == (256, 256)
    with pytest.raises(Exception, match="256|one of the listed choices|not in the list"):
        client.predict(handle_file(str(p)), 0.2, 0.5, 2.0, 300, api_name="/particles_gif")


def test_particles_cli_size(tmp_path, capsys):
    from dreamy.cli.main import main

    src = tmp_path / "p.png"
    Image.new("RGB", (64, 48), (90, 30, 160)).save(src)
    assert main(["particles", str(src), "--out", str(tmp_path / "loop.gif"), "--size", "768"]) == 0
    assert Image.open(tmp_path / "loop.gif").size == (768, 576)
    assert main(["particles", str(src), "--out", str(tmp_path / "x.gif"), "--density", "2"]) == 2
    assert "Density must be between 0 and 1" in capsys.readouterr().err


# ---- 5. the console's start-up lines ----

def test_start_up_lines_are_dreamys_and_never_say_share_true(tmp_path, capsys):
    from test_app_api import free_port

    import app
    from studio.session import Studio

    st = Studio(default_model="tiny", outputs=tmp_path / "outputs", models=tmp_path / "models")
    st.models.mkdir(parents=True)
    demo = app.build(st)
    _, url, _ = app.launch(demo, st, port=free_port(), prevent_thread_lock=True)
    try:
        out = capsys.readouterr().out
    finally:
        demo.close()
    assert f"dreamy: the studio is at {url}" in out and "--share --auth USER:PASSWORD" in out
    assert "share=True" not in out and "Running on local URL" not in out
    assert app.address_lines("http://x:1/", "https://y.gradio.live", "127.0.0.1", True).splitlines()[1] == \
        "dreamy: public link https://y.gradio.live (sign-in required)"


# ---- 6. Use its settings carries the sampler and prompt syntax (#21) ----

def test_a_dreamy_pngs_form_values_carry_its_sampler_scheduler_and_syntax(client):
    from dreamy.png.info import dream_form

    ov = json.dumps({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
    gallery, *_ = client.predict("tiny", "biased-dreams", "3", True, 1, PACKAGE_DEAL, "", 3.0, 2, 64, 64, "euler_a",
                                 "a1111", ov, api_name="/dream")
    form = dream_form(gallery[0]["image"], "biased-dreams")
    assert (form.values["sampler"], form.values["prompt_syntax"]) == ("euler_a", "a1111")
    assert form.values["scheduler"] == json.loads(ov) and {"sampler", "scheduler", "prompt_syntax"} <= set(form.unlock)


def test_a_malformed_scheduler_is_one_sentence(client):
    with pytest.raises(Exception, match="'scheduler' must be a JSON object"):
        client.predict("tiny", "biased-dreams", "3", True, 1, *SMALL, "ddim", "plain", "{not json", api_name="/dream")
