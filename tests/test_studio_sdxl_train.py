"""SDXL runs in the Train tab: a word-style (SDXL pivotal) run started through the studio's API on the
tiny-sdxl base, its Export box offering what an SDXL run exports (LoRA files and a card, the default
first; no merged model), and the run view showing the other validation prompts' grids
(``validation/prompt-N/grid.png``). Tiny settings on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_app_api import running_studio

pytestmark = pytest.mark.timeout(600)
RUN = "prtkl"


def captioned_set(folder, n: int = 3):
    """A training set as Dream's "Add selected to training set" leaves it: pictures beside their captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"prtkl, a figure number {i} dancing", encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A studio, and a word-style run of 4 steps on tiny-sdxl started through /train; yields (studio, result)."""
    from gradio_client import Client

    root = tmp_path_factory.mktemp("sdxl-train")
    with running_studio(root) as (url, st):
        captioned_set(st.training_sets / "style")
        c = Client(url, verbose=False, download_files=str(root / "downloads"))
        # set, base, preset, run, unlock, mode, lr, steps, every, resolution, batch, accumulation,
        # instance prompt, class prompt, validation seeds, validation width, height, steps
        result = c.predict("style", "tiny-sdxl", "word-style", RUN, True, "pivotal", 7e-5, 4, 2, 64, 1, 1,
                           "prtkl", "", "0-1", 64, 64, 2, api_name="/train")
        yield st, c, result
        c.close()


@pytest.mark.slow  # trains tiny-sdxl for 4 steps with 3 validations: ~1 min on 2 cores
def test_the_train_tab_starts_a_word_style_run_on_tiny_sdxl(trained):
    from studio.train_tab import base_choices

    st, _, result = trained
    assert "tiny-sdxl" in [v if isinstance(v, str) else v[1] for v in base_choices(st)]
    status = result[0]
    assert "Finished at step 4 of 4" in status, status
    record = json.loads((st.models / RUN / "run.json").read_text())
    assert record["base"]["arch"] == "sdxl" and record["recipe"]["preset"] == "word-style"
    assert record["recipe"]["settings"]["mode"] == "pivotal"
    assert (st.models / RUN / "validation" / "grid.png").is_file()


@pytest.mark.slow
def test_the_export_box_offers_what_an_sdxl_run_exports(trained, tmp_path):
    from gradio_client.exceptions import AppError

    from studio.train_tab import _checkpoints, _formats

    st, c, _ = trained
    found = _checkpoints(st, RUN)
    offered = _formats(found, None, "single-file,card")  # the Export box's default, as a fresh page has it
    assert [v for _, v in offered["choices"]] == ["lora,card", "card"]
    assert offered["value"] == "lora,card"
    assert _formats(found, "2", "card")["value"] == "card"  # a valid pick stays
    files, said = c.predict(RUN, "", "lora,card", api_name="/export")
    names = sorted(p.rsplit("/", 1)[-1] for p in files)
    assert "prtkl_lora.safetensors" in names and "pytorch_lora_weights.safetensors" in names
    assert "README.md" in names and "prtkl_emb.safetensors" in names, names
    with pytest.raises(AppError, match="SDXL"):  # what the box no longer offers is still refused in one sentence
        c.predict(RUN, "", "single-file,card", api_name="/export")


@pytest.mark.slow
def test_the_run_view_shows_the_other_validation_prompts_grids(trained):
    from dreamy.history import open_run
    from dreamy.training import train
    from studio import history
    from studio.train_tab import FIELDS, VALIDATION

    st, _, _ = trained
    prompts = "prtkl, figure dancing\nprtkl, a cat\nprtkl, a house"
    for _ in train(st.training_sets / "style", name="three", preset="word-style", base="tiny-sdxl",
                   models_dir=st.models, unlock=True, validation={"width": 64, "height": 64, "steps": 2},
                   overrides={"resolution": 64, "max_train_steps": 2, "checkpointing_steps": 2,
                              "validation_seeds": "0", "validation_prompts": prompts}, device="cpu"):
        pass
    view = open_run("three", st.models)
    assert [(g.number, g.prompt) for g in view.prompt_grids] == [(2, "prtkl, a cat"), (3, "prtkl, a house")]
    assert all(g.path == st.models / "three" / "validation" / f"prompt-{g.number}" / "grid.png"
               for g in view.prompt_grids)
    shown = history.open_run_updates(st, "three", None, FIELDS, VALIDATION, "sweet-spot")[-1]
    assert shown["visible"] is True
    assert [caption for _, caption in shown["value"]] == ["prompt 2: prtkl, a cat", "prompt 3: prtkl, a house"]
    live = history.cells_updates(st, "three|2")[-1]  # the live run's view after a validation shows them too
    assert [caption for _, caption in live["value"]] == ["prompt 2: prtkl, a cat", "prompt 3: prtkl, a house"]
    single = history.open_run_updates(st, RUN, None, FIELDS, VALIDATION, "sweet-spot")[-1]
    assert single["visible"] is False and single["value"] == []  # one prompt: no second gallery
