"""What the browser tests share: Debian's chromium driven headless by Playwright, one page per test
module on a running studio, screenshots into test-artifacts/browser/ and a few form helpers.

Playwright drives ``/usr/bin/chromium`` (``apt-get install chromium``; no browser download, never
``playwright install``). Without playwright or chromium a browser test is skipped and says why::

    sync_api = pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
    pytestmark = [pytest.mark.timeout(600), NEEDS_CHROMIUM]

    @pytest.fixture(scope="module")
    def page(studio):
        with open_page(studio[0]) as page:
            yield page
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "browser"
LAPTOP = {"width": 1440, "height": 900}
PLAYWRIGHT = "pip install playwright (requirements-dev.txt)"
SETTLE_MS = 1000  # after the page's load event is sent, before the first click
NEEDS_CHROMIUM = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="no chromium: apt-get install -y chromium (as root)")


@contextmanager
def open_page(url: str, viewport: dict | None = None, timeout_ms: int = 30_000) -> Iterator:
    """A headless chromium page on the studio at ``url``, once Dream's form has painted and the page's
    load event has had a second to answer."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ignore = ARTIFACTS.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# test output (screenshots): never committed\n*\n")
    with sync_playwright() as p:
        # --no-sandbox: root in a container; --disable-dev-shm-usage: a small /dev/shm there
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport=viewport or LAPTOP)
            page.set_default_timeout(timeout_ms)
            # The page's load event (app.py on_load) fills the lists (models, runs, sets), never a form's
            # value (tests/test_page_load.py). It is queued: wait for it to be sent, then give it a second
            # to answer (it takes ~0.1 s; the answer's stream stays open), so the lists are the newest.
            with page.expect_request_finished(lambda r: "/queue/join" in r.url):
                page.goto(url)
            page.locator("#dream-prompt textarea").wait_for()
            page.wait_for_timeout(SETTLE_MS)
            yield page
        finally:
            browser.close()


def shot(page, name: str, laptop: bool = False) -> Path:
    """The whole page as test-artifacts/browser/<name>.png; ``laptop``: also what a laptop screen shows
    without scrolling (<name>-laptop.png, the README's pictures)."""
    page.wait_for_timeout(400)  # let the last update paint
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if laptop:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / f"{name}-laptop.png"))
    return path


def set_number(page, selector: str, value: float) -> None:
    """Type into a Number field and leave it (its change fires on blur)."""
    box = page.locator(f"{selector} input").first
    box.fill(str(value))
    box.press("Tab")


def set_text(page, selector: str, value: str) -> None:
    page.locator(f"{selector} textarea, {selector} input").first.fill(value)


FAILED = ".toast-body.error, .toast-body.warning"  # a toast saying something went wrong (not an Info)


def no_toast(page) -> None:
    """No error or warning toast shows (an Info, e.g. "Dream is set to …", is fine)."""
    toast = page.locator(FAILED)
    assert not toast.count(), f"the studio said: {toast.first.inner_text()}"


def wait_for(page, selector: str, text: str, timeout: int) -> None:
    """Wait until ``selector`` shows ``text``; an error toast instead fails at once, with its message."""
    from playwright.sync_api import TimeoutError, expect

    done = page.locator(selector).filter(has_text=text).or_(page.locator(FAILED).first)
    try:
        done.first.wait_for(timeout=timeout)
    except TimeoutError:
        shot(page, f"timed-out-{selector.strip('#')}")  # what the page showed instead
        raise
    no_toast(page)
    expect(page.locator(selector)).to_contain_text(text)


def file_rows_seen(page, selector: str) -> tuple[int, int]:
    """(whole rows a visitor sees, rows) of a File box, unscrolled: a row counts when it lies wholly
    inside the box's list and the list inside the box's frame (the frame hides what sticks out)."""
    return tuple(page.locator(selector).evaluate("""box => {
        const list = box.querySelector('.file-preview-holder'), rows = [...box.querySelectorAll('tbody tr')];
        if (!list) return [0, rows.length];
        list.scrollTop = 0;
        const f = box.getBoundingClientRect(), l = list.getBoundingClientRect();
        const bottom = Math.min(f.bottom, l.bottom), top = Math.max(f.top, l.top);
        const seen = rows.filter(r => { const b = r.getBoundingClientRect();
                                        return b.top >= top - 0.5 && b.bottom <= bottom + 0.5; });
        return [seen.length, rows.length]; }"""))
