"""What a text encoder keeps of a text: the one place that says which words a tokenizer cuts away.

CLIP reads at most ``model_max_length`` tokens (77 for SD, the start and end markers included);
everything after that is silently dropped by the encoder. Dream, sweeps, prompt sweeps, Train's
captions, trigger words and validation renders, and Enlarge's prompts all ask :func:`dropped_text`
so that the cut is named to the user and recorded, never silent.

A dream's ``prompt_syntax`` "a1111" reads any length in 75-token chunks (a1111_prompt.py), so for
it nothing is cut.
"""

from __future__ import annotations

import logging
import re

from .clip_vocab import byte_decoder

log = logging.getLogger(__name__)


def token_budget(tokenizer) -> int:
    """How many tokens of text fit (the tokenizer's ``model_max_length`` less the start and end markers)."""
    n = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if n > 100_000:  # "no limit" sentinel of some tokenizers
        return n
    return max(n - 2, 1)


def dropped_text(tokenizer, text: str) -> str:
    """The part of ``text`` the tokenizer cuts away ("" when it all fits), as the tokenizer spells it
    (CLIP lower-cases and normalises spaces)."""
    if not text:
        return ""
    tokens = tokenizer.tokenize(text)
    budget = token_budget(tokenizer)
    if len(tokens) <= budget:
        return ""
    return _spell(tokens[budget:])


def _spell(tokens: list[str]) -> str:
    """BPE tokens back to text (word ends ``</w>`` become spaces); a token that is not byte-level
    BPE is kept as it is."""
    table = byte_decoder()
    words = []
    for tok in tokens:
        tok = tok.replace("</w>", " ")
        if all(c in table or c == " " for c in tok):
            words.append(bytes(32 if c == " " else table[c] for c in tok).decode("utf-8", errors="replace"))
        else:
            words.append(tok.replace("\u2581", " "))
    text = re.sub(r"\s+", " ", "".join(words)).strip()
    return re.sub(r" ([,.;:!?)])", r"\1", text)


def kept_text(tokenizer, text: str) -> str:
    """The part of ``text`` the encoder reads, spelled as :func:`dropped_text` spells."""
    return _spell(tokenizer.tokenize(text)[: token_budget(tokenizer)]) if text else ""


def survives(tokenizer, text: str, word: str) -> bool:
    """Whether ``word`` (a trigger word) is wholly inside the part of ``text`` the encoder reads."""
    if not word.strip():
        return True
    want = _spell(tokenizer.tokenize(word)).lower()
    return want in kept_text(tokenizer, text).lower()


def fits(tokenizer, text: str) -> bool:
    return not dropped_text(tokenizer, text)


def cut_notice(what: str, dropped: str, budget: int) -> str:
    """One sentence naming what was cut (the same wording everywhere)."""
    shown = dropped if len(dropped) <= 200 else f"{dropped[:80]} ... {dropped[-110:]}"  # the end matters most
    return (f"The {what} is longer than the text encoder reads ({budget} tokens); these words were dropped: "
            f"\"{shown}\".")


def check_prompts(tokenizer, prompts: dict[str, str], syntax: str = "plain") -> tuple[dict[str, str], list[str]]:
    """``{label: text}`` -> (``{label: dropped}`` for the texts that are cut, one notice per cut text).

    Each notice is also logged as a warning. ``syntax`` "a1111" cuts nothing: both are empty.
    """
    cut: dict[str, str] = {}
    notes: list[str] = []
    if syntax == "a1111":  # A1111 encodes a long prompt in chunks of 75 tokens: every word is read
        return cut, notes
    budget = token_budget(tokenizer)
    for label, text in prompts.items():
        d = dropped_text(tokenizer, text or "")
        if d:
            cut[label] = d
            notes.append(cut_notice(label, d, budget))
            log.warning(notes[-1])
    return cut, notes
