"""Word -> picture -> particles in one core call (the studio's Word box), and recall keeping the word:
a recalled word picture is its PNG again, byte for byte, with its runtime.word. On the CPU with the
tiny random-weight Qwen2 chat model of test_word and the tiny SD model."""

from __future__ import annotations

import json

import pytest
from test_word import chat_model  # noqa: F401 - the tiny chat model fixture

from dreamy.errors import LockedFieldError, SourceError

SMALL = {"width": 64, "height": 64, "steps": 2}
OPEN = ["width", "height", "steps"]


def _steps(chat_model, tiny_model, out, **kwargs):  # noqa: F811
    from dreamy.dreaming.word_picture import word_picture

    return list(word_picture("love", tiny_model, "word-style", 3, out_dir=out, prompt_model=chat_model,
                             overrides=SMALL, unlock=OPEN, device="cpu", **kwargs))


def test_a_word_becomes_a_prompt_a_picture_and_particles(chat_model, tiny_model, tmp_path):  # noqa: F811
    from PIL import Image

    from dreamy.png.metadata import read_recipe
    from dreamy.prompt_helper import word_to_prompt

    steps = _steps(chat_model, tiny_model, tmp_path / "o", particles={"size": 64})
    assert [s.stage for s in steps] == ["prompt", "picture", "particles"]
    wp = word_to_prompt("love", "word-style", chat_model, 3)  # one seed: the prompt's and the picture's
    assert steps[0].word == wp and steps[0].picture is None
    last = steps[-1]
    recipe = read_recipe(last.picture.path)
    assert recipe.settings.prompt == wp.prompt and recipe.seed == 3
    assert recipe.runtime["word"] == wp.record() and "edited" not in recipe.runtime["word"]
    with Image.open(last.gif) as gif:
        assert gif.format == "GIF" and gif.n_frames == 24 and max(gif.size) == 64
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["particles.gif", "seed000003.png"]


def test_an_edited_prompt_is_dreamed_and_recorded_as_edited(chat_model, tiny_model, tmp_path):  # noqa: F811
    from dreamy.png.metadata import read_recipe
    from dreamy.prompt_helper import word_to_prompt

    wp = word_to_prompt("love", "word-style", chat_model, 3)
    same = _steps(chat_model, tiny_model, tmp_path / "a", prompt=f"  {wp.prompt} ")[-1]
    assert read_recipe(same.picture.path).runtime["word"] == wp.record()  # unchanged: the model's own
    mine = "prtkl, two dogs   asleep, white background"
    last = _steps(chat_model, tiny_model, tmp_path / "b", prompt=mine)[-1]
    word = read_recipe(last.picture.path).runtime["word"]
    assert read_recipe(last.picture.path).settings.prompt == "prtkl, two dogs asleep, white background"
    assert word["edited"] is True and word["prompt"] == "prtkl, two dogs asleep, white background"
    assert word["generated"] == wp.generated  # what the model wrote stays on record


def test_refusals_come_before_any_model_and_in_one_sentence(chat_model, tiny_model, tmp_path):  # noqa: F811
    from dreamy.dreaming.word_picture import word_picture
    from dreamy.prompt_helper import load_prompt_model

    load_prompt_model.cache_clear()
    with pytest.raises(LockedFieldError, match="prompt"):  # biased-dreams locks its prompt
        next(word_picture("love", tiny_model, "biased-dreams", 0, out_dir=tmp_path, prompt_model=chat_model,
                          overrides=SMALL, unlock=OPEN))
    assert load_prompt_model.cache_info().currsize == 0  # refused before the chat model was loaded
    with pytest.raises(SourceError, match="No chat model at") as e:
        next(word_picture("love", tiny_model, out_dir=tmp_path, prompt_model=str(tmp_path / "none")))
    assert str(e.value).count(". ") == 0 or str(e.value).endswith(".")
    with pytest.raises(Exception, match="Unknown particle setting 'colour'"):
        next(word_picture("love", tiny_model, out_dir=tmp_path, prompt_model=chat_model, particles={"colour": 1}))
    assert not any(tmp_path.iterdir())  # nothing written by a refusal


def test_cli_word_dream_particles(chat_model, tmp_path, capsys):  # noqa: F811
    from dreamy.cli.main import main
    from dreamy.png.metadata import read_recipe

    rc = main(["word", "love", "--prompt-model", chat_model, "--dream", "--particles", "--model", "tiny", "--seeds",
               "2", "--out", str(tmp_path), "--unlock", "width,height,steps", "--width", "64", "--height", "64",
               "--steps", "2", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    png, gif = out.out.split()
    assert read_recipe(png).runtime["word"]["word"] == "love" and gif.endswith("particles.gif")


# ---- recall keeps every recipe field it needs ----

def test_recalling_a_word_picture_gives_the_same_png_with_its_word(chat_model, tiny_model, tmp_path):  # noqa: F811
    from dreamy.dreaming.dreams import recall
    from dreamy.png.metadata import read_recipe

    last = _steps(chat_model, tiny_model, tmp_path / "o")[-1]
    again = recall(last.picture.path, tmp_path / "again", model=tiny_model)
    assert again.recipe.runtime["word"] == last.picture.recipe.runtime["word"]
    assert read_recipe(again.path).runtime["word"]["word"] == "love"
    assert again.path.read_bytes() == last.picture.path.read_bytes()  # the whole PNG: pixels and recipe


@pytest.mark.parametrize("stale", [{"vae_upcast": True}, {"path": "compile"}, {"prompt_truncated": "x y"},
                                   {"gpu": "Some GPU"}])
def test_recall_keeps_a_callers_records_and_remakes_the_engines_own(tiny_model, tmp_path, stale):
    """Any entry a caller put into runtime (provenance: who wrote the prompt, from what) survives a recall;
    the entries the dream makes itself are made afresh, never copied stale from the file."""
    from dreamy.dreaming.dreams import dream, recall
    from dreamy.png.metadata import read_recipe, save_png

    [r] = dream(tiny_model, "biased-dreams", "5", overrides=SMALL, unlock=OPEN, device="cpu")
    extra = {"word": {"word": "sea", "prompt": "p"}, "made_by": {"tool": "my-script", "n": 2}}
    recipe = r.recipe.replace(runtime={**r.recipe.runtime, **stale, **extra})
    png = save_png(r.image, tmp_path / "in.png", recipe)
    again = recall(png, tmp_path / "out", model=tiny_model)
    runtime = read_recipe(again.path).runtime
    assert {k: runtime[k] for k in extra} == extra
    assert not set(stale) & set(runtime)  # made afresh: a CPU dream of a short prompt has none of them
    assert json.loads(json.dumps(runtime)) == again.recipe.runtime


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_every_runtime_entry_a_dream_makes_is_declared_as_the_engines(model):
    """A new runtime entry the dream itself writes must join ENGINE_RUNTIME, or a recall would carry the
    old picture's value over instead of making it afresh."""
    from dreamy.dreaming.dreams import ENGINE_RUNTIME, dream

    long = "a lighthouse " * 60  # past 77 tokens: the prompt's cut is recorded
    [r] = dream(model, "biased-dreams", "1", overrides={**SMALL, "prompt": long}, unlock=True, device="cpu")
    assert "prompt_truncated" in r.recipe.runtime
    assert set(r.recipe.runtime) <= ENGINE_RUNTIME, set(r.recipe.runtime) - ENGINE_RUNTIME
