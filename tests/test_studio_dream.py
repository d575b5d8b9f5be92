"""Dream and Enlarge as issue #17 found them: Stop that ends an enlargement with a status, the demo
named where it ran, the model list saying what is on this machine, API defaults that are the
preset's values, prompt-sweep labels that tell rows apart, and the checkpoint grid's rows.

The studio runs on a free loopback port with the tiny models (see test_app_api.running_studio);
HF_HUB_OFFLINE is set for every test (conftest), so nothing is downloaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image
from test_app_api import PACKAGE_DEAL, running_studio

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("studio-dream")) as (url, st):
        yield url, st


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    c = Client(studio[0], verbose=False, download_files=str(studio[1].outputs.parent / "downloads"))
    yield c
    c.close()


@pytest.fixture
def picture(tmp_path) -> str:
    p = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (120, 60, 30)).save(p)
    return str(p)


# ---- Enlarge ----

def test_stop_during_an_enlarge_ends_it_with_a_stopped_status(client, picture):
    """Bug 1: the status read "Stopping…" for good, because Gradio dropped the stopped event's answer."""
    from gradio_client import handle_file

    job = client.submit(image=handle_file(picture), unlock=True, steps=400, api_name="/enlarge")  # minutes
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "step" not in str(job.status().progress_data):
        time.sleep(0.1)
    assert "step" in str(job.status().progress_data), "the enlargement never reached its sampling steps"
    started = time.monotonic()
    # the sampler is running; Stop answers once it has stopped, and so does the enlargement itself
    assert client.predict(api_name="/stop_enlarge") == "Stopped; nothing was saved."
    slider, status, download = job.result(timeout=60)
    assert status == "Stopped; nothing was saved." and slider is None and download is None
    assert time.monotonic() - started < 60
    assert client.predict(api_name="/stop_enlarge") == "Nothing of yours is running."


def test_an_enlarge_with_its_settings_left_out_uses_the_preset_and_names_the_demo(client, studio, picture):
    """Bugs 11 and 13: a client may leave the settings out (the preset's values are the defaults), and
    the demo that ran is named in the status and recorded in the PNG instead of SUPIR-v0Q/Juggernaut."""
    from gradio_client import handle_file

    from dreamy.png.metadata import read_recipe

    # only steps given (the preset's 30 take minutes on a CPU): every other setting is left out
    _, status, download = client.predict(image=handle_file(picture), unlock=True, steps=2, api_name="/enlarge")
    assert status.startswith("Enlarged with the dreamy tiny SUPIR demo")
    assert "SUPIR-v0Q and Juggernaut XL v9 are not on this machine, so the tiny demo ran instead" in status
    r = read_recipe(download)
    assert (r.settings.supir_model, r.settings.sdxl_base) == ("tiny", "tiny") and r.model.kind == "tiny"
    assert r.runtime["asked"] == {"supir_model": "SUPIR-v0Q", "sdxl_base": "Juggernaut XL v9"}
    assert r.settings.s_cfg == 3.0 and r.settings.spt_linear_cfg == 4.0 and r.settings.color_fix == "wavelet"
    assert r.unlocked == {"steps": {"preset": 30, "value": 2}}  # the rest is the preset's
    with Image.open(download) as im:
        assert im.size == (256, 256)


# ---- API defaults ----

@pytest.mark.parametrize("endpoint", ["/dream", "/prompt_sweep", "/checkpoint_grid", "/enlarge"])
def test_every_setting_of_a_locked_endpoint_defaults_to_the_preset(client, endpoint):
    from dreamy.recipes.presets import load_preset, preset_fields

    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]["parameters"]
    job = "enlarge" if endpoint == "/enlarge" else "dream"
    preset = preset_fields(load_preset("biased-dreams"), job)
    for p in params:
        if p["parameter_name"] in preset:
            want = preset[p["parameter_name"]]
            got = json.loads(p["parameter_default"]) if isinstance(want, dict) else p["parameter_default"]  # scheduler
            assert p["parameter_has_default"] and got == want, p
        elif p["python_type"]["type"] in ("float", "int", "bool"):
            assert p["parameter_has_default"] and p["parameter_default"] is not None, p


def test_a_dream_may_leave_out_the_settings_it_does_not_change(client):
    gallery, _, status, *_ = client.predict(model="tiny", seeds="5", unlock=True, steps=2, width=64, height=64,
                                            api_name="/dream")
    from dreamy.png.metadata import read_recipe

    r = read_recipe(Path(gallery[0]["image"]))
    assert r.settings.prompt == PACKAGE_DEAL and r.settings.guidance == 3.0 and r.seed == 5  # the preset's


# ---- the model list ----

def test_sd15_says_it_is_not_on_this_machine_and_why_it_cannot_be_used(client, studio, monkeypatch):
    """Bug 12: SD 1.5 was listed as if present; picking it failed with a message about a CLI flag."""
    import gradio as gr
    from gradio_client.exceptions import AppError

    from dreamy.models import hub
    from dreamy.models.sources import DEFAULT_MODEL
    from studio.dream_tab import SD15_ABSENT, SD15_DOWNLOAD, model_choices, on_disk
    from studio.session import Studio

    assert dict(model_choices(studio[1]))[SD15_ABSENT] == DEFAULT_MODEL  # offline: nothing to download
    with pytest.raises(AppError, match=r"^Stable Diffusion 1.5 is not on this machine and downloads are off "
                                       r"\(HF_HUB_OFFLINE\); download it once with a connection"):
        client.predict(model=DEFAULT_MODEL, seeds="0", unlock=True, steps=2, width=64, height=64, api_name="/dream")
    monkeypatch.setattr(hub, "offline", lambda: False)  # online, but SD 1.5 is not downloaded yet
    assert SD15_DOWNLOAD in dict(model_choices(studio[1]))
    assert "~4.3 GB" in SD15_DOWNLOAD and "CreativeML OpenRAIL-M" in SD15_DOWNLOAD
    shared = Studio(default_model="tiny", outputs=studio[1].outputs, models=studio[1].models, shared=True)
    assert SD15_ABSENT in dict(model_choices(shared))  # a shared studio never downloads
    with pytest.raises(gr.Error, match="not on this machine, and a shared studio downloads nothing"):
        on_disk(shared, DEFAULT_MODEL, lambda *a, **k: None)


def test_a_download_reports_its_bytes_to_the_job_and_draws_nothing(capsys):
    """The bar snapshot_download counts every file's bytes on becomes (done, total) for the progress."""
    from dreamy.models.hub import _BYTES_BAR, _progress_bar

    seen = []
    bar_class = _progress_bar(lambda done, total: seen.append((done, total)))
    with bar_class(total=4_000, name=_BYTES_BAR, unit="B") as bar:
        bar.update(1_000)
        bar.update(3_000)
    with bar_class(total=3, name="files") as files:  # the other bars: not the job's progress
        files.update(1)
    assert seen == [(1_000, 4_000), (4_000, 4_000)]
    assert capsys.readouterr().err == ""


# ---- prompt sweeps and the checkpoint grid (core, no dreaming) ----

def test_prompt_sweep_row_labels_show_what_differs_between_the_rows():
    """Bug 8: labels were cut from the end, so "…, by Turner" never showed and the rows looked the same."""
    from dreamy.dreaming.prompt_sweeps import LABEL_CHARS, row_labels

    long = PACKAGE_DEAL + ", golden hour, oil on canvas"
    assert row_labels([f"{long}, by Turner", f"{long}, by Hiroshi Yoshida"]) == ["…by Turner", "…by Hiroshi Yoshida"]
    assert row_labels([PACKAGE_DEAL, f"{PACKAGE_DEAL}, by Turner"]) == ["…transcendent", "…transcendent, by Turner"]
    assert row_labels(["a castle by Turner, golden light", "a castle by Monet, golden light"]) == [
        "a castle by Turner…", "a castle by Monet…"]
    (one,) = row_labels([f"{long}, in the style of J. M. W. Turner"])  # nothing to compare: its middle goes
    assert len(one) == LABEL_CHARS and one.startswith("monumental") and one.endswith("W. Turner") and "…" in one


def test_a_training_runs_grid_starts_with_its_base_model_and_labels_rows_by_step(tmp_path):
    """Bug 9: rows were labelled with folder names and the base model (step 0) had no row."""
    from dreamy.dreaming.sweeps import BASE_LABEL, expand_rows
    from dreamy.errors import PathError

    run = tmp_path / "run"
    for step in (20, 10):
        (run / "checkpoints" / f"step-{step:04d}").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"base": {"source": "tiny", "kind": "tiny"}}))
    rows, notes = expand_rows([str(run)])
    assert [(r.label, r.name) for r in rows] == [(BASE_LABEL, "base"), ("step 10", "step-0010"),
                                                 ("step 20", "step-0020")]
    assert rows[0].source == "tiny" and rows[0].label == "step 0 (base)" and notes == []
    assert [r.label for r in expand_rows([str(run)], "10,20")[0]] == ["step 10", "step 20"]  # 0 left out
    assert [r.label for r in expand_rows([str(run)], "0-10:10")[0]] == [BASE_LABEL, "step 10"]

    def refuse(source: str) -> str:
        raise PathError(f"'{source}' lies outside the folders this studio may read.")

    (run / "run.json").write_text(json.dumps({"base": {"source": "/etc"}}))
    rows, notes = expand_rows([str(run)], None, refuse)  # a run.json may name any path: vetted, left out
    assert [r.label for r in rows] == ["step 10", "step 20"]
    assert notes == ["The base model of run is left out: '/etc' lies outside the folders this studio may read."]
