"""Strict types at the studio's API boundary (studio/typed.py): a value that is not what its widget
sends is refused with the parameter's name, before the handler runs."""

from __future__ import annotations

import math

import gradio as gr
import pytest

from studio.typed import typed


def _handler(model: str, unlock: bool, steps: float, choice: str, request: gr.Request = None):
    return ("ran", model, unlock, steps, choice)


def _stream(model: str, unlock: bool, steps: float, choice: str):
    yield ("ran", unlock)


@pytest.fixture(scope="module")
def inputs():
    with gr.Blocks():
        return [gr.Textbox(label="Model"), gr.Checkbox(label="Unlock"), gr.Number(label="Steps", precision=0),
                gr.Dropdown(["a", "b"], label="Choice")]


@pytest.mark.parametrize("unlock", ["false", "False", "0", 0, 1, [False], None, {"v": True}, "true"])
def test_any_non_boolean_unlock_is_refused_by_name(inputs, unlock):
    for fn in (typed(_handler, inputs), typed(_stream, inputs)):
        with pytest.raises(gr.Error, match="'unlock'"):
            out = fn("tiny", unlock, 4, "a")
            list(out) if not isinstance(out, tuple) else out


@pytest.mark.parametrize("steps", ["7", True, math.nan, math.inf, [4]])
def test_numbers_must_be_finite_numbers(inputs, steps):
    with pytest.raises(gr.Error, match="'steps'"):
        typed(_handler, inputs)("tiny", True, steps, "a")


@pytest.mark.parametrize("args", [(["tiny"], True, 4, "a"), ("tiny", True, 4, True), ("tiny", True, 4, ["a"])])
def test_text_and_choices_must_be_plain_values(inputs, args):
    with pytest.raises(gr.Error):
        typed(_handler, inputs)(*args)


def test_right_types_pass_and_the_signature_is_kept(inputs):
    import inspect

    fn = typed(_handler, inputs)
    assert fn("tiny", False, 4, "a") == ("ran", "tiny", False, 4, "a")
    assert fn("tiny", True, None, "b", request=None)[2] is True
    assert list(inspect.signature(fn).parameters) == ["model", "unlock", "steps", "choice", "request"]
    assert inspect.isgeneratorfunction(typed(_stream, inputs))
