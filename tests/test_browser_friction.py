"""Issue #17's friction items in a real browser: lock notes and "differs from preset" marks, the
Quick try button, one progress bar, the contact sheet as a picture, Recall saying "byte-identical"
under its own result, and "Use its settings" of an A1111 file setting the sampler and prompt syntax
(#21). Screenshots land in test-artifacts/browser/ (set-up: tests/browser_util.py).
"""

from __future__ import annotations

import pytest
from browser_util import NEEDS_CHROMIUM, PLAYWRIGHT, no_toast, open_page, set_number
from browser_util import shot as _shot
from PIL import Image, PngImagePlugin
from test_app_api import running_studio

sync_api = pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
A1111 = ("biomorphic, (fractalism:0.7), a spiral\nNegative prompt: lowres\n"
         "Steps: 2, Sampler: Euler a, CFG scale: 12.5, Seed: 42, Size: 64x64, Model hash: abcdef1234")

pytestmark = [pytest.mark.timeout(600), NEEDS_CHROMIUM]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("browser-friction")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def page(studio):
    with open_page(studio[0]) as page:
        yield page


def shot(page, name: str) -> None:
    _shot(page, name, laptop=True)


def test_locked_fields_say_who_locks_them_and_unlocked_ones_what_differs(page):
    expect = sync_api.expect
    guidance, steps = page.locator("#dream-guidance"), page.locator("#dream-steps")
    expect(guidance).to_contain_text("locked by preset biased-dreams: tick Unlock to change it")
    expect(page.locator("#dream-prompt")).to_contain_text("locked by preset biased-dreams")
    shot(page, "dream-locked")
    page.locator("#dream-unlock input").check()
    expect(guidance).not_to_contain_text("locked by preset")  # the note goes with the lock
    set_number(page, "#dream-steps", 7)
    expect(steps).to_contain_text("steps · differs from preset (50)")
    expect(guidance).not_to_contain_text("differs")
    set_number(page, "#dream-guidance", 4.5)
    expect(guidance).to_contain_text("guidance · differs from preset (3.0)")
    set_number(page, "#dream-guidance", 3)  # back to the preset's value: the mark goes
    expect(guidance).not_to_contain_text("differs")
    page.locator("#dream-unlock input").uncheck()  # locking again: the preset's values and notes are back
    expect(steps.locator("input").first).to_have_value("50")
    expect(steps).to_contain_text("locked by preset biased-dreams")
    expect(steps).not_to_contain_text("differs")


def test_quick_try_dreams_small_unlocked_with_one_progress_bar_and_a_contact_sheet(page, studio):
    from dreamy.png.metadata import read_recipe

    expect = sync_api.expect
    page.locator("#dream-seeds textarea, #dream-seeds input").first.fill("0-1")
    page.locator("#dream-quick").click()
    expect(page.locator("#dream-unlock input")).to_be_checked()
    expect(page.locator("#dream-steps input").first).to_have_value("12")
    expect(page.locator("#dream-width")).to_contain_text("width · differs from preset (512)")
    trackers = page.locator("[data-testid='status-tracker'] .progress-text")
    trackers.first.wait_for()  # the job's tracker: on the gallery only, showing no estimate from elsewhere
    bars = [t for t in trackers.all() if t.is_visible()]
    assert len(bars) == 1 and "/" not in bars[0].inner_text().split("|")[-1], [b.inner_text() for b in bars]
    expect(page.locator("#dream-status")).to_contain_text("2 dreamed", timeout=300_000)
    no_toast(page)
    expect(page.locator("#dream-sheet img")).to_be_visible()  # the contact sheet as a picture
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "dream-quick-try")
    png = next((studio[1].outputs / "dream").glob("*/seed000001.png"))
    r = read_recipe(png)
    assert (r.settings.width, r.settings.steps) == (256, 12) and r.unlocked["steps"] == {"preset": 50, "value": 12}


def test_recall_says_byte_identical_under_its_result(page, studio):
    expect = sync_api.expect
    png = next((studio[1].outputs / "dream").glob("*/seed000000.png"))  # the quick try's
    page.get_by_text("Recall: drop a PNG").click()
    page.locator("#dream-recall input[type=file]").set_input_files(str(png))
    expect(page.get_by_text("Dreamy recipe")).to_be_visible()
    before = page.locator("#dream-status").inner_text()
    page.get_by_role("button", name="Re-dream it exactly").click()
    expect(page.locator("#dream-recall-status")).to_contain_text("byte-identical to the PNG you dropped",
                                                                 timeout=300_000)
    assert page.locator("#dream-status").inner_text() == before  # the other column is left alone
    shot(page, "dream-recall-identical")


def test_use_its_settings_of_an_a1111_file_sets_the_sampler_and_the_syntax(page, tmp_path):
    expect = sync_api.expect
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64), (30, 60, 90)).save(path, pnginfo=info)
    page.locator("#dream-recall").get_by_role("button", name="Clear").first.click()  # the PNG recalled before
    page.locator("#dream-recall input[type=file]").set_input_files(str(path))
    expect(page.get_by_text("A1111/Forge parameters")).to_be_visible()
    page.get_by_role("button", name="Use its settings").click()
    page.get_by_text("Sampler and prompt syntax").click()
    expect(page.locator("#dream-sampler input").first).to_have_value("euler_a")
    expect(page.locator("#dream-prompt_syntax input").first).to_have_value("a1111")
    expect(page.locator("#dream-sampler")).to_contain_text("sampler · differs from preset (ddim)")
    expect(page.locator("#dream-scheduler textarea, #dream-scheduler input").first).not_to_contain_text("clip_sample")
    expect(page.locator("#dream-unlock input")).to_be_checked()
    shot(page, "dream-use-its-settings")
    page.locator("#dream-go").click()  # and it dreams with them
    expect(page.locator("#dream-status")).to_contain_text("1 dreamed", timeout=300_000)
    no_toast(page)
