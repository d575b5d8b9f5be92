"""The corridor's marks: before / inside / past, by thresholds that are a preset's data.

A checkpoint is **past** the corridor as soon as one signal crosses its "past" threshold (the model
has collapsed, forgotten language or memorised its photos), **inside** when it is not past and the
training set has started to show (drift or memorisation gap above its "inside" threshold), and
**before** otherwise. docs/corridor.md explains each threshold and where its value comes from.

The thresholds live in a preset's ``[corridor]`` table (inherited through ``extends`` like the other
tables); a preset without one gets ``Thresholds()``'s defaults. ``dreamy/recipes/presets.py`` refuses
unknown top-level tables today, so the table is read here from the preset's TOML files until the
preset loader accepts it (see docs/corridor.md, "Thresholds").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ..errors import PresetError

MARKS = ("before", "inside", "past")


@dataclass(frozen=True)
class Thresholds:
    """Where the corridor starts and ends, on the signals of ``corridor.py`` (all unitless).

    inside_drift: the dreams have come this fraction of the way from the base's statistics to the
        training photos' (0-1): the set has started to leak in.
    inside_gap: or the model denoises its photos this much better than held-out pictures, relative
        to the base (a difference of natural logs: 0.1 is about 10 %).
    past_drift: the dreams are this close to the photos' statistics: every dream is the set.
    past_gap: memorised: ln 2, the photos denoise twice as well (relative to held-out) as at step 0.
    past_diversity: the seeds' dreams differ this fraction as much as the base's did: collapse.
    past_retention: prompts move the prediction this fraction as much as at step 0: language lost.
    """

    inside_drift: float = 0.2
    inside_gap: float = 0.1
    past_drift: float = 0.8
    past_gap: float = 0.69
    past_diversity: float = 0.5
    past_retention: float = 0.5

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def mark(row: dict[str, Any], th: Thresholds) -> tuple[str, str]:
    """(mark, why) for a row's signals (``drift``, ``gap``, ``diversity``, ``retention``; a missing or
    None signal is not judged). ``why`` names the crossings, e.g. "diversity 0.41 < 0.5"."""
    def val(name: str) -> float | None:
        v = row.get(name)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    drift, gap, div, ret = val("drift"), val("gap"), val("diversity"), val("retention")
    past = [f"{n} {v:.2f} {op} {t:g}" for n, v, op, t, crossed in (
        ("drift", drift, ">=", th.past_drift, drift is not None and drift >= th.past_drift),
        ("gap", gap, ">=", th.past_gap, gap is not None and gap >= th.past_gap),
        ("diversity", div, "<=", th.past_diversity, div is not None and div <= th.past_diversity),
        ("retention", ret, "<=", th.past_retention, ret is not None and ret <= th.past_retention)) if crossed]
    if past:
        return "past", "; ".join(past)
    inside = [f"{n} {v:.2f} >= {t:g}" for n, v, t in (("drift", drift, th.inside_drift), ("gap", gap, th.inside_gap))
              if v is not None and v >= t]
    if inside:
        return "inside", "; ".join(inside)
    return "before", ""


# ------------------------------------------------------------------------------------ from a preset


def _table_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The preset's ``[corridor]`` table merged over its parents' (child keys win)."""
    from ..recipes.presets import find_preset

    if path in seen:
        raise PresetError(f"{path}: 'extends' makes a loop ({' -> '.join(p.stem for p in (*seen, path))}).")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PresetError(f"{path}: cannot be read ({e}).") from None
    table = raw.get("corridor", {})
    if not isinstance(table, dict):
        raise PresetError(f"{path}: 'corridor' must be a table ([corridor]).")
    parent = raw.get("extends")
    base = _table_chain(find_preset(parent), (*seen, path)) if isinstance(parent, str) else {}
    return {**base, **table}


def thresholds_from_table(table: dict[str, Any], where: str = "[corridor]") -> Thresholds:
    """Thresholds from a ``[corridor]`` table; keys left out keep their defaults. Raises PresetError
    (one sentence naming ``where`` and the key) for an unknown key or a value that is not a number
    in [0, 10]."""
    known = {f.name for f in fields(Thresholds)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise PresetError(f"{where}: unknown corridor threshold '{key}'; known: {', '.join(sorted(known))}.")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
            raise PresetError(f"{where}: '{key}' must be a number from 0 to 10, not {value!r}.")
        values[key] = float(value)
    return Thresholds(**values)


def preset_thresholds(preset: str | Path | None) -> Thresholds:
    """The thresholds of ``preset`` (a name or .toml path, as a run's recipe names it): its
    ``[corridor]`` table over its parents', defaults for the rest. A preset that no longer exists
    (a user's own, since deleted) gives the defaults; a malformed table raises PresetError."""
    from ..recipes.presets import find_preset

    if not preset:
        return Thresholds()
    try:
        path = find_preset(preset)
    except PresetError:
        return Thresholds()
    return thresholds_from_table(_table_chain(path), f"{path} [corridor]")
