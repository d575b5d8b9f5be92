"""The corridor loop in a real browser (issue #17): train a few steps on the tiny demo, look at the run's
checkpoint × seed grid, click a cell, Dream opens that checkpoint and seed and dreams it, the picture
goes to Enlarge and is enlarged by the tiny SUPIR demo. Then the loop's side doors: a checkpoint
exported, and Dream's "Send all to Enlarge" enlarging a whole gallery as one batch. Every File box on
the way shows its rows whole.

Screenshots of each stage land in test-artifacts/browser/corridor-*.png (the README's walkthrough
uses them: docs/images/corridor-*.png). Set-up: tests/browser_util.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser_util import (
    ARTIFACTS,
    NEEDS_CHROMIUM,
    PLAYWRIGHT,
    file_rows_seen,
    open_page,
    set_number,
    set_text,
    shot,
    wait_for,
)
from PIL import Image
from test_app_api import running_studio

sync_api = pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
pytestmark = [pytest.mark.timeout(600), NEEDS_CHROMIUM]
RUN = "corridor"
# Tiny everywhere: 4 training steps of 64 px with a checkpoint every 2, validations and dreams of
# 64 px in 2 steps, 2 enlargement steps. Each changes a locked field: the form is unlocked, and
# every run, PNG and enlargement records it.
TRAIN = {"max_train_steps": 4, "checkpointing_steps": 2, "resolution": 64}
SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("browser-corridor")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def page(studio):
    with open_page(studio[0]) as page:
        yield page


def expect(locator):
    return sync_api.expect(locator)


def laptop(page, name: str, top: str | None = None) -> None:
    """What a laptop screen shows (1440 × 900), scrolled so that ``top`` is at the top: the README's
    pictures; the whole page too, for looking at. An Info toast ("Dream is set to …") is closed first:
    it would cover the gallery."""
    for close in page.locator(".toast-body.info .toast-close").all():
        close.click()
    shot(page, name)
    page.evaluate("top => window.scrollTo(0, top ? document.querySelector(top).getBoundingClientRect().top"
                  " + window.scrollY - 12 : 0)", top)
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / f"{name}-laptop.png"))


def assert_a_column_wide(page, gallery: str, columns: int) -> None:
    """One picture in a gallery of ``columns`` columns is one column wide, wholly in the frame (Gradio's
    fit_columns made it the gallery's full width, a square cut by the frame's height)."""
    frame = page.locator(gallery).bounding_box()
    pic = page.locator(f"{gallery} img").first.bounding_box()
    assert pic["width"] <= frame["width"] / columns + 1, (pic, frame)
    assert pic["y"] + pic["height"] <= frame["y"] + frame["height"], (pic, frame)


def small(page, tab: str, values: dict) -> None:
    """Unlock a tab's form (if it is not yet) and type in ``values``."""
    unlock = page.locator(f"#{tab}-unlock input")
    if not unlock.is_checked():
        unlock.check()
    for name, value in values.items():
        set_number(page, f"#{tab}-{name}", value)


def photos(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(3):
        p = folder / f"photo{i}.jpg"
        Image.new("RGB", (120, 90), (70 * i, 140, 220 - 60 * i)).save(p)
        out.append(str(p))
    return out


@pytest.mark.slow  # ~1-2 min on 2 cores: a training, a dream and an enlargement
def test_the_corridor_loop_from_training_to_an_enlarged_keeper(page, studio, tmp_path):
    # 1 · Train: photos in, the preset's locks marked, unlocked to tiny settings (each marked as changed)
    page.get_by_role("tab", name="Train").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#train-upload").click()
    chooser.value.set_files(photos(tmp_path / "photos"))
    expect(page.get_by_text("usable photo(s)")).to_be_visible(timeout=30_000)
    expect(page.locator("#train-learning_rate")).to_contain_text("locked by preset sweet-spot: tick Unlock")
    page.locator("#train-unlock input").check()
    for name, value in TRAIN.items():
        set_number(page, f"#train-{name}", value)
    expect(page.locator("#train-max_train_steps")).to_contain_text("max train steps · differs from preset (1200)")
    expect(page.locator("#train-learning_rate")).not_to_contain_text("locked by preset")
    page.get_by_text("Validation renders").click()
    for name, value in SMALL.items():
        set_number(page, f"#train-validation-{name}", value)
    set_text(page, "#train-run-name", RUN)
    laptop(page, "corridor-0-train-recipe")
    page.locator("#train-start").click()
    wait_for(page, "#train-status", "Finished at step 4", 180_000)

    # 2 · The run's checkpoint × seed grid: steps 0 (the base model), 2 and 4 × the preset's seeds 0-3
    cells = page.locator("#train-cells img")
    expect(cells).to_have_count(12, timeout=20_000)
    expect(page.locator("#train-cells")).to_contain_text("step 2 · seed 1")
    expect(page.locator("#train-grid img")).to_be_visible()
    cells.nth(5).click()  # step 2, seed 1
    page.keyboard.press("Escape")  # the gallery's preview, if it opened
    expect(page.locator("#train-to-dream")).to_have_text("Dream step 2 · seed 1")
    laptop(page, "corridor-1-train", top="#train-loss")

    # 3 · Dream opens that checkpoint and seed with the grid's own settings (the run's validation recipe:
    #     its smaller size and fewer steps, unlocked and marked), and dreams the cell's picture again
    page.locator("#train-to-dream").click()
    expect(page.get_by_role("tab", name="Dream")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#dream-model input").first).to_have_value(f"{RUN} · step 2", timeout=10_000)
    expect(page.locator("#dream-seeds textarea, #dream-seeds input").first).to_have_value("1", timeout=20_000)
    expect(page.locator("#dream-unlock input")).to_be_checked(timeout=20_000)  # a busy machine answers late
    for name, value in SMALL.items():
        expect(page.locator(f"#dream-{name} input").first).to_have_value(str(value), timeout=20_000)
    page.locator("#dream-go").click()
    wait_for(page, "#dream-status", "1 dreamed", 120_000)
    assert_a_column_wide(page, "#dream-gallery", 4)
    made = next((studio[1].outputs / "dream").glob("*/step000002-seed000001.png"))
    recipe = json.loads(Image.open(made).info["dreamy"])
    assert recipe["seed"] == 1 and recipe["model"]["checkpoint_step"] == 2 and RUN in recipe["model"]["source"]
    cell = next((studio[1].models / RUN / "validation").glob("step000002-seed000001.png"))
    assert Image.open(made).tobytes() == Image.open(cell).tobytes()  # the cell's picture, pixel for pixel
    laptop(page, "corridor-2-dream")

    # 4 · The keeper goes to Enlarge, whose locks are marked under plain names, and is enlarged
    page.locator("#dream-gallery img").first.click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Send to Enlarge", exact=True).click()
    expect(page.get_by_role("tab", name="Enlarge")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#enlarge-image img").first).to_have_attribute("src", re.compile(r"seed000001\.png$"))
    expect(page.locator("#enlarge-size")).to_contain_text(re.compile(r"Output size: .*64×64 → 256×256"))
    steps = page.locator("#enlarge-steps")
    expect(steps).to_contain_text("Steps 🔒")
    expect(steps).to_contain_text("locked by preset biased-dreams: tick Unlock to change it · steps")
    page.locator("#enlarge-unlock input").check()
    set_number(page, "#enlarge-steps", 2)
    expect(steps).to_contain_text("Steps · differs from preset (30)")
    expect(page.locator("#enlarge-s_cfg")).to_contain_text("s_cfg · demo: Text Guidance Scale")  # plain, no lock
    expect(page.locator("#enlarge-s_cfg")).not_to_contain_text("locked by preset")
    page.locator("#enlarge-go").click()
    wait_for(page, "#enlarge-status", "Enlarged with the dreamy tiny SUPIR demo", 180_000)
    assert file_rows_seen(page, "#enlarge-download") == (1, 1)  # the PNG's row whole, not cut by the frame
    expect(page.locator("#enlarge-results img")).to_have_count(1)
    assert_a_column_wide(page, "#enlarge-results", 4)
    enlarged = next((studio[1].outputs / "enlarge").glob("*/*.png"))
    assert Image.open(enlarged).size == (256, 256)
    laptop(page, "corridor-3-enlarge")


def test_an_export_shows_its_files_whole(page, studio):
    page.get_by_role("tab", name="Train").click()
    page.get_by_text("Export a checkpoint").click()
    page.get_by_role("button", name="Export", exact=True).click()
    wait_for(page, "#train-status", "Exported", 120_000)
    shot(page, "train-exported")
    seen, rows = file_rows_seen(page, "#train-exported")
    assert rows == 3 and seen == 3, (seen, rows)  # the model, its card and the grid: each row whole
    page.get_by_text("Export a checkpoint").click()


@pytest.mark.slow  # three dreams and three enlargements: ~30-60 s on 2 cores
def test_send_all_to_enlarge_enlarges_the_whole_gallery(page, studio):
    from dreamy.png.metadata import read_recipe

    page.get_by_role("tab", name="Dream").click()
    page.locator("#dream-model input").first.click()
    page.get_by_role("option", name="tiny (offline demo)").click()
    small(page, "dream", SMALL)
    set_text(page, "#dream-seeds", "5-7")
    page.locator("#dream-go").click()
    wait_for(page, "#dream-status", "3 dreamed", 120_000)
    page.get_by_role("button", name="Send all to Enlarge").click()
    expect(page.get_by_role("tab", name="Enlarge")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#enlarge-image img").first).to_have_attribute("src", re.compile(r"seed000005\.png$"))
    more = page.locator("#enlarge-more")
    expect(more.locator("tbody tr")).to_have_count(2)
    expect(more).to_contain_text("seed000006")
    expect(more).to_contain_text("seed000007")
    assert file_rows_seen(page, "#enlarge-more") == (2, 2)
    expect(page.locator("#enlarge-size")).to_contain_text("Output sizes of the 3 pictures")
    small(page, "enlarge", {"steps": 2, "upscale": 1})  # x1, then the short-side rule
    page.locator("#enlarge-go").click()
    wait_for(page, "#enlarge-status", "Enlarged 3 of 3 pictures with the dreamy tiny SUPIR demo", 240_000)
    expect(page.locator("#enlarge-results img")).to_have_count(3)
    said = page.locator("#enlarge-status").inner_text()
    assert said.count("not on this machine") == 1, said  # a note every picture shares is said once
    laptop(page, "enlarge-send-all")
    folder = max((studio[1].outputs / "enlarge").iterdir(), key=lambda f: f.stat().st_mtime)
    sources = sorted(read_recipe(p).runtime["input"]["name"] for p in folder.glob("*.png"))
    assert sources == ["seed000005.png", "seed000006.png", "seed000007.png"], sources
