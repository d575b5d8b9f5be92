"""Prompts as AUTOMATIC1111's web UI reads them: emphasis weights, ``BREAK`` and 75-token chunks.

The ``a1111`` prompt syntax (``prompt_syntax = "a1111"`` in a dream recipe) follows A1111's rules,
written anew from its documented behaviour (for SD 1.x here and in dreamy/dreaming/blocks.py; SDXL
runs both of its text encoders through the same chunks and emphasis: dreamy/dreaming/sdxl.py):

- **Weights** (``modules/prompt_parser.py``, ``parse_prompt_attention``): ``(text)`` multiplies the
  weight of ``text`` by 1.1, ``[text]`` divides it by 1.1, ``(text:0.7)`` multiplies it by 0.7;
  brackets nest and multiply; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters; a
  ``)`` or ``]`` with nothing open is plain text, and brackets left open at the end still apply;
  ``BREAK`` (a whole word, upper case, outside brackets) starts a new chunk; neighbouring pieces
  of equal weight are joined before tokenizing.
- **Chunks** (``modules/sd_hijack_clip.py``, ``FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line``):
  each piece is tokenized on its own (no start/end markers, no cut) and the tokens fill chunks of
  75; a chunk is full, or cut by ``BREAK``, then padded with end-of-text to 75 and wrapped in
  start-of-text ... end-of-text, so every chunk is 77 tokens, the markers and padding at weight 1.0.
  When a chunk fills up and a comma lies at most 20 tokens back (A1111's default "Prompt word wrap
  length limit", ``comma_padding_backtrack = 20``), the words after that comma move to the next chunk.
  An empty prompt is one chunk.
- After the first end-of-text of a chunk, A1111 pads with the tokenizer's pad token (the same token
  for SD 1.x and SDXL's first encoder, ``!`` = 0 for SDXL's OpenCLIP bigG; ``process_tokens``).
- Each chunk is encoded on its own and its hidden states weighted by :func:`original_emphasis`.

What is *not* part of this syntax, and refused by :func:`unsupported_construct`: prompt editing
``[a:b:0.5]``, alternation ``[a|b]``, composable ``AND`` and extra networks ``<lora:name:1>``
(A1111 handles those before these rules); textual-inversion embeddings are read as words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import PresetError

CHUNK_TOKENS = 75  # A1111's chunk_length: the tokens of text per 77-token chunk
COMMA_BACKTRACK = 20  # A1111's default opts.comma_padding_backtrack
UP, DOWN = 1.1, 1 / 1.1  # A1111's round- and square-bracket multipliers
BREAK = ("BREAK", -1.0)  # the marker parse_prompt_attention puts between chunks

# A whole-word BREAK with the white space around it, as A1111 splits plain text on it.
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# ":" + a number + ")" closes a round bracket with an explicit weight (A1111: ":([+-]?[.\d]+)\)").
_WEIGHT = re.compile(r":([+-]?[.\d]+)\)")
_PLAIN_STOP = set("\\()[]:")  # characters that end a run of plain text


def _lexemes(text: str) -> list[tuple[str, str]]:
    """``text`` cut into (kind, value): escape, open-round, open-square, weight, close-round,
    close-square, text. The same cuts as A1111's ``re_attention``."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt in ("(", ")", "[", "]", "\\"):
                out.append(("escape", nxt))
                i += 2
            else:  # a lone backslash stands for nothing (A1111 keeps an empty piece for it)
                out.append(("escape", ""))
                i += 1
        elif c in "([)]":
            out.append(({"(": "open-round", "[": "open-square", ")": "close-round", "]": "close-square"}[c], c))
            i += 1
        elif c == ":":
            m = _WEIGHT.match(text, i)
            if m:
                out.append(("weight", m.group(0)))
                i = m.end()
            else:
                out.append(("text", ":"))
                i += 1
        else:
            j = i
            while j < n and text[j] not in _PLAIN_STOP:
                j += 1
            out.append(("text", text[i:j]))
            i = j
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``text`` -> [(piece, weight), ...] by A1111's ``parse_prompt_attention`` rules (module docstring).

    Weights are Python floats multiplied in A1111's order (so ``((a))`` is 1.1 * 1.1 =
    1.2100000000000002); a ``BREAK`` between chunks is the pair ``("BREAK", -1.0)``; the result is
    never empty (``[("", 1.0)]`` for an empty prompt). Raises PresetError for an explicit weight
    that is not a number, e.g. ``(word:1.2.3)`` (A1111 fails on it too).

    >>> parse_weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")[:2]
    [('a ', 1.0), ('house', 1.5730000000000004)]
    """
    res: list[list[Any]] = []
    rounds: list[int] = []
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= factor

    for kind, value in _lexemes(text):
        if kind == "escape":
            res.append([value, 1.0])
        elif kind == "open-round":
            rounds.append(len(res))
        elif kind == "open-square":
            squares.append(len(res))
        elif kind == "weight" and rounds:
            number = value[1:-1]
            try:
                factor = float(number)
            except ValueError:
                raise PresetError(f"The prompt's weight '{value}' is not a number; write e.g. (word:1.2).") from None
            multiply(rounds.pop(), factor)
        elif kind == "close-round" and rounds:
            multiply(rounds.pop(), UP)
        elif kind == "close-square" and squares:
            multiply(squares.pop(), DOWN)
        else:  # text, and a close or weight with nothing open, which A1111 keeps as text
            for k, part in enumerate(_BREAK.split(value)):
                if k:
                    res.append(list(BREAK))
                res.append([part, 1.0])
    for start in rounds:  # brackets still open at the end apply to the rest, rounds first
        multiply(start, UP)
    for start in squares:
        multiply(start, DOWN)
    if not res:
        res = [["", 1.0]]
    merged: list[list[Any]] = [res[0]]
    for piece, weight in res[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += piece
        else:
            merged.append([piece, weight])
    return [(piece, weight) for piece, weight in merged]


@dataclass(frozen=True)
class Chunk:
    """One 77-token window the text encoder reads: token ids and one weight per token.

    ``ids``: start-of-text, 75 tokens of text or padding, end-of-text (ints, tokenizer ids);
    ``weights``: 77 floats, 1.0 for the markers and the padding.
    """

    ids: tuple[int, ...]
    weights: tuple[float, ...]


def chunk_prompt(tokenizer: Any, text: str) -> list[Chunk]:
    """``text`` in A1111's 75-token chunks (module docstring): at least one :class:`Chunk`.

    ``tokenizer``: a CLIP tokenizer (transformers), whose ``bos_token_id``/``eos_token_id`` wrap each
    chunk and whose ``pad_token_id`` follows the first end-of-text. Raises PresetError as
    :func:`parse_weights` does.
    """
    pieces = parse_weights(text)
    texts = [piece for piece, weight in pieces if (piece, weight) != BREAK]
    # A1111 tokenizes each piece separately, without markers or a length cut; verbose=False keeps
    # transformers from warning that a piece is longer than 77 tokens (chunking is the point).
    encoded = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]) \
        if texts else iter(())
    bos, eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    pad = eos if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
    comma = _comma_id(tokenizer)

    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        body = ids + [eos] * (CHUNK_TOKENS - len(ids))
        full = [bos, *body, eos]
        first_end = full.index(eos)
        full = full[: first_end + 1] + [pad] * (len(full) - first_end - 1)
        chunks.append(Chunk(tuple(full), (1.0, *weights, *[1.0] * (CHUNK_TOKENS - len(weights)), 1.0)))
        ids, weights, last_comma = [], [], -1

    for piece in pieces:
        if piece == BREAK:
            close()
            continue
        weight = piece[1]
        for token in next(encoded):
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK_TOKENS and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                # A full chunk with a comma near its end: the words after the comma go on together.
                keep = last_comma + 1
                moved_ids, moved_weights = ids[keep:], weights[keep:]
                ids, weights = ids[:keep], weights[:keep]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == CHUNK_TOKENS:
                close()
            ids.append(int(token))
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


def original_emphasis(z: torch.Tensor, weights: tuple[float, ...] | list[float]) -> torch.Tensor:
    """A1111's "Original" emphasis (``modules/sd_emphasis.py``, ``EmphasisOriginal``) on one chunk's
    hidden states: each token's vector times its weight, then the whole chunk rescaled so that its
    mean is what it was before, ``z * w * mean(z) / mean(z * w)``.

    ``z``: (1, 77, hidden), any float dtype and device; ``weights``: 77 floats (:attr:`Chunk.weights`).
    Computed in float32 and returned in ``z``'s dtype and device. All weights 1.0 give ``z`` back
    bit for bit (the factor is exactly 1). Where the weighted mean is exactly 0 the rescale is
    skipped (A1111 would divide by zero and paint NaN).
    """
    w = torch.tensor(weights, dtype=torch.float32, device=z.device).reshape(1, -1, 1)
    zf = z.float()
    before = zf.mean()
    zf = zf * w
    after = zf.mean()
    if after != 0:
        zf = zf * (before / after)
    return zf.to(dtype=z.dtype)


def _comma_id(tokenizer: Any) -> int | None:
    """The id of the comma token (``,</w>`` in CLIP's vocabulary), or None when there is none."""
    tid = tokenizer.convert_tokens_to_ids(",</w>")
    if tid is None or tokenizer.convert_ids_to_tokens(tid) != ",</w>":
        return None
    return int(tid)


# What A1111 does to a prompt *before* the rules above, which Dreamy does not do.
_UNSUPPORTED = (
    (re.compile(r"<\w+:[^>]+>"), "extra-network syntax (LoRA, hypernetwork)"),
    (re.compile(r"\bAND\b"), "composable diffusion ('AND')"),
    (re.compile(r"\[[^\[\]]*\|[^\[\]]*\]"), "alternation ('[a|b]')"),
    (re.compile(r"\[[^\[\]]*:\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*\]"), "prompt editing ('[a:b:when]')"),
)
_ESCAPED = re.compile(r"\\[\\()\[\]]")


def unsupported_construct(text: str) -> str:
    """"" when ``text`` uses only what :func:`parse_weights` reads; else a clause naming the first
    A1111 construct Dreamy does not reproduce and where it is, e.g. ``prompt editing ('[a:b:when]'):
    '[cat:dog:0.5]'``. Escaped brackets are literal and never count."""
    plain = _ESCAPED.sub("  ", text)
    for pattern, what in _UNSUPPORTED:
        m = pattern.search(plain)
        if m:
            return f"{what}: '{text[m.start():m.end()][:60]}'"
    return ""


def check_a1111_prompt(text: str, where: str) -> None:
    """Raise PresetError (naming ``where``, e.g. "dream settings 'prompt'") when ``text`` cannot be
    read by the a1111 syntax: an unsupported construct, or a weight that is not a number."""
    what = unsupported_construct(text)
    if what:
        raise PresetError(f"{where} uses A1111's {what}, which Dreamy does not reproduce; "
                          "write the prompt without it (weights, BREAK and long prompts work).")
    try:
        parse_weights(text)
    except PresetError as e:
        msg = str(e)
        raise PresetError(f"{where}: {msg[:1].lower()}{msg[1:]}") from None


def check_prompt_syntax(values: Mapping[str, Any], where: str) -> None:
    """Refuse (PresetError naming ``where`` and the field) dream settings whose prompts their
    ``prompt_syntax`` cannot read: with "a1111", a construct Dreamy does not reproduce or a weight
    that is not a number. "plain" reads any text. ``values``: dream settings by name."""
    if values.get("prompt_syntax") != "a1111":
        return
    for name in ("prompt", "negative_prompt"):
        check_a1111_prompt(str(values.get(name, "")), f"{where} '{name}'")


# The characters A1111's parser gives a meaning: a plain prompt writes each behind a backslash.
_SPECIAL = re.compile(r"([\\()\[\]])")
_UNESCAPE = re.compile(r"\\([\\()\[\]])")


def escape_plain(text: str) -> str:
    """A plain-syntax prompt as A1111 must be given it to read it literally: each ``\\``, ``(``,
    ``)``, ``[`` and ``]`` behind a backslash (A1111's own ``\\(`` escapes, the way its tag
    interrogators escape tags), so ``a (red) house`` is written ``a \\(red\\) house`` and weighs 1.0.

    Exactly undone by :func:`unescape_plain`. What A1111 reads before these rules has no escape and
    stays as written: a whole-word ``BREAK``, ``AND``, ``<lora:...>``."""
    return _SPECIAL.sub(r"\\\1", text)


def unescape_plain(text: str) -> str:
    """The inverse of :func:`escape_plain`: ``\\\\`` -> ``\\``, ``\\(`` -> ``(`` ... left to right;
    ``unescape_plain(escape_plain(t)) == t`` for every string ``t``."""
    return _UNESCAPE.sub(r"\1", text)
