"""The optional prompt helper: one word -> a short, vague prompt, from a local transformers text model.

Configured with ``$DREAMY_PROMPT_MODEL`` (a local folder or a cached hub id); without one the
studio hides the helper. Nothing is downloaded: the model must already be on disk.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .errors import DreamyError

TEMPLATE = "Write a short, vague, evocative prompt for a dreamy photograph of {word}:"


@lru_cache(maxsize=1)
def _pipeline(model: str):
    from transformers import pipeline

    try:
        return pipeline("text-generation", model=model, model_kwargs={"local_files_only": True})
    except Exception as e:  # noqa: BLE001 - any loading failure is one sentence for the user
        raise DreamyError(f"The prompt model '{model}' could not be loaded ({type(e).__name__}); "
                          "set DREAMY_PROMPT_MODEL to a local text-generation model.") from None


def expand(word: str, model: str, max_new_tokens: int = 40, seed: int = 0) -> str:
    """A one-line prompt grown from ``word`` (seeded, so the same word gives the same prompt)."""
    word = " ".join(str(word).split())[:100]
    if not word:
        raise DreamyError("Give a word to grow a prompt from.")
    import torch

    torch.manual_seed(seed)
    pipe = _pipeline(model)
    prompt = TEMPLATE.format(word=word)
    out = pipe(prompt, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.9, return_full_text=False)
    text = re.sub(r"\s+", " ", out[0]["generated_text"]).strip().strip('"')
    return text.split("\n")[0][:300] or word
