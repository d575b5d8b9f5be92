"""Widgets for settings and the preset's locks: one widget per setting, read-only with a 🔒 while the
preset locks it. The core enforces the locks; these only show them and hand values over."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import gradio as gr

from dreamy.errors import DreamyError
from dreamy.recipes.presets import load_preset, preset_fields


def _field_meta(cls: type, name: str) -> tuple[Any, dict]:
    f = {f.name: f for f in fields(cls)}[name]
    return typing.get_type_hints(cls)[name], dict(f.metadata)


def field_widget(cls: type, name: str, docs: bool = False, locked: bool = False, **kwargs: Any) -> gr.components.Component:
    """A widget for one setting of ``cls`` (DreamSettings, TrainSettings, EnlargeSettings); ``docs`` adds
    the setting's one-line description under its label (costs height: only where it helps); ``locked``
    shows it read-only with a 🔒, as :func:`locked_updates` does."""
    tp, meta = _field_meta(cls, name)
    label = name.replace("_", " ") + (" 🔒" if locked else "")
    if locked:
        kwargs["interactive"] = False
    info = (meta.get("doc") or None) if docs else None
    if meta.get("choices"):
        return gr.Dropdown(list(meta["choices"]), label=label, info=info, **kwargs)
    if tp is bool:
        return gr.Checkbox(label=label, info=info, **kwargs)
    if tp is int:
        return gr.Number(label=label, precision=0, info=info, **kwargs)
    if tp is float:
        return gr.Number(label=label, info=info, **kwargs)
    return gr.Textbox(label=label, info=info, **kwargs)


def preset_widget(cls: type, name: str, preset_name: str, job: str, **kwargs: Any) -> gr.components.Component:
    """:func:`field_widget` holding the preset's value and lock from the start. The value is also the
    API's default for the parameter, so a client may leave a setting out and gets the preset's."""
    preset = load_preset(preset_name)
    value = preset_fields(preset, job)[name]
    return field_widget(cls, name, locked=name in preset.locked.get(job, ()), value=value, **kwargs)


def locked_updates(preset_name: str, job: str, names: Sequence[str], unlocked: bool,
                   values: dict[str, Any] | None = None) -> list[dict]:
    """Updates for ``names``: preset values (or ``values``), read-only with a 🔒 where locked."""
    preset = load_preset(preset_name)
    base = preset_fields(preset, job)
    locked = set(preset.locked.get(job, ()))
    out = []
    for name in names:
        is_locked = name in locked and not unlocked
        label = name.replace("_", " ") + (" 🔒" if is_locked else "")
        value = (values or base).get(name, base[name])
        out.append(gr.update(value=value, interactive=not is_locked, label=label))
    return out


def lock_toggled(preset_name: str, job: str, names: Sequence[str], unlocked: bool) -> list[dict]:
    """Unlocking keeps what is typed; locking again puts the preset's values back in the locked fields."""
    preset = load_preset(preset_name)
    locked = set(preset.locked.get(job, ()))
    updates = locked_updates(preset_name, job, names, unlocked)
    if unlocked:
        for u in updates:
            u.pop("value")
    else:
        for name, u in zip(names, updates, strict=True):
            if name not in locked:
                u.pop("value")
    return updates


def overrides_from(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """Widget values -> overrides; the core checks types and ranges and refuses locked changes."""
    return dict(zip(names, values, strict=True))


def preset_description(preset_name: str) -> str:
    try:
        p = load_preset(preset_name)
    except DreamyError as e:
        return f"⚠ {e}"
    return p.description


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise gr.Error(f"{what} must be a whole number, got {value!r:.40}.")
    return int(value)
