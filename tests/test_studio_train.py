"""The Train tab as a user meets it (issue #17): the loss plot, Resume's history, the validation grid,
training sets (refused uploads, removing photos, sets made elsewhere), Export's formats, and Stop.

One studio serves both halves: gradio_client calls (as a script would) and headless chromium (as a
person clicks; skipped without playwright or Debian's chromium, see tests/test_browser.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_app_api import running_studio

from conftest import REPO

pytestmark = pytest.mark.timeout(600)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "browser"
IDLE = "Not running. Stop saves a checkpoint; Resume continues from the newest one."


def train_args(run: str, steps: int, every: int = 2, mode: str = "full") -> tuple:
    return ("subject", "tiny", "sweet-spot", run, True, mode, 1e-4, steps, every, 64, 1, 1,
            "a photo of sks person", "", "0", 64, 64, 2)


def photos(folder: Path, n: int = 3, size: tuple[int, int] = (96, 80)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"photo{i}.png"
        Image.new("RGB", size, (60 * i, 120, 200 - 40 * i)).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("train-tab")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    c = Client(studio[0], verbose=False, download_files=str(studio[1].outputs.parent / "downloads"))
    yield c
    c.close()


# ---- through the API ----

def test_refused_uploads_stay_out_of_the_set_and_photos_can_be_removed(client, studio, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    good = photos(tmp_path)
    (tmp_path / "notanimage.jpg").write_text("hello")
    Image.new("RGB", (40, 40)).save(tmp_path / "small.png")
    files = [handle_file(str(p)) for p in (*good, tmp_path / "notanimage.jpg", tmp_path / "small.png")]
    thumbs, notes, chosen = client.predict(files, "subject", 64, api_name="/add_photos")  # as before: 3 outputs
    folder = studio[1].training_sets / "subject"
    assert sorted(p.name for p in folder.iterdir()) == ["photo0.png", "photo1.png", "photo2.png"]
    assert len(thumbs) == 3 and chosen["value"] == "subject"
    assert notes.startswith("**3** usable photo(s) in `subject`\n\nNot added:") and "refused" not in notes
    assert "- notanimage.jpg: not an image in a supported format" in notes
    assert "- small.png: only 40x40 pixels; images must be at least 64 px on each side, skipped" in notes

    shutil.copy(tmp_path / "small.png", folder)  # put there by hand: listed once as refused, removable
    _, notes, _ = client.predict([], "subject", 64, api_name="/add_photos")
    assert "**3** usable photo(s) in `subject`, 1 refused" in notes
    assert "- small.png — refused: only 40x40" in notes and notes.count("refused") == 2  # head + the line
    thumbs, notes = client.predict("subject", ["small.png", "photo2.png"], 64, api_name="/remove_photos")
    assert sorted(p.name for p in folder.iterdir()) == ["photo0.png", "photo1.png"]
    assert len(thumbs) == 2 and "refused" not in notes
    for bad in (["../../../etc/passwd"], ["photo9.png"], []):
        with pytest.raises(AppError, match=r"^(Training set 'subject' has no photo named|Pick the photos)"):
            client.predict("subject", bad, 64, api_name="/remove_photos")
    client.predict([handle_file(str(good[2]))], "subject", 64, api_name="/add_photos")  # for the runs below


def test_the_loss_plot_is_numeric_and_resume_shows_the_whole_run(client, studio):
    status, loss, grid, log, _curves = client.predict(*train_args("api-history", 4), api_name="/train")
    assert status.startswith("Finished at step 4")
    assert loss["datatypes"] == {"step": "quantitative", "loss": "quantitative"}  # not one category per value
    first = [row[:2] for row in loss["data"]]
    assert [s for s, _ in first] == [1, 2, 3, 4]
    assert client.predict(api_name="/stop_train") == IDLE  # nothing running (the page keeps its status: below)

    status, loss, grid, log, _curves = client.predict(*train_args("api-history", 6), api_name="/resume_train")
    assert status.startswith("Finished at step 6") and "resumed at step 4" in log
    assert [row[0] for row in loss["data"]] == [1, 2, 3, 4, 5, 6]  # the run's history, then the new steps
    assert [row[:2] for row in loss["data"][:4]] == first
    assert loss["datatypes"] == {"step": "quantitative", "loss": "quantitative"}
    assert json.loads(Image.open(grid).info["dreamy_grid"])  # the grid of the whole run: steps 0-6


def test_export_offers_lora_only_for_a_checkpoint_with_lora_weights(client, studio):
    from gradio_client.exceptions import AppError

    from studio.train_tab import EXPORTS, _formats

    run = studio[1].models / "api-history"
    with pytest.raises(AppError, match=r"^Checkpoint step-0006 is a full fine-tune, not a LoRA; export "
                                       r"'diffusers' or 'single-file' instead\.$"):
        client.predict("api-history", "", "lora,card", api_name="/export")
    found = [(int(p.name.removeprefix("step-")), p) for p in sorted((run / "checkpoints").iterdir())]
    offered = _formats(found, None, "lora,card")
    assert [v for _, v in offered["choices"]] == ["single-file,card", "diffusers,card", "card"]
    assert offered["value"] == "single-file,card"  # a value it no longer offers falls back to the first
    lora = run.parent / "a-lora" / "checkpoints" / "step-0002"  # what a LoRA run's marker records
    lora.mkdir(parents=True)
    (lora / "dreamy-checkpoint.json").write_text(json.dumps({"format": 1, "mode": "lora", "parts": ["lora_unet"]}))
    both = [*found, (2, lora)]
    assert _formats(both, "2", "lora,card") == {"__type__": "update", "choices": EXPORTS, "value": "lora,card"}
    assert _formats(both, "4", "lora,card")["value"] == "single-file,card"  # step 4 of the full run
    assert _formats([], None, None)["value"] == "single-file,card"


# ---- in the browser ----

@pytest.fixture(scope="module")
def page(studio):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium: apt-get install -y chromium (as root)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(30_000)
        page.console = []  # what the page logs: Vega's scale warnings land here
        page.on("console", lambda m: page.console.append(m.text))
        page.goto(studio[0])
        page.locator("#dream-prompt textarea").wait_for()
        yield page
        browser.close()


def expect():
    from playwright.sync_api import expect

    return expect


def options(page, dropdown: str) -> list[str]:
    page.locator(f"{dropdown} input").first.click()
    page.wait_for_timeout(300)
    found = [t.replace("✓", "").strip() for t in page.locator("ul[role=listbox] li").all_inner_texts()]
    page.keyboard.press("Escape")
    return found


def set_number(page, selector: str, value: int) -> None:
    box = page.locator(f"{selector} input").first
    box.fill(str(value))
    box.press("Tab")


def test_sets_made_after_the_page_loaded_appear_in_train(page, studio, tmp_path):
    from dreamy.training.sets import add_to_training_set

    add_to_training_set(photos(tmp_path), "made-later", studio[1].training_sets)  # after the studio was built
    page.reload()
    page.locator("#dream-prompt textarea").wait_for()
    page.get_by_role("tab", name="Train").click()
    assert "made-later" in options(page, "#train-set")
    page.get_by_role("tab", name="Dream").click()  # the curation loop: keep a dream in a new set
    page.locator("#dream-unlock input").check()
    for name, value in (("steps", 2), ("width", 64), ("height", 64)):
        set_number(page, f"#dream-{name}", value)
    page.locator("#dream-seeds textarea, #dream-seeds input").first.fill("0")
    page.locator("#dream-go").click()
    expect()(page.locator("#dream-status")).to_contain_text("1 dreamed", timeout=90_000)
    page.locator("#dream-gallery img").first.click()
    page.get_by_role("button", name="Add selected to training set").click()  # into Dream's default set
    expect()(page.locator("#dream-status")).to_contain_text("to training set candidates", timeout=30_000)
    page.get_by_role("tab", name="Train").click()
    expect()(page.locator("#train-set")).to_be_visible()
    page.wait_for_timeout(500)
    assert {"candidates", "made-later"} <= set(options(page, "#train-set"))


def test_train_shows_a_numeric_plot_the_whole_grid_and_keeps_its_status(page, studio, tmp_path):
    from dreamy.training.sets import add_to_training_set

    ex = expect()
    add_to_training_set(photos(tmp_path), "subject", studio[1].training_sets)  # as the API test left it
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-set input").first.fill("subject")
    page.keyboard.press("Enter")
    ex(page.locator("#train-set-notes")).to_contain_text("usable photo(s) in subject")
    page.wait_for_timeout(300)
    assert options(page, "#train-remove-files") == ["photo0.png", "photo1.png", "photo2.png"]
    page.locator("#train-unlock input").check()
    for name, value in (("max_train_steps", 6), ("checkpointing_steps", 2), ("resolution", 64)):
        set_number(page, f"#train-{name}", value)
    page.get_by_text("Validation renders").click()
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        set_number(page, f"#train-validation-{name}", value)
    page.locator("#train-validation_seeds textarea, #train-validation_seeds input").first.fill("0-1")
    page.locator("#train-run-name textarea, #train-run-name input").first.fill("browser-run")
    page.console.clear()
    page.locator("#train-start").click()
    ex(page.locator("#train-status")).to_contain_text("Finished at step 6", timeout=300_000)
    page.wait_for_timeout(500)
    assert not [m for m in page.console if "point scale" in m], page.console  # quantitative axes

    label = page.locator("#train-grid label").first.bounding_box()
    img = page.locator("#train-grid img").first.bounding_box()
    frame = page.locator("#train-grid").bounding_box()
    assert img["y"] >= label["y"] + label["height"] - 1, (label, img)  # the step-0 row is not under the label
    assert img["y"] + img["height"] <= frame["y"] + frame["height"] + 1  # nor is the last row cut off

    page.get_by_text("Export a checkpoint").click()
    ex(page.get_by_text("Into models/<run>/export/step-XXXX/. Pick the step inside the corridor.")).to_be_visible()
    assert options(page, "#train-export-what") == ["single file + model card", "diffusers folder + model card",
                                                   "model card"]  # a full fine-tune has no LoRA files
    page.get_by_text("Export a checkpoint").click()
    page.locator("#train-stop").click()  # nothing is running
    page.wait_for_timeout(1000)
    ex(page.locator("#train-status")).to_contain_text("Finished at step 6")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "train-tab.png"), full_page=True)

    page.locator("#train-photos img").nth(2).click()  # a thumbnail picks its file for Remove from set
    ex(page.locator("#train-remove-files")).to_contain_text("photo2.png")
    page.screenshot(path=str(ARTIFACTS / "train-remove.png"), full_page=True)
    page.locator("#train-remove").click()
    ex(page.locator("#train-set-notes")).to_contain_text("2 usable photo(s) in subject")
    assert sorted(p.name for p in (studio[1].training_sets / "subject").iterdir()) == ["photo0.png", "photo1.png"]
