"""A preset's ``[word]`` table: how the word layer turns one word into a prompt with a chat model.

The table is data like the other tables (``dreamy/prompt_helper.py`` runs it): the chat model to use,
its system prompt, a few example exchanges (``examples = [{word = "love", prompt = "..."}, ...]``,
shown to the model as earlier turns of the chat), the trigger put before every prompt and the suffix
put after it, and the sampling settings. It has no locks: it decides which prompt is written, and a
preset's ``[dream]`` table still locks (or leaves open) the prompt a dream may use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PresetError
from .settings import _f, build

DEFAULT_MODEL = "Qwen/Qwen2.5-3B-Instruct"
DEFAULT_SYSTEM = ("You write prompts for an image generator. The user gives one word; answer with one short "
                  "sentence that describes a simple picture showing that word: one clear subject, concrete and "
                  "visual. Answer with the sentence only.")
MAX_EXAMPLES = 32


@dataclass(frozen=True)
class WordSettings:
    """The ``[word]`` table. Sampling follows transformers' ``generate`` (its parameter names)."""

    model: str = _f(DEFAULT_MODEL, doc="a local chat model: a folder, or a hub id in the Hugging Face cache")
    system_prompt: str = _f(DEFAULT_SYSTEM, doc="the chat's system message")
    examples: tuple = _f((), doc="example exchanges ((word, prompt) pairs), earlier turns of the chat")
    trigger: str = _f("", doc="put before every prompt (e.g. a style's trigger word), unless already there")
    suffix: str = _f("", doc="put after every prompt (e.g. 'white background'), unless already there")
    max_new_tokens: int = _f(60, range=(1, 512), doc="the longest answer, in tokens")
    do_sample: bool = _f(True, doc="sample (the seed picks one of many prompts); false: greedy, one prompt per word")
    temperature: float = _f(0.7, range=(0.01, 5.0))
    top_p: float = _f(0.9, range=(0.01, 1.0))
    top_k: int = _f(50, range=(0, 100_000), doc="0 turns top-k filtering off")
    repetition_penalty: float = _f(1.0, range=(1.0, 3.0))


def word_settings(table: Any, where: str) -> WordSettings:
    """A ``[word]`` table (a dict from TOML) -> WordSettings, every value checked; PresetError naming
    ``where`` and the key otherwise. ``examples`` must be a list of tables with a ``word`` and a
    ``prompt`` (non-empty strings), at most 32."""
    if not isinstance(table, dict):
        raise PresetError(f"{where}: 'word' must be a table ([word]).")
    values = dict(table)
    if "locked" in values:
        raise PresetError(f"{where}: [word] has no locks; it only decides which prompt is written "
                          "(lock the prompt in [dream]).")
    raw = values.pop("examples", [])
    if not isinstance(raw, list) or len(raw) > MAX_EXAMPLES:
        raise PresetError(f"{where}: 'examples' must be a list of at most {MAX_EXAMPLES} tables "
                          "{{word = \"...\", prompt = \"...\"}}.")
    examples = []
    for i, ex in enumerate(raw):
        ok = isinstance(ex, dict) and set(ex) == {"word", "prompt"} and \
            all(isinstance(ex[k], str) and ex[k].strip() and len(ex[k]) <= 1000 for k in ("word", "prompt"))
        if not ok:
            raise PresetError(f"{where}: examples[{i}] must be a table with exactly a 'word' and a 'prompt' "
                              f"(non-empty strings), got {ex!r:.80}.")
        examples.append((ex["word"], ex["prompt"]))
    settings = build(WordSettings, values, where)
    return WordSettings(**{**settings.__dict__, "examples": tuple(examples)})
