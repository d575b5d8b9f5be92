"""Hostile or broken input never crashes with a traceback: recipes are fuzzed, failed writes explain themselves."""

import errno
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from dreamy.errors import OutputError, RecallError
from dreamy.png.metadata import parse_a1111, read_recipe, save_png
from dreamy.recipes.recipe import ModelRef, Recipe, resolve

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)


def _good() -> dict:
    r = resolve("biased-dreams").replace(seed=3, model=ModelRef("tiny", "tiny", "a" * 64, "tiny"))
    return r.to_dict()


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_is_a_recipe_or_a_clear_refusal(value):
    try:
        Recipe.from_dict(value)
    except RecallError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["job", "preset", "settings", "model", "seed", "locked", "unlocked", "runtime", "format"]),
       _json)
def test_a_good_recipe_with_one_field_replaced_is_valid_or_refused(key, value):
    d = _good()
    d[key] = value
    try:
        r = Recipe.from_dict(d)
    except RecallError:
        return
    assert r.job in ("dream", "train", "enlarge")
    assert r.seed is None or 0 <= r.seed < 2**32


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(_good()["settings"])), _json)
def test_each_setting_is_type_and_range_checked(name, value):
    d = _good()
    d["settings"][name] = value
    try:
        r = Recipe.from_dict(d)
    except RecallError:
        return
    assert type(getattr(r.settings, name)) is type(_good()["settings"][name])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_a1111_parser_never_raises(text):
    out = parse_a1111(text)
    assert isinstance(out["prompt"], str) and isinstance(out["negative_prompt"], str)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.dictionaries(st.sampled_from(["dreamy", "parameters", "Comment", "x"]),
                              st.text(max_size=200), max_size=3))
def test_png_text_chunks_of_any_content(tmp_path, chunks):
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_itxt(k, v)
    path = tmp_path / "fuzz.png"
    Image.new("RGB", (2, 2)).save(path, pnginfo=info)
    try:
        read_recipe(path)
    except RecallError:
        pass


def test_paths_in_a_recipe_are_just_strings(tmp_path):
    """A recipe naming a path outside the project is data; loading it is the caller's decision (the studio
    restricts model sources), and a non-model path is refused with the usual one-sentence error."""
    d = _good()
    d["model"]["source"] = "../../../../etc/passwd"
    r = Recipe.from_dict(json.loads(json.dumps(d)))
    assert r.model.source == "../../../../etc/passwd"
    from dreamy.errors import SourceError
    from dreamy.models.sources import load_model

    with pytest.raises(SourceError):
        load_model(r.model.source, device="cpu")


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch, code, words):
    import dreamy.atomic

    target = save_png(Image.new("RGB", (4, 4), "red"), tmp_path / "x.png")
    before = target.read_bytes()

    def fail(*_a, **_k):
        raise OSError(code, "simulated")

    monkeypatch.setattr(dreamy.atomic.os, "fsync", fail)
    with pytest.raises(OutputError, match=f"Cannot write .*x.png: .*{words}.*files already written are kept"):
        save_png(Image.new("RGB", (4, 4), "blue"), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
