"""Past dreams lists the Word box's jobs (``outputs/word/<time>/``) like any other dream: newest first
among dreams, sweeps and grids, reopened into the gallery captioned with the word, the status naming
it. Made by the real core calls (the tiny chat model of test_word, the tiny SD model), on the CPU."""

from __future__ import annotations

import pytest
from test_word import chat_model  # noqa: F401 - the tiny chat model fixture

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def outputs(chat_model, tiny_model, tmp_path_factory):  # noqa: F811
    """outputs/ holding a dream, then a word job (the newer), each in its own claimed job folder."""
    from dreamy.dreaming.dreams import dream
    from dreamy.dreaming.word_picture import word_picture
    from dreamy.layout import claim_run_dir

    root = tmp_path_factory.mktemp("outputs")
    dream(tiny_model, "biased-dreams", "0", out_dir=claim_run_dir(root, "dream"), overrides=SMALL,
          unlock=True, device="cpu")
    word_dir = claim_run_dir(root, "word")
    list(word_picture("love", tiny_model, "word-style", 3, out_dir=word_dir, prompt_model=chat_model,
                      overrides=SMALL, unlock=["width", "height", "steps"], device="cpu", particles={"size": 64}))
    return root, word_dir


def test_word_jobs_are_listed_and_reopened_like_other_dreams(outputs):
    from dreamy.history import list_dreams, open_dreams

    root, word_dir = outputs
    jobs = list_dreams(root)
    assert [(j.kind, j.pictures) for j in jobs] == [("word", 1), ("dream", 1)]  # newest first
    assert jobs[0].folder == word_dir and " · word · 1 picture" in jobs[0].label
    view = open_dreams(word_dir, root)
    assert [(p.name, caption) for p, caption in view.pictures] == [("seed000003.png", "love · seed 3")]
    assert view.status.startswith("Reopened the word **love** of ")
    assert view.recipe.runtime["word"]["word"] == "love"
    # the other kinds keep their captions and status
    other = open_dreams(jobs[1].folder, root)
    assert other.pictures[0][1] == "seed 0" and other.status.startswith("Reopened the dream of ")


def test_the_studio_offers_word_jobs_in_past_dreams(outputs, tmp_path):
    from studio.history import dream_choices
    from studio.session import Studio

    root, word_dir = outputs
    st = Studio(default_model="tiny", outputs=root, models=tmp_path / "models")
    choices = dream_choices(st)
    assert [v for _, v in choices] == [str(word_dir.relative_to(root)), choices[1][1]]
    assert choices[0][1].startswith("word/") and choices[1][1].startswith("dream/")


def test_the_history_command_lists_word_jobs(outputs, capsys):
    from dreamy.cli.main import main

    root, word_dir = outputs
    assert main(["history", "--outputs-dir", str(root), "--models-dir", str(root / "no-models")]) in (0, None)
    assert "word · 1 picture" in capsys.readouterr().out
