"""Curation as the maker did it: a prompt file x N seeds, the keepers added to a training set each with
its caption file (its prompt, the trigger applied), which training reads with captions = "files"."""

from __future__ import annotations

import pytest

from dreamy.errors import DreamyError

SMALL = {"width": 64, "height": 64, "steps": 2}
OPEN = ["width", "height", "steps"]


def test_a_prompt_file_is_read_one_prompt_a_line(tmp_path):
    from dreamy.dreaming.prompt_sweeps import read_prompt_file

    f = tmp_path / "prompts.txt"
    f.write_text("# candidates\n two people   hugging \n\na bird taking off\ntwo people hugging\n", encoding="utf-8")
    assert read_prompt_file(f) == ["two people hugging", "a bird taking off"]
    f.write_bytes("a dog\r\na cat\r\n".encode("utf-16"))  # Windows Notepad's "Unicode"
    assert read_prompt_file(f) == ["a dog", "a cat"]
    f.write_text("\n".join(f"prompt {i}" for i in range(88)))  # the maker's 88 prompts fit
    assert len(read_prompt_file(f)) == 88
    f.write_bytes(b"caf\xe9 au lait")  # Latin-1
    with pytest.raises(DreamyError, match="Cannot read the prompt file .*not UTF-8"):
        read_prompt_file(f)
    f.write_text("# only a comment\n\n")
    with pytest.raises(DreamyError, match="holds no prompt: write one per line"):
        read_prompt_file(f)
    with pytest.raises(DreamyError, match="Cannot read the prompt file"):
        read_prompt_file(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, tiny_model):
    """Two prompts x two seeds with word-style (its prompt is open), as a prompt file sweep makes them."""
    from dreamy.dreaming.prompt_sweeps import prompt_sweep

    out = tmp_path_factory.mktemp("candidates")
    cells, grid = prompt_sweep(tiny_model, "word-style", ["two people hugging", "prtkl, a bird taking off"], "0-1",
                               out, overrides=SMALL, unlock=OPEN, device="cpu")
    assert grid.is_file() and len(cells) == 4
    return cells


def test_added_pictures_carry_their_prompt_as_caption_with_the_trigger(candidates, tmp_path):
    from dreamy.training.sets import add_to_training_set

    picks = [candidates[0].image.path, candidates[3].image.path]  # one of each prompt
    report = add_to_training_set(picks, "style", tmp_path, captions=True)
    assert [p.name for p in report.added] == ["seed000000.png", "seed000001.png"] and not report.notes
    # the preset the pictures name (word-style) has the trigger prtkl: prepended, or kept where it already is
    assert (tmp_path / "style" / "seed000000.txt").read_text("utf-8") == "prtkl, two people hugging\n"
    assert (tmp_path / "style" / "seed000001.txt").read_text("utf-8") == "prtkl, a bird taking off\n"
    # the same name from another prompt row: a numbered picture, its own caption
    again = add_to_training_set([candidates[2].image.path], "style", tmp_path, captions=True, trigger="zwx")
    assert again.added[0].name == "seed000000-1.png"
    assert (tmp_path / "style" / "seed000000-1.txt").read_text("utf-8") == "zwx, prtkl, a bird taking off\n"
    # a caption edited by hand is kept when its picture is added again
    (tmp_path / "style" / "seed000000.txt").write_text("prtkl, my own words\n", encoding="utf-8")
    kept = add_to_training_set([picks[0]], "style", tmp_path, captions=True)
    assert kept.notes == ["seed000000.txt: already there, kept"]
    assert (tmp_path / "style" / "seed000000.txt").read_text("utf-8") == "prtkl, my own words\n"


def test_training_reads_the_captions_it_was_given(candidates, tmp_path):
    from dreamy.training.data import prepare_images
    from dreamy.training.sets import add_to_training_set

    report = add_to_training_set([c.image.path for c in candidates[:2]], "s", tmp_path, captions=True, trigger="")
    folder = report.folder
    data = prepare_images(folder, resolution=64, prompt="a photo", trigger="prtkl", captions="files")
    assert sorted(i.caption for i in data.images) == ["prtkl, two people hugging"] * 2
    assert all(f"caption from {i.path.stem}.txt" in i.notes for i in data.images)


def test_a_picture_without_a_prompt_gets_no_caption_and_says_so(tmp_path):
    from PIL import Image

    from dreamy.training.sets import add_to_training_set, picture_caption

    photo = tmp_path / "photo.png"
    Image.new("RGB", (80, 80), (10, 90, 200)).save(photo)
    report = add_to_training_set([photo], "s", tmp_path / "sets", captions=True, trigger="prtkl")
    assert [p.name for p in report.added] == ["photo.png"] and not (tmp_path / "sets" / "s" / "photo.txt").exists()
    assert report.notes == ["photo.png: no prompt in it, so no caption file (Train uses the instance prompt for it)"]
    assert picture_caption(photo) == (None, "no prompt in it")


def test_another_tools_infotext_gives_the_caption(tmp_path):
    from PIL import Image, PngImagePlugin

    from dreamy.training.sets import picture_caption

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red fox in snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, "
                                "CFG scale: 7, Seed: 1, Size: 64x64")
    f = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(f, pnginfo=info)
    assert picture_caption(f, "prtkl") == ("prtkl, a red fox in snow", "")
    assert picture_caption(f) == ("a red fox in snow", "")  # no preset named: no trigger unless given


def test_cli_prompt_sweep_then_add_to_set(tiny_model, tmp_path, capsys):
    from dreamy.cli.main import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a tree\na river\n", encoding="utf-8")
    rc = main(["prompt-sweep", "--prompts", str(prompts), "--model", "tiny", "--seeds", "0-1", "--out",
               str(tmp_path / "c"), "--unlock", "width,height,steps", "--width", "64", "--height", "64",
               "--steps", "2", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    lines = out.out.split()
    assert len(lines) == 5 and lines[-1].endswith("prompt-grid.png")
    rc = main(["add-to-set", lines[0], lines[3], "--set", "keepers", "--root", str(tmp_path / "sets")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.splitlines() == [f"{tmp_path / 'sets' / 'keepers' / 'seed000000.png'}\tprtkl, a tree",
                                    f"{tmp_path / 'sets' / 'keepers' / 'seed000001.png'}\tprtkl, a river"]
    assert "--captions files" in out.err
