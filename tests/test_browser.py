"""A real browser clicks through the studio: Dream (lock toggle, a tiny dream), Train (a few steps, the
validation grid), Particles and Enlarge; a screenshot of each lands in test-artifacts/browser/.

Playwright drives Debian's chromium headless (tests/browser_util.py: no browser download, never
``playwright install``). Without playwright or chromium the test is skipped and says why.
"""

from __future__ import annotations

import pytest
from browser_util import NEEDS_CHROMIUM, PLAYWRIGHT, open_page, set_number
from browser_util import shot as _shot
from PIL import Image
from test_app_api import running_studio

sync_api = pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
pytestmark = [pytest.mark.timeout(300), NEEDS_CHROMIUM]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("browser")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def page(studio):
    with open_page(studio[0]) as page:
        yield page


def shot(page, name: str) -> None:
    """The whole page, and what a laptop screen shows without scrolling (the README's pictures)."""
    _shot(page, name, laptop=True)


def test_dream_lock_toggle_and_a_tiny_dream(page):
    expect = sync_api.expect
    prompt = page.locator("#dream-prompt textarea")
    expect(prompt).to_have_value("monumental, dramatic, atmospheric, transcendent")
    expect(prompt).to_be_disabled()  # locked by the preset
    expect(page.locator("#dream-steps input").first).to_be_disabled()
    expect(page.get_by_text("Offline demo")).to_be_visible()
    page.locator("#dream-unlock input").check()
    expect(prompt).to_be_enabled()
    for name, value in (("steps", 2), ("width", 64), ("height", 64)):
        set_number(page, f"#dream-{name}", value)
    page.locator("#dream-go").click()
    expect(page.locator("#dream-gallery img")).to_have_count(4, timeout=90_000)
    expect(page.locator("#dream-status")).to_contain_text("4 dreamed", timeout=30_000)
    shot(page, "dream")
    page.locator("#dream-seeds textarea, #dream-seeds input").first.fill("100-199")
    page.locator("#dream-go").click()
    expect(page.locator("#dream-status")).to_contain_text("of 100", timeout=60_000)
    page.locator("#dream-stop").click()  # mid-run: the core stops at the next step, finished images stay
    expect(page.locator("#dream-status")).to_contain_text("Stopped after", timeout=60_000)
    assert 1 <= page.locator("#dream-gallery img").count() < 100
    page.locator("#dream-unlock input").uncheck()  # locking again restores the preset's values
    expect(prompt).to_be_disabled()
    expect(page.locator("#dream-steps input").first).to_have_value("50")


def test_recall_puts_a_pngs_settings_back_in_the_form(page, studio):
    expect = sync_api.expect
    png = next((studio[1].outputs / "dream").glob("*/seed000002.png"))  # from the tiny dream above: 64 px, 2 steps
    page.get_by_text("Recall: drop a PNG").click()
    page.locator("#dream-recall input[type=file]").set_input_files(str(png))
    expect(page.get_by_text("Dreamy recipe")).to_be_visible()
    page.get_by_role("button", name="Use its settings").click()
    expect(page.locator("#dream-seeds textarea, #dream-seeds input").first).to_have_value("2")
    expect(page.locator("#dream-unlock input")).to_be_checked()  # its size and steps differ from the locks
    expect(page.locator("#dream-steps input").first).to_have_value("2")
    shot(page, "dream-recall")
    page.get_by_text("Recall: drop a PNG").click()


def test_train_a_few_steps_and_see_the_validation_grid(page, tmp_path):
    expect = sync_api.expect
    page.get_by_role("tab", name="Train").click()
    photos = []
    for i in range(3):
        p = tmp_path / f"photo{i}.jpg"
        Image.new("RGB", (120, 90), (70 * i, 140, 220 - 60 * i)).save(p)
        photos.append(str(p))
    with page.expect_file_chooser() as chooser:
        page.locator("#train-upload").click()
    chooser.value.set_files(photos)
    expect(page.get_by_text("usable photo(s)")).to_be_visible(timeout=30_000)
    page.locator("#train-unlock input").check()
    for name, value in (("max_train_steps", 2), ("checkpointing_steps", 1), ("resolution", 64)):
        set_number(page, f"#train-{name}", value)
    page.get_by_text("Validation renders").click()
    for name, value in (("width", 64), ("height", 64), ("steps", 2)):
        set_number(page, f"#train-validation-{name}", value)
    page.locator("#train-validation_seeds textarea, #train-validation_seeds input").first.fill("0-1")
    page.locator("#train-run-name textarea, #train-run-name input").first.fill("browser-run")
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("Finished at step 2", timeout=180_000)
    shot(page, "train")


def test_particles_and_enlarge_take_a_picture_from_dream(page):
    expect = sync_api.expect
    page.get_by_role("tab", name="Dream").click()
    page.locator("#dream-gallery img").first.click()
    page.get_by_role("button", name="Add selected to training set").click()  # curation: keep a good one
    expect(page.locator("#dream-status")).to_contain_text("to training set candidates")
    page.get_by_role("button", name="Send to Particles").click()
    expect(page.get_by_role("tab", name="Particles")).to_have_attribute("aria-selected", "true")
    page.locator("#particles-play").click()
    page.wait_for_timeout(1000)
    lit = page.evaluate("""() => {
        const c = document.querySelector('#particles-canvas canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) n++;
        return n; }""")
    assert lit > 1000, "the canvas stayed dark: the particles did not play"
    shot(page, "particles")
    page.get_by_role("tab", name="Dream").click()
    page.get_by_role("button", name="Send to Enlarge").click()
    expect(page.get_by_role("tab", name="Enlarge")).to_have_attribute("aria-selected", "true")
    page.locator("#enlarge-go").click()  # the tiny SUPIR demo enlarges it x4 with the locked recipe
    expect(page.locator("#enlarge-status")).to_contain_text("Enlarged", timeout=180_000)
    shot(page, "enlarge")
