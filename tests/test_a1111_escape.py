"""A plain-syntax prompt in A1111's ``parameters`` text: brackets escaped so A1111 reads them as the
literal text Dreamy dreamed, and unescaped by Dreamy's reader so its own text reads back exactly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from dreamy.models.a1111_prompt import escape_plain, parse_weights, unescape_plain
from dreamy.png.metadata import a1111_parameters, parse_a1111, prompt_syntax_of
from dreamy.recipes.recipe import resolve

TRICKY = "a (red:1.5) house [at] night, ((glow)), back\\slash \\(already\\) x:0.5) ]["
NEGATIVE = "(blurry:1.3), [lowres]"


def _recipe(**overrides):
    r = resolve("biased-dreams", overrides=overrides, unlock=list(overrides))
    return r.replace(seed=7)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab ()[]\\:.,12\n", max_size=40))
def test_escaping_round_trips_and_a1111_reads_the_literal_text(text):
    written = escape_plain(text)
    assert unescape_plain(written) == text
    # A1111's parser (restated in parse_weights) sees one piece of the literal text at weight 1.0
    pieces = parse_weights(written)
    assert "".join(p for p, _ in pieces) == text and {w for _, w in pieces} <= {1.0}


def test_a_plain_prompt_is_written_escaped_and_read_back_exactly():
    r = _recipe(prompt=TRICKY, negative_prompt=NEGATIVE)
    text = a1111_parameters(r)
    first, negative, settings_line = text.split("\n")
    assert first == "a \\(red:1.5\\) house \\[at\\] night, \\(\\(glow\\)\\), back\\\\slash \\\\\\(already\\\\\\) x:0.5\\) \\]\\["
    assert negative == "Negative prompt: \\(blurry:1.3\\), \\[lowres\\]"
    assert settings_line.endswith(", Prompt syntax: plain")
    assert [w for _, w in parse_weights(first)] == [1.0]  # no weights for A1111
    back = parse_a1111(text)
    assert (back["prompt"], back["negative_prompt"]) == (TRICKY, NEGATIVE)
    assert prompt_syntax_of(back) == "plain"


def test_an_a1111_syntax_prompt_is_written_as_it_is():
    prompt = "biomorphic, (fractalism:0.7), [haze], \\(literal\\)"
    r = _recipe(prompt=prompt, negative_prompt=NEGATIVE, prompt_syntax="a1111")
    text = a1111_parameters(r)
    assert text.split("\n")[:2] == [prompt, f"Negative prompt: {NEGATIVE}"]
    assert "Prompt syntax" not in text
    back = parse_a1111(text)
    assert (back["prompt"], back["negative_prompt"], prompt_syntax_of(back)) == (prompt, NEGATIVE, "a1111")


def test_only_dreamys_own_text_is_unescaped():
    """Another tool's text is never unescaped, even if it happens to carry the field: its \\( means
    what A1111 says it means."""
    foreign = "a \\(cat\\)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Prompt syntax: plain, Version: v1.10.1"
    back = parse_a1111(foreign)
    assert back["prompt"] == "a \\(cat\\)" and prompt_syntax_of(back) == "a1111"
    old = "a (cat)\nSteps: 20, Sampler: DDIM, CFG scale: 3.0, Seed: 1, Preset: biased-dreams, Version: dreamy 0.0.9"
    assert parse_a1111(old)["prompt"] == "a (cat)" and prompt_syntax_of(parse_a1111(old)) == "a1111"


def test_a_png_with_only_its_parameters_gives_back_the_plain_prompt(tmp_path):
    """A Dreamy PNG whose JSON recipe was stripped (only A1111's text kept): Use its settings puts back
    the exact prompt and the plain syntax, not the escaped text and not A1111's weights."""
    from dreamy.png.info import describe_png, dream_form, reproducible

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(_recipe(prompt=TRICKY, negative_prompt=NEGATIVE)))
    Image.new("RGB", (8, 8)).save(tmp_path / "stripped.png", pnginfo=info)
    described = describe_png(tmp_path / "stripped.png")
    assert described.values["prompt"] == TRICKY and described.values["negative_prompt"] == NEGATIVE
    assert described.values["prompt_syntax"] == "plain" and described.seed == 7
    assert "Prompt syntax" not in reproducible(described)[1]
    form = dream_form(tmp_path / "stripped.png", "biased-dreams")
    assert form.values["prompt"] == TRICKY and "prompt_syntax" not in form.unlock


def test_a_dreamed_png_carries_the_escaped_text_and_recalls_exactly(tiny_model, tmp_path):
    from dreamy.dreaming.dreams import dream, recall
    from dreamy.png.metadata import read_recipe, read_text_chunks

    ov = {"prompt": TRICKY, "width": 64, "height": 64, "steps": 2}
    [r] = dream(tiny_model, "biased-dreams", "3", overrides=ov, unlock=True, out_dir=tmp_path / "a")
    text = read_text_chunks(r.path)["parameters"]
    assert text.startswith(escape_plain(TRICKY) + "\n") and read_recipe(r.path).settings.prompt == TRICKY
    again = recall(r.path, tmp_path / "b", model=tiny_model)
    assert again.path.read_bytes() == r.path.read_bytes()
