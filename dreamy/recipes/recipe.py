"""The recipe: a plain, serialisable record of exactly what one job does.

``resolve`` turns a preset plus a caller's overrides into settings, enforcing the preset's locks:
changing a locked field is refused unless the caller unlocks it, and an unlocked change is recorded
(field, preset value, new value) so every output says how it departs from the preset.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import LockedFieldError, PresetError, RecallError
from ..models.a1111_prompt import check_prompt_syntax
from .presets import Preset, load_preset, preset_fields
from .settings import SECTIONS, build, check_value

RECIPE_FORMAT = 1


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA or a textual-inversion embedding applied to a model (dreamy/models/sdxl_adapters.py).

    ``source``: the file as given; ``sha256``: its content hash (recall refuses a changed file);
    ``name``: its file name without suffix (A1111's name for it); ``scale``: a LoRA's strength
    (1.0 as trained); ``token``: the word an embedding is written as in prompts; ``a1111_hash``: the
    short hash A1111 writes in ``Lora hashes`` (sha256 of the tensor data after the safetensors
    header, as kohya's "addnet" hash) or ``TI hashes`` (sha256 of the file), 12 hex digits."""

    kind: str  # lora | embedding
    source: str
    sha256: str
    name: str
    scale: float | None = None
    token: str | None = None
    a1111_hash: str | None = None


@dataclass(frozen=True)
class ModelRef:
    """Which weights: the source as the user gave it, what kind it is, and its content hashes.

    ``sha256`` identifies the source's own bytes (a file's sha256; for a folder or a Train checkpoint
    a hash over its files): recall and checkpoints compare it. ``single_file_sha256`` is the sha256 of
    the single ``.safetensors`` file of the same weights that A1111 loads: the file itself, or the
    single-file export Dreamy recorded for a checkpoint or an exported diffusers folder (see
    dreamy/models/a1111_hash.py); None when Dreamy knows no such file (a hub or plain diffusers folder).
    """

    source: str
    kind: str  # tiny | hub | folder | file | checkpoint
    sha256: str
    label: str
    checkpoint_step: int | None = None
    single_file_sha256: str | None = None
    arch: str | None = None  # sd15 | sdxl, as found in the files (None: recorded before it was)
    adapters: tuple[AdapterRef, ...] = ()  # LoRAs and embeddings applied on top, in order

    @property
    def short_hash(self) -> str:
        """Dreamy's content hash in short: the first 10 hex digits of ``sha256``."""
        return self.sha256[:10]

    @property
    def a1111_hash(self) -> str | None:
        """A1111's "Model hash" (its "AutoV2", which Civitai shows too): the first 10 hex digits of the
        single file's sha256; None when there is no known single file."""
        return self.single_file_sha256[:10] if self.single_file_sha256 else None


@dataclass(frozen=True)
class Recipe:
    job: str  # dream | train | enlarge
    preset: str
    settings: Any  # DreamSettings | TrainSettings | EnlargeSettings
    locked: tuple[str, ...] = ()
    unlocked: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: ModelRef | None = None
    seed: int | None = None
    runtime: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT,
            "job": self.job,
            "preset": self.preset,
            "model": dataclasses.asdict(self.model) if self.model else None,
            "seed": self.seed,
            "settings": dataclasses.asdict(self.settings),
            "locked": list(self.locked),
            "unlocked": self.unlocked,
            "runtime": self.runtime,
        }

    def summary(self, markdown: bool = False) -> str:
        """How this was made, for people: preset, seed, model, the main settings, unlocked changes, device.

        ``python -m dreamy info`` prints it; the studio shows it as Markdown (``markdown=True``)."""
        bold = (lambda x: f"**{x}**") if markdown else str
        code = (lambda x: f"`{x}`") if markdown else str
        s = self.settings
        model = "?"
        if self.model:
            step = f", step {self.model.checkpoint_step}" if self.model.checkpoint_step is not None else ""
            a1111 = self.model.a1111_hash
            also = f", Model hash {code(a1111)}" if a1111 and a1111 != self.model.short_hash else ""
            model = f"{self.model.label} ({code(self.model.short_hash)}{step}{also})"
        lines = [f"{bold('Dreamy recipe')} · preset {bold(self.preset)} · seed {bold(self.seed)} · model {model}"]
        if getattr(s, "prompt", ""):
            lines.append(f"> {s.prompt}" if markdown else f"prompt: {s.prompt}")
        if getattr(s, "negative_prompt", ""):
            lines.append(f"negative: {s.negative_prompt}")
        syntax = " · A1111 prompt syntax" if getattr(s, "prompt_syntax", "plain") == "a1111" else ""
        lines.append(f"guidance {s.guidance} · {s.steps} {s.sampler} steps · {s.width}×{s.height} · {s.precision}{syntax}"
                     if self.job == "dream" else f"a {self.job} recipe")
        styles = [f"LoRA {a.name} ×{a.scale if a.scale is not None else 1.0:g}" if a.kind == "lora" else f"embedding {a.name} ({a.token})"
                  for a in (self.model.adapters if self.model else ())]
        if styles:
            lines.append("style: " + ", ".join(styles))
        if self.unlocked:
            lines.append("unlocked: " + ", ".join(f"{k} {v.get('preset')!r} → {v.get('value')!r}"
                                                  for k, v in self.unlocked.items()))
        if self.runtime:
            lines.append(f"made on {self.runtime.get('device', '?')} in {self.runtime.get('dtype', '?')}")
        return ("\n\n" if markdown else "\n").join(lines)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Any) -> Recipe:
        """Rebuild from ``to_dict`` output; every field is re-validated (a PNG is untrusted input)."""
        try:
            if not isinstance(d, dict) or d.get("format") != RECIPE_FORMAT:
                raise RecallError("not a Dreamy recipe of a format this version reads")
            job = d["job"]
            if job not in SECTIONS:
                raise RecallError(f"unknown job {job!r:.40}")
            settings = build(SECTIONS[job], d["settings"], "recipe [settings]")
            m = d.get("model")
            model = None
            if m is not None:
                step = m.get("checkpoint_step")
                single = m.get("single_file_sha256")  # absent from recipes written before it was recorded
                arch = m.get("arch")
                model = ModelRef(
                    source=_str(m["source"]), kind=_str(m["kind"]), sha256=_str(m["sha256"]),
                    label=_str(m["label"]), checkpoint_step=None if step is None else _int(step),
                    single_file_sha256=None if single is None else _sha256(single),
                    arch=None if arch is None else _choice(arch, ("sd15", "sdxl")),
                    adapters=tuple(_adapter(a) for a in _list(m.get("adapters", []), 32)),
                )
            seed = d.get("seed")
            locked = d.get("locked", [])
            unlocked = d.get("unlocked", {})
            if not isinstance(locked, list) or not all(isinstance(x, str) for x in locked):
                raise RecallError("'locked' is not a list of names")
            if not isinstance(unlocked, dict) or not all(isinstance(v, dict) for v in unlocked.values()):
                raise RecallError("'unlocked' is not a table of changes")
            runtime = d.get("runtime", {})
            if not isinstance(runtime, dict):
                raise RecallError("'runtime' is not a table")
            return cls(
                job=job, preset=_str(d["preset"]), settings=settings, locked=tuple(locked),
                unlocked=unlocked, model=model, seed=None if seed is None else _seed(seed), runtime=runtime,
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise RecallError(f"the recipe is incomplete or malformed ({type(e).__name__}: {e!s:.80})") from None
        except PresetError as e:
            raise RecallError(f"the recipe holds an invalid setting: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, RecursionError) as e:
            raise RecallError(f"the recipe is not valid JSON ({e!s:.80})") from None


def _str(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 4096:
        raise TypeError(f"expected a short string, got {type(v).__name__}")
    return v


def _sha256(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[0-9a-f]{64}", v):
        raise TypeError("expected a sha256 in hex")
    return v


def _choice(v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise TypeError(f"expected one of {', '.join(choices)}")
    return v


def _list(v: Any, most: int) -> list:
    if not isinstance(v, list | tuple) or len(v) > most:
        raise TypeError(f"expected a list of at most {most} entries")
    return v


def _adapter(a: Any) -> AdapterRef:
    """An AdapterRef from untrusted JSON: every field type-checked, a finite scale, a plain name."""
    import math

    if not isinstance(a, dict):
        raise TypeError("an adapter is not a table")
    scale, token, short = a.get("scale"), a.get("token"), a.get("a1111_hash")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale)):
        raise TypeError("an adapter's scale is not a finite number")
    return AdapterRef(kind=_choice(a["kind"], ("lora", "embedding")), source=_str(a["source"]),
                      sha256=_sha256(a["sha256"]), name=_str(a["name"]),
                      scale=None if scale is None else float(scale), token=None if token is None else _str(token),
                      a1111_hash=None if short is None else _str(short))


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v


def _seed(v: Any) -> int:
    v = _int(v)
    if not 0 <= v < 2**32:
        raise TypeError("seed out of range")
    return v


def resolve(
    preset: Preset | str,
    job: str = "dream",
    overrides: dict[str, Any] | None = None,
    unlock: bool | Iterable[str] = (),
) -> Recipe:
    """Preset + overrides -> a Recipe (model, seed and runtime are filled in by the engine).

    ``unlock=True`` unlocks every field; an iterable unlocks just those. Overriding a locked field
    with the value it already has is not a change and needs no unlock.
    """
    if isinstance(preset, str):
        preset = load_preset(preset)
    base = preset_fields(preset, job)
    locked = preset.locked.get(job, ())
    cls = SECTIONS[job]
    if unlock is True:
        unlocked_names = set(base)
    elif unlock is False or unlock is None:
        unlocked_names = set()
    else:
        unlocked_names = set(unlock)
        unknown = sorted(unlocked_names - set(base))
        if unknown:
            raise PresetError(f"Cannot unlock {unknown}: not {job} settings (known: {', '.join(base)}).")
    values = dict(base)
    changes: dict[str, dict[str, Any]] = {}
    for name, value in (overrides or {}).items():
        value = check_value(cls, name, value, f"{job} setting")
        if value == base[name]:
            continue
        if name in locked and name not in unlocked_names:
            raise LockedFieldError(
                f"'{name}' is locked by preset '{preset.name}' (it is {base[name]!r}); "
                f"unlock it to change it (CLI: --unlock {name}; Python: unlock=['{name}'])."
            )
        values[name] = value
        if name in locked:
            changes[name] = {"preset": base[name], "value": value}
    if job == "dream" and any(values[k] != base[k] for k in ("sampler", "scheduler", "steps")):
        from .samplers import check_sampler_runs

        check_sampler_runs(values["sampler"], values["scheduler"], values["steps"],
                           f"dream settings (preset '{preset.name}' with sampler/steps/scheduler overridden)")
    if job == "dream":
        check_prompt_syntax(values, "dream setting")  # the a1111 syntax: only what Dreamy reproduces
    return Recipe(
        job=job,
        preset=preset.name,
        settings=cls(**values),
        locked=tuple(locked),
        unlocked=changes,
    )


def locked_changes(preset: Preset | str, job: str, values: Mapping[str, Any]) -> list[str]:
    """The preset's locked fields that ``values`` change (in the preset's order): what must be unlocked
    to dream with them, say the settings a recalled or foreign PNG puts back into a form."""
    if isinstance(preset, str):
        preset = load_preset(preset)
    base = preset_fields(preset, job)
    return [name for name in preset.locked.get(job, ()) if name in values and values[name] != base[name]]
