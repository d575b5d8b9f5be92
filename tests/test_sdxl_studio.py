"""The studio's Dream tab with tiny-sdxl: listed among the models and dreamed through its HTTP API (gradio_client),
each picture with its SDXL recipe. The studio runs on a free loopback port (test_app_api.running_studio)."""

from __future__ import annotations

import pytest
from test_app_api import SMALL, running_studio

from dreamy.png.metadata import read_recipe

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("studio-sdxl")) as (url, st):
        yield url, st


def test_the_studio_lists_tiny_sdxl_and_dreams_it_through_the_api(studio):
    from gradio_client import Client

    url, st = studio
    c = Client(url, verbose=False, download_files=str(st.outputs.parent / "downloads"))
    try:
        picker = next(x for x in c.config["components"] if x.get("props", {}).get("elem_id") == "dream-model")
        assert "tiny-sdxl" in [choice[1] for choice in picker["props"]["choices"]]
        f = {**SMALL, "prompt": "figure dancing", "guidance": 5.0}
        gallery, _, status, *_ = c.predict("tiny-sdxl", "biased-dreams", "0-1", True, 1, f["prompt"],
                                           f["negative_prompt"], f["guidance"], f["steps"], f["width"], f["height"],
                                           api_name="/dream")
    finally:
        c.close()
    assert len(gallery) == 2, status
    made = sorted(st.outputs.rglob("seed00000[01].png"))
    assert len(made) == 2
    recipe = read_recipe(made[0])
    assert recipe.model.source == "tiny-sdxl" and recipe.model.arch == "sdxl" and "sdxl" in recipe.runtime
