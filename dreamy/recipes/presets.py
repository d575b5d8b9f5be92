"""Preset files: TOML data that pins a package deal, with locks.

A preset has a name, a description, an optional ``extends`` (another preset whose tables it
inherits, table by table and key by key) and up to three tables: ``[dream]``, ``[train]``,
``[enlarge]``. Each table may hold ``locked = [...]``: the fields a caller cannot change without
unlocking them. Built-in presets live in the project's ``presets/`` folder; a user's own preset is
any ``.toml`` file there, in ``$DREAMY_PRESETS``, or given by path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import PresetError
from ..models.a1111_prompt import check_prompt_syntax
from .settings import SECTIONS, build, field_names
from .words import WordSettings, word_settings

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "presets"
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a file stem in a preset folder
# [corridor]: the corridor meter's thresholds, read by dreamy/training/corridor_marks.py (docs/corridor.md);
# [word]: how the word layer writes a prompt (dreamy/recipes/words.py, dreamy/prompt_helper.py)
_TOP_KEYS = {"name", "description", "extends", "corridor", "word", *SECTIONS}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    path: Path | None
    dream: Any
    train: Any
    enlarge: Any
    locked: dict[str, tuple[str, ...]]
    word: WordSettings = WordSettings()  # the [word] table (its defaults when the preset has none)

    def section(self, job: str) -> Any:
        return getattr(self, job)


def preset_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("DREAMY_PRESETS", "").split(os.pathsep) if p]
    return [*extra, BUILTIN_DIR]


def list_presets() -> list[str]:
    names = {p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


def find_preset(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    for d in preset_dirs():
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(list_presets()) or "none"
    raise PresetError(f"No preset named '{name_or_path}' (known presets: {known}).")


def load_named_preset(name: str) -> Preset:
    """The preset called exactly ``name``: ``<name>.toml`` in the preset folders that declares that name.

    For names that come from untrusted places (a PNG's recipe, an API call): never a path, no trimming,
    no case folding, so ``"biased-dreams "``, ``"Biased-Dreams"`` and ``"/tmp/x.toml"`` are refused.
    Raises PresetError when there is no such preset.
    """
    if not isinstance(name, str) or not PRESET_NAME.fullmatch(name) or name.endswith(".toml"):
        raise PresetError(f"{str(name)[:60]!r} is not a preset name (letters, digits, '.', '_', '-'; never a path).")
    for folder in preset_dirs():
        candidate = folder / f"{name}.toml"
        if candidate.is_file():
            preset = load_preset(candidate)
            if preset.name == name:
                return preset
    known = ", ".join(list_presets()) or "none"
    raise PresetError(f"No preset named '{name}' in the preset folders (known presets: {known}).")


def _read_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The preset's tables with ``extends`` resolved (child keys win; ``locked`` is per table)."""
    if path in chain:
        raise PresetError(f"{path}: 'extends' makes a loop ({' -> '.join(p.stem for p in (*chain, path))}).")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: not valid TOML ({e}).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(f"{path}: cannot be read ({e}).") from None
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise PresetError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected {sorted(_TOP_KEYS)}.")
    for job in SECTIONS:
        if job in raw and not isinstance(raw[job], dict):
            raise PresetError(f"{path}: '{job}' must be a table ([{job}]).")
    parent_name = raw.pop("extends", None)
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str):
        raise PresetError(f"{path}: 'extends' must be a preset name (a string).")
    merged = _read_raw(find_preset(parent_name), (*chain, path))
    merged.pop("name", None)  # a preset is named by its own file, never by its parent
    merged.pop("description", None)
    for key, value in raw.items():
        if key in SECTIONS or (key == "word" and isinstance(value, dict)):  # tables inherit key by key
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def load_preset(name_or_path: str | Path) -> Preset:
    """Read, inherit and validate a preset; errors name the file, the table and the key."""
    path = find_preset(name_or_path)
    raw = _read_raw(path)
    values: dict[str, Any] = {}
    locked: dict[str, tuple[str, ...]] = {}
    for job, cls in SECTIONS.items():
        table = dict(raw.get(job, {}))
        lock_list = table.pop("locked", [])
        where = f"{path} [{job}]"
        if not isinstance(lock_list, list) or not all(isinstance(x, str) for x in lock_list):
            raise PresetError(f"{where}: 'locked' must be a list of setting names.")
        unknown = [x for x in lock_list if x not in field_names(cls)]
        if unknown:
            raise PresetError(f"{where}: 'locked' names unknown setting(s) {unknown}.")
        values[job] = build(cls, table, where)
        locked[job] = tuple(lock_list)
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise PresetError(f"{path}: '{key}' must be a string.")
    preset = Preset(
        name=raw.get("name", path.stem),
        description=raw.get("description", ""),
        path=path,
        locked=locked,
        word=word_settings(raw.get("word", {}), f"{path} [word]"),
        **values,
    )
    from .samplers import check_sampler_runs

    check_sampler_runs(preset.dream.sampler, preset.dream.scheduler, preset.dream.steps,
                       f"{path} [dream] sampler/steps with [dream.scheduler]")
    check_prompt_syntax(preset_fields(preset, "dream"), f"{path} [dream]")
    t = preset.train  # class images are dreamed with the [dream] table's prompt syntax
    check_prompt_syntax({"prompt_syntax": preset.dream.prompt_syntax, "prompt": t.class_image_prompt or t.class_prompt,
                         "negative_prompt": t.class_negative_prompt}, f"{path} [train] class image")
    return preset


def preset_fields(preset: Preset, job: str) -> dict[str, Any]:
    settings = preset.section(job)
    return {f.name: getattr(settings, f.name) for f in fields(settings)}
