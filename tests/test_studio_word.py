"""The studio's Word box and two-run grid through the API (gradio_client), on the tiny chat model and the
tiny SD model: word -> prompt -> picture -> particles in one call, the prompt in the PNG's recipe, a
missing chat model in one sentence; the checkpoint grid with a second run side by side."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from test_app_api import running_studio
from test_word import chat_model  # noqa: F401 - the tiny chat model fixture

pytestmark = pytest.mark.timeout(600)
FORM = {"negative_prompt": "", "guidance": 5.0, "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def studio(tmp_path_factory, chat_model, tiny_dir):  # noqa: F811
    root = tmp_path_factory.mktemp("studio-word")
    with running_studio(root, prompt_model=chat_model) as (url, st):
        for name, steps in (("run-a", (2, 4)), ("run-b", (2, 6))):  # two "runs": copies of the tiny model
            for step in steps:
                shutil.copytree(tiny_dir, st.models / name / "checkpoints" / f"step-{step:04d}")
            (st.models / name / "run.json").write_text(json.dumps({"base": {"source": "tiny"}}))
        yield url, st


@pytest.fixture(scope="module")
def client(studio):
    from gradio_client import Client

    c = Client(studio[0], verbose=False, download_files=str(studio[1].outputs.parent / "downloads"))
    yield c
    c.close()


def test_word_to_picture_to_particles_in_one_call(client, studio, chat_model):  # noqa: F811
    from dreamy.png.metadata import read_recipe
    from dreamy.prompt_helper import word_to_prompt

    prompt, picture, gif, status, gallery = client.predict(  # the gallery's states are the page's only
        "love", "", 3, "tiny", "word-style", True, *FORM.values(), api_name="/word_picture")
    wp = word_to_prompt("love", "word-style", chat_model, 3)
    assert prompt == wp.prompt and status.startswith("**love** → seed 3 → particles")
    made = next((studio[1].outputs / "word").glob("*/seed000003.png"))
    recipe = read_recipe(made)
    assert recipe.runtime["word"] == wp.record() and recipe.settings.prompt == wp.prompt
    assert "prompt" not in recipe.unlocked  # word-style leaves its prompt to the word layer
    with Image.open(gif) as g:
        assert g.format == "GIF" and g.n_frames == 24
    assert read_recipe(picture).runtime["word"]["word"] == "love"
    assert [g["caption"] for g in gallery] == ["love"]  # the picture in the gallery: Send to Particles plays it


def test_an_edited_prompt_is_dreamed_and_marked(client, studio):
    from dreamy.png.metadata import read_recipe

    mine = "prtkl, a lighthouse in fog, white background"
    prompt, picture, *_ = client.predict("love", mine, 3, "tiny", "word-style", True, *FORM.values(),
                                         api_name="/word_picture")
    word = read_recipe(picture).runtime["word"]
    assert prompt == mine and word["prompt"] == mine and word["edited"] is True and word["word"] == "love"


def test_refusals_are_one_sentence(client, studio, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Give a word"):
        client.predict("  ", "", 0, "tiny", "word-style", True, *FORM.values(), api_name="/word_picture")
    with pytest.raises(AppError, match="is locked by preset .biased-dreams.*tick Unlock"):
        client.predict("love", "", 0, "tiny", "biased-dreams", False, *FORM.values(), api_name="/word_picture")
    kept, studio[1].prompt_model = studio[1].prompt_model, str(tmp_path / "no-such-model")
    try:
        with pytest.raises(AppError, match=r"^No chat model at .*hub id in the Hugging Face cache\.$"):
            client.predict("love", "", 0, "tiny", "word-style", True, *FORM.values(), api_name="/word_picture")
    finally:
        studio[1].prompt_model = kept


def test_two_runs_side_by_side_in_the_checkpoint_grid(client, studio):
    st = studio[1]
    cells, grid, status, *_ = client.predict(str(st.models / "run-a"), "2,4,6", "biased-dreams", "0", True,
                                             "figure dancing", *FORM.values(), None, None, None,
                                             [str(st.models / "run-b")], api_name="/checkpoint_grid")
    assert status.startswith("Grid of run-a | run-b: 4 images")
    with Image.open(grid) as im:
        assert json.loads(im.text["dreamy_runs_grid"]) == {"runs": ["run-a", "run-b"],
                                                            "steps": ["step 2", "step 4", "step 6"], "seeds": [0]}
    assert [c["caption"] for c in cells] == ["run-a · step 2 · seed 0", "run-a · step 4 · seed 0",
                                             "run-b · step 2 · seed 0", "run-b · step 6 · seed 0"]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="outside"):  # every run is checked to lie inside models/
        client.predict(str(st.models / "run-a"), "all", "biased-dreams", "0", True, "x", *FORM.values(), None, None,
                       None, ["/tmp"], api_name="/checkpoint_grid")
