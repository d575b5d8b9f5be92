"""Strict types at the API boundary: a value that arrives for a widget must have that widget's type.

The page always sends the right types, but the same endpoints take any JSON from an API client, and
Gradio passes some values through unchecked: a Checkbox hands ``"false"``, ``"0"`` or ``[False]`` to
the handler as they are, and ``bool("false")`` is True — an unlock nobody ticked. ``typed`` wraps a
handler so every value is checked against the component it was wired to before the handler runs,
and a wrong one is refused with the parameter's name.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr


def _label(component: Any, name: str) -> str:
    return f"'{name}'" + (f" ({component.label})" if getattr(component, "label", None) else "")


def check_value(component: Any, name: str, value: Any) -> None:
    """Raise gr.Error unless ``value`` is what ``component`` itself would send for parameter ``name``."""
    what = _label(component, name)
    if isinstance(component, gr.Checkbox):
        if type(value) is not bool:
            raise gr.Error(f"{what} must be true or false, got {value!r:.40}.", print_exception=False)
    elif isinstance(component, gr.Number | gr.Slider):
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise gr.Error(f"{what} must be a finite number, got {value!r:.40}.", print_exception=False)
        lo, hi = getattr(component, "minimum", None), getattr(component, "maximum", None)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise gr.Error(f"{what} must be between {lo} and {hi}, got {value!r:.40}.", print_exception=False)
    elif isinstance(component, gr.Dropdown | gr.Radio):
        # Which choices are valid is Gradio's own check (it knows each session's updated lists); the
        # type is ours: one plain value (a list only for a multiselect), never a boolean.
        values = value if getattr(component, "multiselect", False) and isinstance(value, list) else [value]
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, str | int | float)) for v in values):
            raise gr.Error(f"{what} must be one of the listed choices, got {value!r:.40}.", print_exception=False)
    elif isinstance(component, gr.Textbox):
        if value is not None and not isinstance(value, str):
            raise gr.Error(f"{what} must be text, got {value!r:.40}.", print_exception=False)


def _check_before_preprocess(component: Any, name: str) -> None:
    """Check a Number's or Slider's value before Gradio's own preprocess sees it: that compares it with
    the widget's minimum or rounds it first, and a string there (``"2"``) fails inside Gradio, which
    an API client gets as "the upstream Gradio app has raised an exception", not as a sentence."""
    if not isinstance(component, gr.Number | gr.Slider) or getattr(component, "_dreamy_checked", False):
        return
    preprocess = component.preprocess

    def checked(payload: Any) -> Any:
        check_value(component, name, payload)  # gr.Error: Gradio passes it to the client as it is
        return preprocess(payload)

    component.preprocess = checked
    component._dreamy_checked = True  # wired to several handlers: checked once, by its first name


def typed(fn: Callable, inputs: Sequence[Any]) -> Callable:
    """``fn`` with its first ``len(inputs)`` arguments checked against ``inputs`` (the wired components).

    The wrapper keeps ``fn``'s signature (Gradio injects gr.Request / gr.Progress by it) and stays a
    generator function when ``fn`` is one (Gradio streams only those).
    """
    names = list(inspect.signature(fn).parameters)[: len(inputs)]
    for component, name in zip(inputs, names, strict=False):
        _check_before_preprocess(component, name)

    def check(args: tuple, kwargs: dict) -> None:
        bound = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
        for component, name in zip(inputs, names, strict=True):
            if name in bound:
                check_value(component, name, bound[name])

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any):
            check(args, kwargs)
            yield from fn(*args, **kwargs)

        return stream

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any):
        check(args, kwargs)
        return fn(*args, **kwargs)

    return call
