"""Dream and Enlarge in a real browser, as issue #17 found them: the model list, a prompt sweep whose
rows can be told apart, a checkpoint grid whose cells become the gallery (one is sent to Enlarge),
Stop during an enlargement, and the demo named in Enlarge's status. Screenshots land in
test-artifacts/browser/ (set-up: tests/browser_util.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from browser_util import ARTIFACTS, NEEDS_CHROMIUM, PLAYWRIGHT, open_page, set_number, shot, wait_for
from PIL import Image
from test_app_api import running_studio

sync_api = pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
LONG = "monumental, dramatic, atmospheric, transcendent, golden hour"

pytestmark = [pytest.mark.timeout(600), NEEDS_CHROMIUM]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A studio with one training run (tiny, 4 steps, checkpoints at 2 and 4), trained through the API."""
    from gradio_client import Client, handle_file

    root = tmp_path_factory.mktemp("browser-dream")
    with running_studio(root) as (url, st):
        client = Client(url, verbose=False, download_files=str(root / "downloads"))
        photos = []
        for i in range(3):
            p = root / f"photo{i}.png"
            Image.new("RGB", (96, 80), (60 * i, 120, 200 - 40 * i)).save(p)
            photos.append(handle_file(str(p)))
        client.predict(photos, "subject", 64, api_name="/add_photos")
        status, *_ = client.predict("subject", "tiny", "sweet-spot", "grid-run", True, "full", 1e-4, 4, 2, 64, 1, 1,
                                    "a photo of sks person", "", "0-1", 64, 64, 2, api_name="/train")
        assert status.startswith("Finished at step 4"), status
        client.close()
        yield url, st


@pytest.fixture(scope="module")
def page(studio):
    with open_page(studio[0]) as page:
        yield page


def small_dreams(page) -> None:
    page.locator("#dream-unlock input").check()
    for name, value in (("steps", 2), ("width", 64), ("height", 64)):
        set_number(page, f"#dream-{name}", value)
    page.locator("#dream-seeds textarea, #dream-seeds input").first.fill("0-1")


def test_the_model_list_says_sd15_is_not_on_this_machine(page):
    expect = sync_api.expect
    page.locator("#dream-model input").click()
    expect(page.get_by_role("option", name="SD 1.5 (not on this machine)")).to_be_visible()
    shot(page, "dream-models")
    page.get_by_role("option", name="tiny (offline demo)").click()  # closes the list, keeps the model


def test_prompt_sweep_rows_are_labelled_by_what_differs(page, studio):
    small_dreams(page)
    page.get_by_text("Prompt sweep: variants × seeds").click()
    page.locator("#dream-variants textarea").fill(f"{LONG}, by Turner\n{LONG}, by Hiroshi Yoshida")
    page.locator("#dream-sweep-go").click()
    wait_for(page, "#dream-status", "4 dreamed", 120_000)
    grid = next((studio[1].outputs / "prompt-sweep").glob("*/prompt-grid.png"))
    shutil.copy(grid, ARTIFACTS / "prompt-grid.png")  # the labels are drawn in the PNG: look at it
    shot(page, "dream-prompt-sweep")
    page.get_by_text("Prompt sweep: variants × seeds").click()


def test_grid_cells_become_the_gallery_and_one_goes_to_enlarge_where_stop_ends_it(page, studio):
    expect = sync_api.expect
    small_dreams(page)
    page.get_by_text("Checkpoint × seed grid: find the window").click()
    page.locator("#dream-run input").click()
    page.get_by_role("option", name="grid-run (2 checkpoints, last step 4)").click()
    page.locator("#dream-grid-go").click()
    wait_for(page, "#dream-status", "Grid of grid-run: 6 images", 180_000)
    gallery = page.locator("#dream-gallery img")
    expect(gallery).to_have_count(6)  # base, step 2, step 4 x seeds 0-1: the grid's cells, not the sweep's
    expect(page.locator("#dream-gallery")).to_contain_text("step 0 (base) · seed 0")
    expect(page.locator("#dream-gallery")).to_contain_text("step 4 · seed 1")
    shot(page, "dream-checkpoint-grid")
    gallery.nth(3).click()  # step 2, seed 1
    page.get_by_role("button", name="Send to Enlarge").click()
    expect(page.get_by_role("tab", name="Enlarge")).to_have_attribute("aria-selected", "true")
    sent = page.locator("#enlarge-image img").first
    expect(sent).to_have_attribute("src", re.compile(r"seed000001\.png$"))
    cell = next((studio[1].outputs / "checkpoint-grid").glob("*/01-step-0002/seed000001.png"))
    served = Path(sent.get_attribute("src").split("file=", 1)[1])  # Gradio's copy of the file it was handed
    assert served.read_bytes() == cell.read_bytes()  # that cell, not a dream from before

    page.locator("#enlarge-unlock input").check()
    set_number(page, "#enlarge-steps", 400)  # minutes on a CPU: Stop ends it
    page.locator("#enlarge-go").click()
    expect(page.locator("#enlarge-status")).to_contain_text("step", timeout=120_000)  # sampling
    page.locator("#enlarge-stop").click()
    wait_for(page, "#enlarge-status", "Stopped; nothing was saved.", 60_000)
    shot(page, "enlarge-stopped")

    set_number(page, "#enlarge-steps", 2)
    page.locator("#enlarge-go").click()
    wait_for(page, "#enlarge-status", "Enlarged with the dreamy tiny SUPIR demo", 180_000)
    expect(page.locator("#enlarge-status")).to_contain_text("so the tiny demo ran instead")
    shot(page, "enlarge-demo")

