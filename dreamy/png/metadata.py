"""PNG recipes: an A1111-compatible ``parameters`` text chunk plus Dreamy's JSON chunk.

The ``parameters`` chunk lets A1111, Forge, ComfyUI and Civitai read the picture's prompt, sampler,
CFG, seed, size and model hash. The ``dreamy`` chunk holds the whole recipe, which is what recall
uses. Nothing time-dependent is written, so the same recipe makes byte-identical files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ..atomic import atomic_write
from ..errors import RecallError
from ..models.a1111_prompt import escape_plain, unescape_plain
from ..recipes.recipe import Recipe
from ..recipes.samplers import a1111_name

CHUNK = "dreamy"
PROMPT_SYNTAX = "Prompt syntax"  # the settings field that marks Dreamy's escaped plain prompts
MAX_CHUNK = 1 << 20  # a recipe is a few kB; anything near a megabyte is not ours


def _clean(text: str) -> str:
    """A value of the settings line: one line, as everything after the prompt must be."""
    return text.replace("\r", " ").replace("\n", " ").strip()


def _as_lines(text: str) -> str:
    """A prompt as A1111 writes it: its line breaks kept (CR LF and lone CR become LF)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def a1111_parameters(recipe: Recipe) -> str:
    """The ``parameters`` text A1111 writes, for a dream recipe.

    As A1111's ``create_infotext``: the prompt as it is (line breaks kept), then ``Negative prompt:``
    and the negative prompt when there is one (line breaks kept), then one line of settings, which
    A1111's ``parse_generation_parameters`` reads as the last line. "Model hash" is the hash A1111
    and Civitai show for the single ``.safetensors`` file of these weights (``ModelRef.a1111_hash``);
    it is left out when Dreamy does not know that file, rather than a hash no file has.

    A prompt of the ``plain`` syntax is written escaped (:func:`escape_plain`: ``(`` -> ``\\(`` ...), so
    A1111 reads its brackets as the literal text Dreamy dreamed, not as weights, and the settings say
    ``Prompt syntax: plain`` so that Dreamy's reader (:func:`parse_a1111`) undoes the escapes exactly.
    An ``a1111``-syntax prompt is written as it is: A1111 reads it as Dreamy did.
    """
    s = recipe.settings
    plain = s.prompt_syntax == "plain"
    prompt, negative = (escape_plain(s.prompt), escape_plain(s.negative_prompt)) if plain else (s.prompt, s.negative_prompt)
    lines = [_as_lines(prompt)]
    if negative:
        lines.append(f"Negative prompt: {_as_lines(negative)}")
    fields = [
        ("Steps", s.steps),
        ("Sampler", a1111_name(s.sampler, s.scheduler)),
        ("CFG scale", s.guidance),
        ("Seed", recipe.seed),
        ("Size", f"{s.width}x{s.height}"),
    ]
    if recipe.model:
        if recipe.model.a1111_hash:
            fields.append(("Model hash", recipe.model.a1111_hash))
        fields.append(("Model", _a1111_value(recipe.model.label)))
        # A1111's own fields for a LoRA / an embedding in use: "name: short hash" pairs (Civitai reads them)
        for kind, key in (("lora", "Lora hashes"), ("embedding", "TI hashes")):
            pairs = [f"{_clean(a.name).replace(':', '_').replace(',', '_')}: {a.a1111_hash}"
                     for a in getattr(recipe.model, "adapters", ()) if a.kind == kind and a.a1111_hash]
            if pairs:
                fields.append((key, json.dumps(", ".join(pairs), ensure_ascii=False)))
    if recipe.unlocked:
        fields.append(("Unlocked", _a1111_value(" ".join(sorted(recipe.unlocked)))))
    fields += [("Preset", _a1111_value(recipe.preset)), ("Version", f"dreamy {_version()}")]
    if plain:  # after Dreamy's Version, which tells Dreamy's reader the text is its own
        fields.append((PROMPT_SYNTAX, "plain"))
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def _a1111_value(v: str) -> str:
    """Quoted as A1111 quotes: JSON string syntax when the value holds a comma or a colon."""
    v = _clean(v)
    return json.dumps(v, ensure_ascii=False) if ("," in v or ":" in v) else v


def _version() -> str:
    from .. import __version__

    return __version__


def png_info(recipe: Recipe | None, extra: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if recipe is not None:
        if recipe.job == "dream" and recipe.seed is not None:
            info.add_text("parameters", a1111_parameters(recipe))
        info.add_text(CHUNK, recipe.to_json(), zip=True)
    for key, value in (extra or {}).items():
        info.add_text(key, value, zip=True)
    return info


def save_png(image: Image.Image, path: Path, recipe: Recipe | None = None, extra: dict[str, str] | None = None) -> Path:
    """Write a PNG with its recipe atomically: the file is complete or absent, never half-written."""
    info = png_info(recipe, extra)
    return atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


MAX_EXIF_TEXT = 1 << 20  # an infotext is a few kB; a megabyte of "comment" is not one
_USER_COMMENT, _MAKER_NOTE, _EXIF_IFD = 0x9286, 0x927C, 0x8769


def decode_user_comment(raw: Any) -> str | None:
    """EXIF UserComment as A1111/Forge/Fooocus write it: an 8-byte charset prefix, then the text.

    ``UNICODE\\0`` is followed by UTF-16 in either byte order (piexif writes big-endian, other tools
    little-endian; a BOM decides, else where the zero bytes sit), ``ASCII\\0\\0\\0`` by plain text,
    eight zero bytes (undefined) by UTF-8 as a courtesy. Anything else is not a comment we can read."""
    if isinstance(raw, str):
        return raw.strip("\x00") or None
    if not isinstance(raw, bytes | bytearray) or len(raw) < 8 or len(raw) > MAX_EXIF_TEXT:
        return None
    head, body = bytes(raw[:8]), bytes(raw[8:])
    if head == b"UNICODE\0":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            codec, body = ("utf-16-be" if body[:2] == b"\xfe\xff" else "utf-16-le"), body[2:]
        else:  # ASCII-range text has its zero byte first in big-endian, second in little-endian
            codec = "utf-16-be" if body[0::2].count(0) >= body[1::2].count(0) else "utf-16-le"
        text = body[: len(body) // 2 * 2].decode(codec, errors="replace")
    elif head in (b"ASCII\0\0\0", b"\0" * 8):
        text = body.decode("utf-8", errors="replace")
    else:
        return None
    return text.strip("\x00") or None


def _exif_text(im: Image.Image) -> dict[str, str]:
    """The A1111-style text a JPEG or WebP keeps in EXIF: UserComment -> ``parameters`` (and Fooocus'
    scheme, which it writes into MakerNote, -> ``fooocus_scheme``)."""
    try:
        ifd = im.getexif().get_ifd(_EXIF_IFD)
    except Exception:  # a malformed EXIF block is no recipe, never a crash  # noqa: BLE001
        return {}
    out = {}
    comment = decode_user_comment(ifd.get(_USER_COMMENT))
    if comment:
        out["parameters"] = comment
    note = ifd.get(_MAKER_NOTE)
    if isinstance(note, bytes) and note.strip(b"\0") in (b"fooocus", b"a1111"):
        out["fooocus_scheme"] = note.strip(b"\0").decode()
    return out


def read_text_chunks(path: Path) -> dict[str, str]:
    """The image's text: a PNG's text chunks, or for a JPEG/WebP the infotext in its EXIF UserComment
    (as ``parameters``, where A1111 and Forge put it in a PNG); a RecallError if the file is not a
    readable image."""
    try:
        with Image.open(path) as im:
            im.verify()  # checks a PNG's chunk CRCs without decoding the pixels
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {}) if im.format == "PNG" else {}
            if im.format in ("JPEG", "MPO", "WEBP"):
                text = _exif_text(im)
    except FileNotFoundError:
        raise RecallError(f"No file at '{path}'.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RecallError(f"'{path}' is not a readable PNG, JPEG or WebP image ({type(e).__name__}: {e!s:.80}).") \
            from None
    return {k: v for k, v in text.items() if isinstance(v, str)}


def read_recipe(path: Path) -> Recipe:
    """The Dreamy recipe inside a PNG, validated; a clear RecallError when there is none."""
    chunks = read_text_chunks(path)
    raw = chunks.get(CHUNK)
    if raw is None:
        if chunks.keys() & {"parameters", "fooocus_scheme", "Comment", "prompt", "workflow"}:
            raise RecallError(
                f"'{path}' was made by another tool (it has no Dreamy recipe); its parameters can be shown "
                "(CLI: info) and dreamed again (CLI: recall --use-settings), but Dreamy cannot re-create it exactly."
            )
        raise RecallError(f"'{path}' carries no recipe: it was not made by Dreamy, or its metadata was stripped.")
    if len(raw) > MAX_CHUNK:
        raise RecallError(f"'{path}' has an oversized recipe chunk ({len(raw)} bytes); refusing to read it.")
    return Recipe.from_json(raw)


# A1111's "Key: value" settings: a key starts with a word character and may hold spaces, - and /;
# a value is a JSON-quoted string or runs to the next comma (line breaks included: an extension's
# value may span lines).
_A1111_FIELD = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_KEY_START = re.compile(r"^\s*\w[\w \-/]*:\s")


def _settings_start(lines: list[str]) -> int | None:
    """Index of the settings line: the last that starts with ``Steps:`` (A1111 writes Steps first);
    else, as A1111 reads older or foreign text, the last line when it holds three or more fields."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("Steps:"):
            return i
    if lines and len(_A1111_FIELD.findall(lines[-1])) >= 3 and _KEY_START.match(lines[-1]):
        return len(lines) - 1
    return None


def parse_a1111(text: str) -> dict[str, Any]:
    """A1111's ``parameters`` text -> {'prompt', 'negative_prompt', and each 'Key: value' field}.

    The prompt runs to the line that starts with ``Negative prompt:``, the negative prompt from there
    to the settings; the settings run from the last line that starts with ``Steps:`` to the end (so a
    prompt line such as "Steps: 3" stays prompt text). A line after it that starts with ``Key:`` is an
    extension's appended line of settings; any other line continues the value before it (a value that
    holds a raw line break). The prompts keep their line breaks, blank lines and spaces as written
    (A1111 writes them so; its own reader also strips each line, which this one does not, so that
    Dreamy's text reads back exactly); only the one space after ``Negative prompt:`` is A1111's.
    Dreamy's own text of a plain-syntax prompt (:func:`prompt_syntax_of` says "plain") has its
    escapes undone, so both prompts read back exactly as dreamed.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip().split("\n")
    fields: dict[str, Any] = {}
    at = _settings_start(lines)
    if at is not None:
        settings = lines[at]
        for line in lines[at + 1:]:
            settings += (", " if _KEY_START.match(line) else "\n") + line
        del lines[at:]
        for key, value in _A1111_FIELD.findall(settings):
            value = value.strip()
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    value = value.strip('"')
            if key.strip() and str(value) != "":
                fields.setdefault(key.strip(), value)
    prompt: list[str] = []
    negative: list[str] | None = None
    for line in lines:
        if negative is None and line.lstrip().startswith("Negative prompt:"):
            rest = line.lstrip()[len("Negative prompt:"):]
            negative = [rest[1:] if rest.startswith(" ") else rest]
        elif negative is not None:
            negative.append(line)
        else:
            prompt.append(line)
    fields.pop("prompt", None)
    fields.pop("negative_prompt", None)
    texts = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative or [])}
    if prompt_syntax_of(fields) == "plain":
        texts = {k: unescape_plain(v) for k, v in texts.items()}
    return {**texts, **fields}


def prompt_syntax_of(fields: dict[str, Any]) -> str:
    """The prompt syntax an A1111 ``parameters`` text was written in: "plain" for Dreamy's own text of a
    plain-syntax prompt (``Version: dreamy ...`` with ``Prompt syntax: plain``), "a1111" for anything
    else (A1111, Forge, and Dreamy's a1111-syntax prompts are all written for A1111's reading)."""
    dreamy = str(fields.get("Version", "")).startswith("dreamy ")
    return "plain" if dreamy and fields.get(PROMPT_SYNTAX) == "plain" else "a1111"
