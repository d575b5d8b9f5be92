"""What a dropped PNG says about how it was made: a Dreamy recipe, a foreign tool's parameters, or nothing.

The studio shows this before anything runs, and can put the settings back into the Dream form
(where the preset's locks apply as for anything typed). A foreign (A1111, Forge, Fooocus) file's
parameters (a PNG's text chunks, a JPEG's or WebP's EXIF comment; Fooocus' JSON scheme; ComfyUI's
workflow, which is shown but never run) are read as far as they map onto Dreamy's dream settings;
the file itself is untrusted, so every value is checked and anything odd is left out rather than guessed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DreamyError, PresetError
from ..recipes.presets import list_presets
from ..recipes.recipe import Recipe, locked_changes
from ..recipes.samplers import from_a1111
from .metadata import CHUNK, parse_a1111, prompt_syntax_of, read_recipe, read_text_chunks

_SIZE = re.compile(r"^\s*(\d{2,5})\s*x\s*(\d{2,5})\s*$")
MAX_TEXT = 65536
MAX_JSON = 4 << 20  # a ComfyUI workflow can be a few hundred kB


@dataclass
class PngSummary:
    kind: str  # dreamy | foreign | none
    recipe: Recipe | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # foreign: as the other tool wrote them
    values: dict[str, Any] = field(default_factory=dict)  # dream settings that can go into the form
    seed: int | None = None
    preset: str | None = None
    model: str | None = None
    message: str = ""
    tool: str = ""  # foreign: "A1111/Forge", "Fooocus" or "ComfyUI"
    notes: list[str] = field(default_factory=list)  # foreign: what has no equivalent here, one sentence each


def _number(text: Any, kind: type) -> Any:
    if isinstance(text, bool) or text is None:
        return None
    try:
        v = kind(float(text)) if kind is int and isinstance(text, float) else kind(str(text).strip())
    except (TypeError, ValueError, OverflowError):
        return None
    return v if isinstance(v, int) or math.isfinite(v) else None


def _json(text: str, limit: int = MAX_JSON) -> Any:
    """JSON from an untrusted chunk, or None (too long, malformed, or nested past the parser's depth)."""
    if len(text) > limit:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _text(v: Any) -> str:
    return v[:4000] if isinstance(v, str) else ""


def _form_values(prompt: Any, negative: Any, steps: Any, guidance: Any, size: tuple[Any, Any] | None) -> dict:
    values: dict[str, Any] = {"prompt": _text(prompt), "negative_prompt": _text(negative)}
    guidance, steps = _number(guidance, float), _number(steps, int)
    if guidance is not None:
        values["guidance"] = guidance
    if steps is not None:
        values["steps"] = steps
    if size is not None:
        w, h = _number(size[0], int), _number(size[1], int)
        if w is not None and h is not None and w > 0 and h > 0:
            values["width"], values["height"] = w, h
    return values


def _seed(v: Any) -> int | None:
    seed = _number(v, int)
    return seed if seed is not None and 0 <= seed < 2**32 else None


def _a1111(path: Path, text: str) -> PngSummary:
    params = parse_a1111(text[:MAX_TEXT])
    m = _SIZE.match(str(params.get("Size", "")))
    values = _form_values(params.get("prompt"), params.get("negative_prompt"), params.get("Steps"),
                          params.get("CFG scale"), m.groups() if m else None)
    # its prompts are written for A1111's weights and chunks (Dreamy's plain ones escaped: read as plain)
    values["prompt_syntax"] = prompt_syntax_of(params)
    notes = []
    if isinstance(params.get("Sampler"), str):
        try:  # A1111's sampler and its SD 1.x schedule, or a sentence saying there is no equivalent
            values["sampler"], values["scheduler"] = from_a1111(params["Sampler"], str(params.get("Schedule type", "")))
        except PresetError as e:
            notes.append(f"{e} The preset's sampler is used instead.")
    notes += _reading_notes(params)
    return PngSummary("foreign", parameters=params, values=values, seed=_seed(params.get("Seed")), tool="A1111/Forge",
                      notes=notes,
                      message=f"'{path.name}' was made by another tool (A1111/Forge parameters); its parameters are "
                              "shown, and can be dreamed again here, but not re-created exactly.")


def _reading_notes(params: dict[str, Any]) -> list[str]:
    """One sentence per A1111 setting in ``params`` that changes how the prompt was read and that
    Dreamy's a1111 syntax does not reproduce (it reads as A1111's defaults: "Original" emphasis, no
    clip skip, prompt and negative prompt of unequal length in two passes). A1111 writes each of these
    only when it is not its default (``modules/processing.py``, ``create_infotext``)."""
    notes = []
    skip = _number(params.get("Clip skip"), int)
    if skip is not None and skip > 1:
        notes.append(f"A1111's Clip skip {skip} has no equivalent in Dreamy, which reads SD 1.x's last text-encoder "
                     "layer (A1111's default; for SDXL both read the penultimate layers).")
    emphasis = params.get("Emphasis")
    if isinstance(emphasis, str) and emphasis.strip() and emphasis.strip() != "Original":
        notes.append(f"A1111's emphasis '{emphasis.strip()[:40]}' has no equivalent in Dreamy, whose a1111 prompt "
                     "syntax weighs words as A1111's default 'Original' (the mean restored).")
    for key in ("Pad conds", "Pad conds v0"):
        if str(params.get(key, "")).strip().lower() == "true":
            notes.append(f"A1111's '{key}' (the shorter of prompt and negative prompt padded to the other's length) "
                         "has no equivalent in Dreamy, which reads them in two passes (A1111's default).")
    return notes


_FOOOCUS_SIZE = re.compile(r"^\s*\(?\s*(\d{2,5})\s*[,x×]\s*(\d{2,5})\s*\)?\s*$")


def _fooocus(path: Path, data: dict) -> PngSummary:
    """Fooocus' own scheme: a JSON object ({"prompt", "negative_prompt", "steps", "guidance_scale",
    "seed", "resolution": "(1152, 896)", ...}; key case and spaces vary between versions)."""
    params = {str(k): v for k, v in data.items() if isinstance(v, str | int | float | bool | list) or v is None}
    get = {str(k).strip().lower().replace(" ", "_"): v for k, v in data.items()}.get
    m = _FOOOCUS_SIZE.match(str(get("resolution", "")))
    values = _form_values(get("prompt"), get("negative_prompt"), get("steps"),
                          get("guidance_scale", get("cfg_scale", get("guidance"))), m.groups() if m else None)
    return PngSummary("foreign", parameters=params, values=values, seed=_seed(get("seed")), tool="Fooocus",
                      message=f"'{path.name}' was made by another tool (Fooocus); its parameters are shown, and can "
                              "be dreamed again here, but not re-created exactly.")


def _comfy_api(graph: dict) -> dict[str, Any]:
    """What a ComfyUI ``prompt`` graph ({id: {class_type, inputs}}) says: its first sampler's settings
    and the texts its positive and negative links lead to. Best effort: odd shapes give less."""
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict)}

    def node(link: Any) -> dict:
        if isinstance(link, list) and link and isinstance(nodes.get(str(link[0])), dict):
            n = nodes[str(link[0])]
            return n.get("inputs") if isinstance(n.get("inputs"), dict) else {}
        return {}

    def text(link: Any, depth: int = 0) -> Any:
        inputs = node(link)
        t = inputs.get("text", inputs.get("text_g"))
        if isinstance(t, list) and depth < 8:  # text from another node (a primitive, a concatenation)
            return text(t, depth + 1) if t else None
        return t if isinstance(t, str) else None

    out: dict[str, Any] = {}
    samplers = [n for _, n in sorted(nodes.items()) if "KSampler" in str(n.get("class_type", ""))]
    for n in samplers[:1]:
        inputs = n.get("inputs") if isinstance(n.get("inputs"), dict) else {}
        out["sampler node"] = str(n.get("class_type"))[:80]
        for key, name in (("seed", "seed"), ("noise_seed", "seed"), ("steps", "steps"), ("cfg", "cfg"),
                          ("sampler_name", "sampler"), ("scheduler", "scheduler"), ("denoise", "denoise")):
            v = inputs.get(key)
            if isinstance(v, str | int | float) and not isinstance(v, bool):
                out.setdefault(name, v)
        for key in ("positive", "negative"):
            t = text(inputs.get(key))
            if t is not None:
                out[key] = t
        latent = node(inputs.get("latent_image"))
        if isinstance(latent.get("width"), int) and isinstance(latent.get("height"), int):
            out["size"] = f"{latent['width']}x{latent['height']}"
    if "positive" not in out:
        texts = [n["inputs"]["text"] for _, n in sorted(nodes.items()) if "CLIPTextEncode" in str(n.get("class_type"))
                 and isinstance(n.get("inputs"), dict) and isinstance(n["inputs"].get("text"), str)]
        out.update({f"text {i + 1}": t for i, t in enumerate(texts[:8])})
    return out


def _comfy_workflow(workflow: dict) -> dict[str, Any]:
    """What a ComfyUI UI ``workflow`` ({"nodes": [{type, widgets_values}]}) says, when no prompt graph does."""
    out: dict[str, Any] = {}
    nodes = [n for n in workflow.get("nodes", []) if isinstance(n, dict)] if isinstance(workflow.get("nodes"), list) \
        else []
    texts = [n["widgets_values"][0] for n in nodes if "CLIPTextEncode" in str(n.get("type"))
             and isinstance(n.get("widgets_values"), list) and n["widgets_values"]
             and isinstance(n["widgets_values"][0], str)]
    out.update({f"text {i + 1}": t for i, t in enumerate(texts[:8])})
    for n in nodes:
        w = n.get("widgets_values")
        if str(n.get("type")) == "KSampler" and isinstance(w, list) and len(w) >= 6:
            for name, v in zip(("seed", None, "steps", "cfg", "sampler", "scheduler"), w[:6], strict=True):
                if name and isinstance(v, str | int | float) and not isinstance(v, bool):
                    out[name] = v
            break
    return out


def _comfyui(path: Path, chunks: dict[str, str]) -> PngSummary:
    graph = _json(chunks.get("prompt", ""))
    params = _comfy_api(graph) if isinstance(graph, dict) else {}
    if not params:
        workflow = _json(chunks.get("workflow", ""))
        params = _comfy_workflow(workflow) if isinstance(workflow, dict) else {}
    size = str(params.get("size", "")).split("x") if params.get("size") else None
    values = _form_values(params.get("positive", params.get("text 1")), params.get("negative"), params.get("steps"),
                          params.get("cfg"), tuple(size) if size and len(size) == 2 else None)
    return PngSummary("foreign", parameters=params, values=values, seed=_seed(params.get("seed")), tool="ComfyUI",
                      message=f"'{path.name}' is a ComfyUI workflow: Dreamy shows what it could read of it (made by "
                              "another tool) but does not run workflows; its prompt and settings can be dreamed again "
                              "here, not re-created.")


def describe_png(path: str | Path) -> PngSummary:
    """Read an image's recipe or foreign parameters (PNG; JPEG and WebP through their EXIF comment);
    a DreamyError only if it is not a readable image."""
    path = Path(path)
    chunks = read_text_chunks(path)
    if CHUNK in chunks:
        try:
            recipe = read_recipe(path)
        except DreamyError as e:
            return PngSummary("none", message=str(e).replace(str(path), path.name))
        s = recipe.settings
        values = {k: getattr(s, k) for k in ("prompt", "negative_prompt", "guidance", "steps", "width", "height",
                                             "prompt_syntax", "sampler", "scheduler")} if recipe.job == "dream" else {}
        return PngSummary("dreamy", recipe=recipe, values=values, seed=recipe.seed, preset=recipe.preset,
                          model=recipe.model.source if recipe.model else None)
    text = chunks.get("parameters")
    if text is not None:
        data = _json(text) if text.lstrip().startswith("{") or chunks.get("fooocus_scheme") == "fooocus" else None
        if isinstance(data, dict):
            return _fooocus(path, data)
        return _a1111(path, text)
    if "workflow" in chunks or isinstance(_json(chunks.get("prompt", "")), dict):  # ComfyUI's graph chunks
        return _comfyui(path, chunks)
    return PngSummary("none", message=f"'{path.name}' carries no recipe or parameters: it was not made by "
                                      "Dreamy or A1111-style tools, or its metadata was stripped.")


# Settings a foreign file may give that Dreamy puts into a dream, by the form's names.
REPRODUCIBLE = ("prompt", "negative_prompt", "steps", "guidance", "width", "height", "prompt_syntax", "sampler",
                "scheduler")


def reproducible(info: PngSummary) -> tuple[list[str], list[str]]:
    """For a foreign file: (what Dreamy can dream again: settings and seed; what it cannot: the other
    tool's sampler, model and everything else it wrote)."""
    can = [k for k in REPRODUCIBLE if k in info.values and (info.values[k] != "" or k == "negative_prompt")]
    if info.seed is not None:
        can.append("seed")
    read = {"prompt", "negative_prompt", "positive", "negative", "steps", "cfg", "guidance_scale", "seed", "size",
            "resolution", "Steps", "CFG scale", "Seed", "Size", "text 1"}
    if info.values.get("prompt_syntax") == "plain":  # Dreamy's own text: its escaped plain prompts
        read.add("Prompt syntax")
    if "sampler" in info.values:  # an A1111 sampler mapped onto one of Dreamy's
        read |= {"Sampler", "Schedule type"}
    cannot = [k for k in info.parameters if k not in read and info.parameters[k] not in ("", None)]
    return can, cannot


@dataclass
class DreamForm:
    """What a dropped PNG puts back into the Dream form."""

    preset: str  # the PNG's preset when it is installed here, else the one the form had
    values: dict[str, Any]  # dream settings (prompt, guidance, size...) as far as the file gives them
    seed: int | None
    model: str | None  # the model source the file names (unchecked: the caller vets it)
    unlock: list[str]  # the preset's locked fields that these values change: they need unlocking


def dream_form(path: str | Path, preset: str) -> DreamForm:
    """A PNG's settings for the Dream form, under its own preset if installed (else ``preset``).

    Raises DreamyError when the file is not a readable PNG or carries no recipe or parameters."""
    info = describe_png(path)
    if info.kind == "none":
        raise DreamyError(info.message)
    name = info.preset if info.preset in list_presets() else preset
    return DreamForm(name, info.values, info.seed, info.model, locked_changes(name, "dream", info.values))


def foreign_refusal(info: PngSummary, name: str) -> str:
    """Why a foreign file cannot be recalled exactly, and what of it can be dreamed again."""
    can, cannot = reproducible(info)
    uses = "the model you pick" if "sampler" in info.values else "the preset's sampler and the model you pick"
    return (f"'{name}' was made by another tool ({info.tool}), so Dreamy cannot re-create it exactly. "
            f"It can dream again with its {', '.join(can) or 'nothing'}"
            + (f"; not with its {', '.join(cannot)[:300]} (Dreamy uses {uses})" if cannot else "")
            + ". " + "".join(f"{n} " for n in info.notes)
            + "Use its settings (studio: Recall · Use its settings; CLI: recall --use-settings, where settings "
              "that differ from a locked preset need --unlock).")
