"""What a new user tripped on while trying the word layer, SDXL training and curation from the README:
each fault as reported, plus variants of its kind."""

from __future__ import annotations

import json

import pytest

from dreamy.cli.main import build_parser, main
from dreamy.dreaming.prompt_sweeps import read_prompt_file
from dreamy.errors import DreamyError
from dreamy.recipes.recipe import resolve
from dreamy.training.model_card import training_rows
from dreamy.training.sets import add_to_training_set

# --- an empty prompt file is named as a file, not as the studio's "variants" box ------------------


@pytest.mark.parametrize("text", [b"", b"\n\n", b"# only a comment\n\n   \n", b"\xef\xbb\xbf# bom and comment\n"])
def test_a_prompt_file_without_prompts_is_named(tmp_path, text):
    f = tmp_path / "prompts.txt"
    f.write_bytes(text)
    with pytest.raises(DreamyError, match=r"^The prompt file 'prompts.txt' holds no prompt: write one per line"):
        read_prompt_file(f)


def test_a_prompt_file_with_prompts_still_reads(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# mine\ntwo people hugging\n\na bird\n", encoding="utf-8")
    assert read_prompt_file(f) == ["two people hugging", "a bird"]


# --- add-to-set: a missing picture is "no such file", and nothing added is not "train on it" --------


def test_a_missing_picture_is_said_as_missing(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    report = add_to_training_set([tmp_path / "nope.png", tmp_path / "gone", tmp_path / "notes.txt"], "s",
                                 tmp_path / "sets")
    assert report.notes == ["nope.png: no such file, skipped", "gone: no such file, skipped",
                            "notes.txt: not an image file, skipped"]
    assert not report.added


def test_cli_add_to_set_with_nothing_added_says_so(tmp_path, capsys):
    rc = main(["add-to-set", str(tmp_path / "nope.png"), "--set", "s", "--root", str(tmp_path / "sets")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "nope.png: no such file, skipped" in err
    assert "nothing was added to training set s" in err and "train on it" not in err


# --- the CLI reaches A1111's prompt syntax (the studio and the API do) ------------------------------


@pytest.mark.parametrize("command", ["dream", "sweep"])
def test_dream_and_sweep_take_prompt_syntax(command):
    model = ["--model", "tiny"]
    args = build_parser().parse_args([command, *model, "--out", "o", "--prompt-syntax", "a1111", "--unlock"])
    assert args.prompt_syntax == "a1111"


def test_cli_dreams_an_a1111_prompt_and_a_locked_syntax_needs_unlock(tmp_path, capsys):
    small = ["--width", "64", "--height", "64", "--steps", "2"]
    rc = main(["dream", "--model", "tiny", "--seeds", "1", "--out", str(tmp_path / "a"), "--prompt-syntax", "a1111",
               "--unlock", "steps,width,height", *small])
    assert rc == 2 and "'prompt_syntax' is locked by preset 'biased-dreams'" in capsys.readouterr().err
    rc = main(["dream", "--model", "tiny", "--seeds", "1", "--out", str(tmp_path / "b"), "--prompt-syntax", "a1111",
               "--unlock", "--prompt", "(a red house:1.3) BREAK a tree", *small])
    assert rc == 0
    from dreamy.png.metadata import read_recipe

    recipe = read_recipe(tmp_path / "b" / "seed000001.png")
    assert recipe.settings.prompt_syntax == "a1111"
    assert recipe.unlocked["prompt_syntax"] == {"preset": "plain", "value": "a1111"}
    rc = main(["dream", "--model", "tiny", "--seeds", "1", "--out", str(tmp_path / "c"), "--prompt-syntax", "A1111",
               "--unlock", *small])
    assert rc == 2 and "must be one of plain, a1111" in capsys.readouterr().err


# --- the model card's Training table says the steps the checkpoint was trained with ------------------


def test_the_card_takes_the_checkpoints_recipe_after_a_resume_raised_the_steps(tmp_path):
    started = resolve("word-style", "train", {"max_train_steps": 4}, unlock=True).to_dict()
    resumed = resolve("word-style", "train", {"max_train_steps": 6}, unlock=True).to_dict()
    step = tmp_path / "run" / "checkpoints" / "step-0006"
    step.mkdir(parents=True)
    base = {"kind": "tiny", "source": "tiny-sdxl", "label": "tiny", "sha256": "ab" * 32}
    (tmp_path / "run" / "run.json").write_text(json.dumps({"format": 1, "name": "run", "base": base,
                                                          "recipe": started, "photos": []}))
    meta = {"run": "run", "mode": "pivotal", "base": base, "arch": "sdxl", "trigger_word": "prtkl", "tokens": None,
            "recipe": resumed, "step": 6}
    assert dict(training_rows(step, meta))["Steps"] == "6 (this checkpoint: step 6)"
    del meta["recipe"]  # an older checkpoint without its own recipe: run.json's
    assert dict(training_rows(step, meta))["Steps"] == "4 (this checkpoint: step 6)"


# --- --models-dir / --outputs-dir say where runs land without them (not ./models) --------------------


@pytest.mark.parametrize("command", [["train", "--name", "x"], ["history"], ["corridor", "r"]])
def test_the_folder_flags_name_the_real_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command[0], "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "./models" not in said and "./outputs" not in said
    assert "models/ beside dreamy/, not the working directory" in said


# --- a string for a number over the API is one sentence, not Gradio's "upstream ... exception" -------


@pytest.mark.parametrize("payload", ["2", "3", [2], {"v": 2}, True, float("nan")])
def test_a_number_widget_refuses_a_non_number_before_gradio_compares_or_rounds_it(payload):
    import gradio as gr

    from studio.typed import typed

    with gr.Blocks():
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1)
        batch = gr.Slider(1, 16, value=1, step=1, label="Batch size")
    typed(lambda seed, batch: None, [seed, batch])
    typed(lambda other_name, batch: None, [seed, batch])  # wired twice: checked once
    for widget, label in ((seed, "'seed' (Seed)"), (batch, "'batch' (Batch size)")):
        with pytest.raises(gr.Error) as refused:
            widget.preprocess(payload)
        assert refused.value.message.startswith(f"{label} must be a finite number, got ")
    assert seed.preprocess(7) == 7 and batch.preprocess(3) == 3 and seed.preprocess(None) is None
