"""Widgets for settings and the preset's locks: one widget per setting, read-only with a 🔒 while the
preset locks it. The core enforces the locks; these only show them and hand values over.

How a field shows its lock (:func:`lock_mark`): locked, its label ends in 🔒 and its info line says
which preset locks it and how to change it; unlocked, a field whose value differs from the preset's
says so in its label ("· differs from preset (3.0)"), kept up to date by :func:`watch_locks`.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import gradio as gr

from dreamy.errors import DreamyError
from dreamy.recipes.presets import load_preset, preset_fields

LOCK = "🔒"
DIFFERS = "· differs from preset"
SHOWN_VALUE = 40  # characters of a preset's value a label quotes (a prompt is cut with "…")
QUICK_TRY = "quick-try"  # presets/quick-try.toml: the small, short settings of a quick try


def _field_meta(cls: type, name: str) -> tuple[Any, dict]:
    f = {f.name: f for f in fields(cls)}[name]
    return typing.get_type_hints(cls)[name], dict(f.metadata)


def field_widget(cls: type, name: str, docs: bool = False, locked: bool = False, *, label: str | None = None,
                 **kwargs: Any) -> gr.components.Component:
    """A widget for one setting of ``cls`` (DreamSettings, TrainSettings, EnlargeSettings); ``docs`` adds
    the setting's one-line description under its label (costs height: only where it helps); ``locked``
    shows it read-only with a 🔒, as :func:`locked_updates` does. ``label``: a plain label instead of
    the setting's name (Enlarge's "Guidance (CFG)" for s_cfg)."""
    tp, meta = _field_meta(cls, name)
    label = (label or name.replace("_", " ")) + (f" {LOCK}" if locked else "")
    if locked:
        kwargs["interactive"] = False
    info = kwargs.pop("info", None) or ((meta.get("doc") or None) if docs else None)
    if meta.get("choices"):
        return gr.Dropdown(list(meta["choices"]), label=label, info=info, **kwargs)
    if tp is bool:
        return gr.Checkbox(label=label, info=info, **kwargs)
    if tp is int:
        return gr.Number(label=label, precision=0, info=info, **kwargs)
    if tp is float:
        return gr.Number(label=label, info=info, **kwargs)
    if tp is dict:  # scheduler arguments: JSON text, parsed by settings_from()
        kwargs["value"] = as_json(kwargs.get("value") or {})
        return gr.Textbox(label=label, info=info, **kwargs)
    return gr.Textbox(label=label, info=info, **kwargs)


def preset_widget(cls: type, name: str, preset_name: str, job: str, marks: bool = False,
                  **kwargs: Any) -> gr.components.Component:
    """:func:`field_widget` holding the preset's value and lock from the start. The value is also the
    API's default for the parameter, so a client may leave a setting out and gets the preset's.
    ``marks``: the info line says who locks it (see :func:`lock_mark`) from the first paint on, in
    front of the field's own ``info``."""
    preset = load_preset(preset_name)
    value = preset_fields(preset, job)[name]
    locked = name in preset.locked.get(job, ())
    if marks and locked:
        kwargs["info"] = _joined(lock_note(preset.name), kwargs.get("info"))
    return field_widget(cls, name, locked=locked, value=value, **kwargs)


# ---- lock marks: which preset locks a field, and what an unlocked form changed ----


def lock_note(preset_name: str) -> str:
    """The info line of a locked field."""
    return f"{LOCK} locked by preset {preset_name}: tick Unlock to change it"


def shown(value: Any) -> str:
    """A preset's value as a label quotes it: short, one line, '(empty)' for empty text."""
    if isinstance(value, dict):
        value = as_json(value)
    text = " ".join(str(value).split())
    if text == "":
        return "empty"
    return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 1] + "…"


def same(value: Any, preset_value: Any) -> bool:
    """Whether a widget's value is the preset's (3 == 3.0; scheduler JSON compared as data)."""
    if isinstance(preset_value, dict):
        try:
            return json.loads(value) == preset_value if isinstance(value, str) else value == preset_value
        except ValueError:
            return False
    if isinstance(preset_value, bool) or isinstance(value, bool):
        return value is preset_value
    return value == preset_value


def lock_mark(preset_name: str, job: str, name: str, unlocked: bool, value: Any, *, label: str | None = None,
              info: str | None = None) -> dict:
    """Label, info and style of one field: 🔒 and who locks it while locked; unlocked, whether its
    value differs from the preset's ("steps · differs from preset (50)"). ``label``/``info``: the
    field's own plain label and info line (default: the setting's name, no info), kept in front.

    Raises DreamyError (PresetError) when the preset cannot be read."""
    return _mark(load_preset(preset_name), job, name, unlocked, value, label=label, info=info)


def _mark(preset: Any, job: str, name: str, unlocked: bool, value: Any, *, label: str | None = None,
          info: str | None = None) -> dict:
    """:func:`lock_mark` of a loaded preset (a form's fields share one load: each costs ~50 ms, and a
    page load marks 31 fields of three tabs)."""
    base = preset_fields(preset, job)[name]
    plain = label or name.replace("_", " ")
    if name in preset.locked.get(job, ()) and not unlocked:
        return {"label": f"{plain} {LOCK}", "info": _joined(lock_note(preset.name), info),
                "elem_classes": ["dreamy-locked"]}
    if not same(value, base):
        return {"label": f"{plain} {DIFFERS} ({shown(base)})", "info": info or "",
                "elem_classes": ["dreamy-differs"]}
    return {"label": plain, "info": info or "", "elem_classes": []}  # "": None would leave the lock note


def _joined(*parts: str | None) -> str | None:
    return " · ".join(p for p in parts if p) or None


def locked_updates(preset_name: str, job: str, names: Sequence[str], unlocked: bool,
                   values: dict[str, Any] | None = None, *, marks: bool = False,
                   labels: Mapping[str, str] | None = None, infos: Mapping[str, str] | None = None) -> list[dict]:
    """Updates for ``names``: preset values (or ``values``), read-only with a 🔒 where locked.

    ``marks``: labels and info lines as :func:`lock_mark` draws them (``labels``/``infos``: the
    fields' own plain labels and info lines); without, the label is the name plus 🔒 when locked."""
    preset = load_preset(preset_name)
    base = preset_fields(preset, job)
    locked = set(preset.locked.get(job, ()))
    out = []
    for name in names:
        is_locked = name in locked and not unlocked
        value = (values or base).get(name, base[name])
        if marks:
            mark = _mark(preset, job, name, unlocked, value, label=(labels or {}).get(name),
                         info=(infos or {}).get(name))
        else:
            mark = {"label": name.replace("_", " ") + (f" {LOCK}" if is_locked else "")}
        shown_value = as_json(value) if isinstance(base[name], dict) and isinstance(value, dict) else value
        out.append(gr.update(value=shown_value, interactive=not is_locked, **mark))
    return out


def lock_toggled(preset_name: str, job: str, names: Sequence[str], unlocked: bool,
                 current: Sequence[Any] | None = None, *, marks: bool = False,
                 labels: Mapping[str, str] | None = None, infos: Mapping[str, str] | None = None) -> list[dict]:
    """Unlocking keeps what is typed; locking again puts the preset's values back in the locked fields.
    ``current``: the fields' values now (for the marks of what an unlocked form changed)."""
    preset = load_preset(preset_name)
    locked = set(preset.locked.get(job, ()))
    values = dict(zip(names, current, strict=True)) if current is not None else None
    if not unlocked and values is not None:  # locked fields go back to the preset's values
        base = preset_fields(preset, job)
        values = {n: (base[n] if n in locked else v) for n, v in values.items()}
    updates = locked_updates(preset_name, job, names, unlocked, values, marks=marks, labels=labels, infos=infos)
    for name, u in zip(names, updates, strict=True):
        if unlocked or name not in locked:
            u.pop("value")
    return updates


def watch_locks(preset: Any, unlock: Any, widgets: Mapping[str, Any], job: str, *,
                labels: Mapping[str, str] | None = None, infos: Mapping[str, str] | None = None) -> None:
    """Keep each field's mark current while its value changes (typed, or set by a button): an
    unlocked field that differs from the preset says so in its label. UI only, never queued."""
    for name, widget in widgets.items():
        def mark(preset_name: str, unlocked: bool, value: Any, name: str = name) -> dict:
            try:
                return gr.update(**lock_mark(preset_name, job, name, unlocked, value,
                                             label=(labels or {}).get(name), info=(infos or {}).get(name)))
            except DreamyError:
                return gr.update()  # a preset that does not load: the preset picker says why
        widget.change(mark, [preset, unlock, widget], widget, queue=False, show_progress="hidden",
                      trigger_mode="always_last", api_visibility="private")


# ---- the quick try: presets/quick-try.toml's changes, applied to any preset as unlocked changes ----


def quick_try_values(job: str) -> dict[str, Any]:
    """The settings of ``job`` that the quick-try preset changes in the preset it extends (dream: size
    and steps; train: steps, checkpoints, resolution; enlarge: steps). A quick try applies them to
    the chosen preset as unlocked changes, so every output records them like any other change.

    Raises DreamyError (PresetError) when quick-try.toml or its parent cannot be read."""
    from dreamy.recipes.presets import find_preset

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    quick = load_preset(QUICK_TRY)
    parent = tomllib.loads(Path(find_preset(QUICK_TRY)).read_text(encoding="utf-8")).get("extends")
    if not isinstance(parent, str):
        raise DreamyError(f"{quick.path}: a quick try is the changes of quick-try to the preset it extends; "
                          "it needs 'extends'.")
    theirs, ours = preset_fields(load_preset(parent), job), preset_fields(quick, job)
    return {k: v for k, v in ours.items() if v != theirs[k]}


# ---- file lists ----


def file_rows(rows: int) -> int:
    """The height (px) of a File box that shows ``rows`` whole file rows; more scroll inside it.

    Gradio 6 draws a box narrower than ~500 px (a studio column) with each file as a card 56 px tall,
    60 px apart, the first 20 px below the frame's top; a wider box draws 28 px rows, so it shows more.
    A height off this pitch cuts a row through its middle (the Enlarged PNG box at 60 px showed two
    thirds of its one file). Measured in chromium (tests/test_browser_corridor.py checks it)."""
    return 20 + 60 * rows


# ---- values from widgets ----


def as_json(value: Any) -> str:
    """Scheduler arguments as the form shows them: one line of JSON."""
    return json.dumps(value, sort_keys=False)


def overrides_from(names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """Widget values -> overrides; the core checks types and ranges and refuses locked changes.
    Scheduler arguments arrive as JSON text and are parsed here (one sentence when malformed)."""
    out = dict(zip(names, values, strict=True))
    if isinstance(out.get("scheduler"), str):
        try:
            out["scheduler"] = json.loads(out["scheduler"] or "{}")
        except ValueError:
            raise gr.Error("'scheduler' must be a JSON object of diffusers scheduler arguments, e.g. "
                           '{"beta_schedule": "scaled_linear"}.', print_exception=False) from None
    return out


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
