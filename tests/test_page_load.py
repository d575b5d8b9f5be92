"""The page's load event never overwrites what the visitor changed (app.py on_load).

On a busy machine the load event's answer arrives seconds after the page painted; it used to put
each tab's preset values and locks back into the forms, silently undoing an Unlock or a value typed
meanwhile. Now the forms hold their preset's values from the build, and the load event only fills
lists (models, runs, training sets). Checked on the load handler's answer itself, and in a browser
with the load answer held back artificially while the visitor picks another preset, ticks Unlock and
types values in Dream, Train and Enlarge.
"""

from __future__ import annotations

import threading
import time

import pytest
from browser_util import CHROMIUM, PLAYWRIGHT, open_page, set_number
from test_app_api import running_studio

pytestmark = pytest.mark.timeout(300)
HELD_S = 20.0  # how long the browser test holds the load answer back (the edits take ~5-10 s)


def load_dependency(demo):
    """The Blocks' page-load event: (its function, its output components)."""
    for fn in demo.fns.values():
        if any(t[1] == "load" for t in fn.targets) and fn.name == "on_load":
            return fn.fn, fn.outputs
    raise AssertionError("no on_load event")


def test_the_load_answer_sets_no_value_of_any_form(tmp_path):
    import app
    from studio.session import Studio

    st = Studio(default_model="tiny", outputs=tmp_path / "outputs", models=tmp_path / "models")
    st.models.mkdir(parents=True)
    (st.outputs / "training-sets" / "mine").mkdir(parents=True)
    demo = app.build(st)
    fn, outputs = load_dependency(demo)
    updates = fn()
    assert len(updates) == len(outputs)
    for block, update in zip(outputs, updates, strict=True):
        assert isinstance(update, dict), (block, update)
        # a list may be refreshed; a value (or whether a field can be edited) is the visitor's
        assert not {"value", "interactive"} & set(update), (getattr(block, "elem_id", None) or block.label, update)
    by_label = {b.label: u for b, u in zip(outputs, updates, strict=True)}
    assert ("mine", "mine") in [tuple(c) if isinstance(c, list | tuple) else (c, c)
                                for c in by_label["Training set"]["choices"]]


@pytest.fixture(scope="module")
def slow_load(tmp_path_factory):
    """A studio whose page-load answer is held back HELD_S seconds (a busy machine); yields (url, done):
    ``done`` is set once the held answer has been sent."""
    from studio import dream_tab

    done = threading.Event()
    real = dream_tab.refresh_pickers

    def held(studio):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(HELD_S)
            threading.Timer(0.2, done.set).start()  # set after the answer left
        return real(studio)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dream_tab, "refresh_pickers", held)
        with running_studio(tmp_path_factory.mktemp("slow-load")) as (url, _):
            yield url, done


@pytest.mark.slow  # a browser, and a load answer held back 20 s: ~45 s on 2 cores
def test_a_late_load_answer_keeps_an_unlock_and_values_typed_meanwhile(slow_load):
    from pathlib import Path

    sync_api = pytest.importorskip("playwright.sync_api", reason=PLAYWRIGHT)
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium: apt-get install -y chromium (as root)")
    expect = sync_api.expect
    url, done = slow_load
    with open_page(url) as page:  # its settle second is well inside the held answer
        assert not done.is_set(), "the load answer came before the visitor could change anything"
        page.locator("#dream-preset input").first.click()  # another preset: its values fill the form
        page.locator("ul[role=listbox] li").filter(has_text="word-style").first.click()
        expect(page.locator("#dream-width input").first).to_have_value("1024")
        page.locator("#dream-unlock input").check()
        set_number(page, "#dream-steps", 7)
        page.get_by_role("tab", name="Enlarge").click()
        page.locator("#enlarge-unlock input").check()
        set_number(page, "#enlarge-steps", 3)
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-unlock input").check()
        set_number(page, "#train-max_train_steps", 12)
        assert not done.is_set(), "the load answer came before the visitor's changes were made"
        assert done.wait(HELD_S + 30), "the load answer never came"
        page.wait_for_timeout(1500)  # the answer painted
        expect(page.locator("#train-max_train_steps input").first).to_have_value("12")
        expect(page.locator("#train-max_train_steps input").first).to_be_editable()
        assert page.locator("#train-unlock input").is_checked()
        page.get_by_role("tab", name="Enlarge").click()
        expect(page.locator("#enlarge-steps input").first).to_have_value("3")
        expect(page.locator("#enlarge-steps input").first).to_be_editable()
        page.get_by_role("tab", name="Dream").click()
        expect(page.locator("#dream-preset input").first).to_have_value("word-style")
        expect(page.locator("#dream-width input").first).to_have_value("1024")  # word-style's, not biased-dreams'
        expect(page.locator("#dream-steps input").first).to_have_value("7")
        expect(page.locator("#dream-steps input").first).to_be_editable()
        assert page.locator("#dream-unlock input").is_checked()
