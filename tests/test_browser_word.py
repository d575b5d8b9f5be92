"""The Word box in a real browser: a word typed, one press, and the prompt, the picture and its particle
loop appear; an edited prompt is dreamed as edited; the picture goes into a training set beside its
caption file. Tiny chat model (test_word) + tiny SD model; screenshots in test-artifacts/browser/
(word-box.png: the box itself, dream-word.png: the whole page)."""

from __future__ import annotations

import pytest
from browser_util import ARTIFACTS, NEEDS_CHROMIUM, PLAYWRIGHT, open_page, set_number, shot, wait_for
from test_app_api import running_studio
from test_word import chat_model  # noqa: F401 - the tiny chat model fixture

sync_api = pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
pytestmark = [pytest.mark.timeout(600), NEEDS_CHROMIUM]


@pytest.fixture(scope="module")
def studio(tmp_path_factory, chat_model):  # noqa: F811
    with running_studio(tmp_path_factory.mktemp("browser-word"), prompt_model=chat_model) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def page(studio):
    with open_page(studio[0]) as page:
        yield page


def test_word_picture_particles_and_a_captioned_keeper(page, studio, chat_model):  # noqa: F811
    from dreamy.png.metadata import read_recipe
    from dreamy.prompt_helper import word_to_prompt

    expect = sync_api.expect
    # The page's own load event fills Dream's form with the opening preset's values; on a busy machine it
    # can answer seconds late and overwrite a preset picked before it (a studio race, reported): pick again
    # until word-style's guidance 5 stays put.
    guidance = page.locator("#dream-guidance input").first
    for other in ("lora-dreams", "word-style") * 4:  # another first: picking the shown preset again is no input
        page.locator("#dream-preset input").click()
        page.get_by_role("option", name=other).click()
        if other != "word-style":
            continue
        for _ in range(40):  # word-style's form (guidance 5), staying put for 5 s
            page.wait_for_timeout(500)
            if guidance.input_value() == "5":
                page.wait_for_timeout(5000)
                break
        if guidance.input_value() == "5":
            break
    expect(guidance).to_have_value("5")
    page.locator("#dream-unlock input").check()
    for name, value in (("steps", 2), ("width", 64), ("height", 64)):
        set_number(page, f"#dream-{name}", value)
    page.get_by_text("Word → picture → particles").first.click()  # opens the box
    page.locator("#word-word input, #word-word textarea").first.fill("love")
    set_number(page, "#word-seed", 3)
    expect(page.locator("#dream-guidance input").first).to_have_value("5")  # still word-style's form
    page.locator("#word-go").click()
    wait_for(page, "#word-status", "→ particles", 120_000)
    wp = word_to_prompt("love", "word-style", chat_model, 3)
    first = next((studio[1].outputs / "word").glob("*/seed000003.png"))
    assert read_recipe(first).settings.guidance == 5.0 and "guidance" not in read_recipe(first).unlocked
    expect(page.locator("#word-prompt textarea")).to_have_value(wp.prompt)  # shown, editable
    expect(page.locator("#word-picture img")).to_be_visible()
    assert ".gif" in page.locator("#word-gif img").get_attribute("src")
    page.locator("#word-box").screenshot(path=str(ARTIFACTS / "word-box.png"))
    shot(page, "dream-word")

    # an edited prompt: dreamed as written, recorded as edited
    page.locator("#word-prompt textarea").fill("prtkl, a lighthouse in fog, white background")
    page.locator("#word-go").click()
    wait_for(page, "#word-status", "your edited prompt → seed 3 → particles", 120_000)
    newest = max((studio[1].outputs / "word").glob("*/seed000003.png"), key=lambda p: p.parent.name)
    word = read_recipe(newest).runtime["word"]
    assert word["edited"] is True and word["prompt"] == "prtkl, a lighthouse in fog, white background"

    # a new word clears the prompt box: the next press writes the new word's prompt
    page.locator("#word-word input, #word-word textarea").first.fill("music")
    expect(page.locator("#word-prompt textarea")).to_have_value("", timeout=30_000)

    # the word picture is the gallery's picked one: into a training set, beside its caption file
    page.locator("#dream-add-to-set").click()
    wait_for(page, "#dream-status", "with its caption", 30_000)
    caption = studio[1].outputs / "training-sets" / "candidates" / "seed000003.txt"
    assert caption.read_text("utf-8") == "prtkl, a lighthouse in fog, white background\n"
    shot(page, "dream-word-added")


def test_a_prompt_file_swept_and_a_keeper_added_with_its_caption(page, studio, tmp_path):
    """Curation in the page: a prompt file loaded into the prompt sweep (word-style leaves the prompt open),
    swept, one picture clicked and added: the set holds it beside its caption, the trigger in front."""
    expect = sync_api.expect
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# candidates\na tree by a river\na red kite\n", encoding="utf-8")
    page.get_by_text("Prompt sweep: variants × seeds").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#dream-prompt-file").click()
    chooser.value.set_files(str(prompts))
    expect(page.locator("#dream-variants textarea")).to_have_value("a tree by a river\na red kite", timeout=30_000)
    page.locator("#dream-seeds textarea, #dream-seeds input").first.fill("0")
    page.locator("#dream-sweep-go").click()
    wait_for(page, "#dream-status", "2 dreamed", 120_000)
    page.locator("#dream-gallery img").nth(1).click()  # the second prompt's picture
    page.locator("#dream-set-trigger input, #dream-set-trigger textarea").first.fill("zwx")
    page.locator("#dream-add-to-set").click()
    wait_for(page, "#dream-status", "with its caption zwx, a red kite", 30_000)  # the box's trigger, not prtkl
    folder = studio[1].outputs / "training-sets" / "candidates"
    assert "zwx, a red kite\n" in [p.read_text("utf-8") for p in folder.glob("*.txt")]
    shot(page, "dream-curation")
