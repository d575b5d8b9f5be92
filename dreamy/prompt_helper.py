"""The word layer: one word -> a prompt in a style, written by a local chat model, and dreamed.

How (the maker's system: "love" gives two people hugging, in the learned style):

1. The chat: the preset's ``[word]`` table (``dreamy/recipes/words.py``) gives the system prompt and a
   few example exchanges (each example word as a user turn, its prompt as the assistant's answer),
   then the word as the last user turn; the model's own chat template renders it
   (``tokenizer.apply_chat_template(..., add_generation_prompt=True)``), so any transformers chat
   model works: Qwen2.5-Instruct (the default, ``Qwen/Qwen2.5-3B-Instruct``), Llama, Mistral ...
2. The answer: sampled with the table's settings (temperature, top-p, top-k; or greedy with
   ``do_sample = false``) from torch's generator seeded with ``seed`` inside a forked RNG state, so the
   same word, seed, model and device give the same prompt, other seeds other prompts (variety), and
   the caller's random state is untouched. Every sampling setting is passed explicitly, so the
   model's own ``generation_config`` defaults (Qwen's repetition penalty 1.05 ...) never creep in.
3. The cleaning: the first line with text, labels ("Prompt:", "1.", "- ") and quotes stripped, a
   final full stop dropped; then the table's ``trigger`` before it and ``suffix`` after it (each
   unless already there), joined with ", ".

The model must be on disk: a folder, or a hub id in the Hugging Face cache (or under ``models/``);
nothing is downloaded, and a missing model is one sentence naming what to download and how. Which
model: the caller's ``prompt_model``, else ``$DREAMY_PROMPT_MODEL``, else the preset's ``[word] model``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DreamyError, SourceError

DEFAULT_PRESET = "word-style"
MAX_WORD = 100  # characters; a word or a short phrase
MAX_PROMPT = 400  # characters kept of the model's answer
_GENERATE = threading.Lock()  # seeding torch's global generator + sampling is one step for one caller


@dataclass(frozen=True)
class WordPrompt:
    """A word's prompt and where it came from (what a dream records as ``runtime["word"]``).

    ``prompt``: the prompt to dream (trigger + the model's sentence + suffix); ``generated``: the model's
    answer, cleaned; ``prompt_model``: the model as named (hub id or folder); ``seed``: 0 .. 2**32-1;
    ``edited``: ``prompt`` was changed by hand from the model's (the studio's Word box), recorded only then."""

    word: str
    prompt: str
    generated: str
    prompt_model: str
    seed: int
    preset: str
    edited: bool = False

    def record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if not self.edited:  # the model's own prompt: the record as it always was
            del record["edited"]
        return record


def _word(word: Any) -> str:
    text = " ".join(str(word if word is not None else "").split())
    if not text:
        raise DreamyError("Give a word to grow a prompt from.")
    if len(text) > MAX_WORD:
        raise DreamyError(f"The word is {len(text)} characters long; give one word or a short phrase "
                          f"(at most {MAX_WORD}).")
    return text


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise DreamyError(f"The prompt seed must be a whole number from 0 to 4294967295, got {seed!r:.40}.")
    return seed


def find_prompt_model(source: str) -> str:
    """The folder or cached hub id that ``source`` names, checked to be on disk (nothing is downloaded).

    ``source``: a folder; a name under the models folder (``models/<source>`` or its last part, e.g.
    ``models/Qwen2.5-3B-Instruct``); or a hub id whose ``config.json`` is in the Hugging Face cache.
    Raises SourceError, one sentence naming what to download and how."""
    from huggingface_hub import try_to_load_from_cache

    from .layout import models_root

    source = str(source).strip()
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path)
    looks_like_id = re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
    for candidate in (models_root() / source, models_root() / source.rsplit("/", 1)[-1]):
        if looks_like_id and (candidate / "config.json").is_file():
            return str(candidate)
    if looks_like_id:
        try:
            cached = try_to_load_from_cache(source, "config.json")
        except Exception:  # noqa: BLE001 - a malformed id is "not here" too
            cached = None
        if isinstance(cached, str):
            return source
        raise SourceError(
            f"The prompt model '{source}' is not on this machine (Dreamy downloads nothing to write a prompt): "
            f"download it once with `hf download {source}` (Qwen2.5-3B-Instruct is about 6 GB), or put a "
            f"transformers chat model in {models_root() / source.rsplit('/', 1)[-1]}/, or name another with "
            "--prompt-model (Python: prompt_model=...).")
    raise SourceError(f"No chat model at '{source}': give a folder holding a transformers chat model (config.json, "
                      "weights, a tokenizer with a chat template) or a hub id in the Hugging Face cache.")


@functools.lru_cache(maxsize=2)
def load_prompt_model(source: str, device: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) for a chat model on disk (:func:`find_prompt_model`), loaded with transformers'
    ``AutoTokenizer`` / ``AutoModelForCausalLM`` offline, in eval mode: fp32 on the CPU, bf16 on CUDA
    (fp16 where bf16 is not supported), its generation config reduced to its special token ids. Kept for
    the next call (two models at most).
    Raises SourceError (one sentence) when it is missing, is no chat model or cannot be loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from .models.devices import pick_device

    where = find_prompt_model(source)
    dev = pick_device(device)
    dtype = torch.float32
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
        if not getattr(tokenizer, "chat_template", None):
            raise SourceError(f"The prompt model '{source}' is not a chat model (its tokenizer has no chat "
                              "template); use an instruct/chat model such as Qwen/Qwen2.5-3B-Instruct.")
        model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, dtype=dtype).to(dev).eval()
        # The [word] table decides how to sample: the model's own defaults (Qwen2.5's top_k 20, top_p 0.8,
        # repetition penalty 1.05 ...) would otherwise fill what the table leaves at transformers' default.
        ids = {k: getattr(model.generation_config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        model.generation_config = GenerationConfig(**{k: v for k, v in ids.items() if v is not None})
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - any loading failure is one sentence for the user
        raise SourceError(f"The prompt model '{source}' could not be loaded ({type(e).__name__}: {e!s:.120}); "
                          "give a complete transformers chat model (a folder or a cached hub id).") from None
    return tokenizer, model


def chat_messages(word: str, settings: Any) -> list[dict[str, str]]:
    """The chat for ``word``: the system prompt, each example as a user turn (its word) and an assistant
    turn (its prompt), then ``word`` as the user's turn. ``settings``: a WordSettings."""
    messages = [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []
    for example_word, example_prompt in settings.examples:
        messages += [{"role": "user", "content": example_word}, {"role": "assistant", "content": example_prompt}]
    return [*messages, {"role": "user", "content": word}]


def render_chat(tokenizer: Any, word: str, settings: Any) -> str:
    """The text the model reads: :func:`chat_messages` through the tokenizer's chat template, ending
    with the assistant's turn opened (``add_generation_prompt=True``)."""
    return tokenizer.apply_chat_template(chat_messages(word, settings), tokenize=False, add_generation_prompt=True)


_LABEL = re.compile(r"^(?:[-*•>]+\s*|\d+[.)]\s+)?(?:\**(?:image\s+)?(?:prompt|description|caption|answer|output|"
                    r"sentence)\**\s*:\s*)?", re.I)
_QUOTES = " \t\"'`*“”‘’«»"


def clean_answer(text: str) -> str:
    """The model's answer as one prompt line: its first line with text once a leading bullet, number or
    label ("Prompt:", "Description:" ...) and surrounding quotes are stripped; control characters and
    undecodable bytes dropped, white space collapsed,
    a final full stop dropped, at most 400 characters. "" when nothing is left."""
    for line in str(text).replace("\r", "\n").split("\n"):
        # control characters and undecodable bytes (U+FFFD) never reach a prompt or a PNG
        line = "".join(" " if c.isspace() else c for c in line
                       if c.isspace() or (unicodedata.category(c)[0] != "C" and c != "\ufffd"))
        line = _LABEL.sub("", line.strip(), count=1).strip(_QUOTES)
        line = " ".join(line.split()).rstrip(" .")
        if line:
            return line[:MAX_PROMPT].rstrip()
    return ""


def compose(generated: str, trigger: str, suffix: str) -> str:
    """``trigger, generated, suffix``: the trigger unless the text already starts with it, the suffix
    unless the text already holds it (case-insensitive); empty parts left out."""
    low = generated.lower()
    parts = [trigger] if trigger and not low.startswith(trigger.lower()) else []
    parts.append(generated)
    if suffix and suffix.lower() not in low:
        parts.append(suffix)
    return ", ".join(p for p in parts if p)


def generate_answer(tokenizer: Any, model: Any, word: str, settings: Any, seed: int) -> str:
    """The model's raw answer (special tokens dropped) to the chat for ``word``, sampled from torch's
    generator seeded with ``seed`` in a forked RNG state (the caller's state is restored)."""
    import torch
    from transformers import GenerationConfig

    inputs = tokenizer(render_chat(tokenizer, word, settings), return_tensors="pt", add_special_tokens=False)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    sampling = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k) \
        if settings.do_sample else dict(do_sample=False, temperature=1.0, top_p=1.0, top_k=50)  # neutral: greedy
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, repetition_penalty=settings.repetition_penalty,
                              eos_token_id=eos, pad_token_id=pad, **sampling)
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with _GENERATE, torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(**inputs, generation_config=config)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def word_to_prompt(word: str, preset: Any = DEFAULT_PRESET, prompt_model: str | None = None, seed: int = 0,
                   device: str | None = None) -> WordPrompt:
    """One word (or a short phrase, at most 100 characters) -> a :class:`WordPrompt`, written by a chat
    model with the ``[word]`` table of ``preset`` (a name, a path or a loaded Preset). See the module
    docstring for the chat, the seeding and the cleaning.

    ``prompt_model``: a folder or a hub id on disk (None: ``$DREAMY_PROMPT_MODEL``, else the preset's
    ``[word] model``); ``seed``: 0 .. 2**32-1; ``device``: None/"auto", "cpu", "cuda", ...
    Raises DreamyError (an empty or overlong word, a bad seed; the word is checked before any model is
    looked for), PresetError (the preset), SourceError (the model missing or not a chat model), and
    DreamyError when the model's answer holds no text (try another seed)."""
    from .recipes.presets import Preset, load_preset

    word, seed = _word(word), _seed(seed)
    p = preset if isinstance(preset, Preset) else load_preset(preset)
    w = p.word
    source = prompt_model or os.environ.get("DREAMY_PROMPT_MODEL") or w.model
    tokenizer, model = load_prompt_model(str(source), device)
    generated = clean_answer(generate_answer(tokenizer, model, word, w, seed))
    if not generated:
        raise DreamyError(f"The prompt model '{source}' answered '{word}' with no text (seed {seed}); try another "
                          "seed or model.")
    return WordPrompt(word, compose(generated, w.trigger, w.suffix), generated, str(source), seed, p.name)


def dream_word(word: str, model: Any, preset: Any = DEFAULT_PRESET, seeds: Any = "0", *,
               prompt_model: str | None = None, prompt_seed: int = 0, overrides: dict[str, Any] | None = None,
               unlock: Any = (), out_dir: str | Path | None = None, batch_size: int = 1, device: str | None = None,
               on_progress: Any = None, cancel: Any = None) -> tuple[WordPrompt, list[Any]]:
    """Word -> prompt (:func:`word_to_prompt`) -> one dream per seed with ``preset``.

    The word's prompt is the dream's ``prompt`` like any typed prompt: a preset that locks its prompt
    refuses it (LockedFieldError) unless ``unlock`` names it, and then records the change; the
    ``word-style`` preset leaves the prompt open for the word layer. Every picture's recipe records the
    word, the prompt model, the prompt seed and the prompt as ``runtime["word"]`` (:meth:`WordPrompt.record`);
    with ``out_dir`` each is saved as ``seedNNNNNN.png`` with that recipe, plus ``contact-sheet.png`` for
    several seeds. ``model``, ``seeds``, ``overrides``, ``batch_size``, ``on_progress``, ``cancel``: as
    ``dreamy.dream``. Returns (the WordPrompt, the DreamImages in seed order). Raises as both."""
    from .dreaming.contact_sheet import write_contact_sheet
    from .dreaming.dreams import SHEET_NAME, dream_iter, image_name
    from .png.metadata import save_png
    from .recipes.presets import Preset, load_preset

    p = preset if isinstance(preset, Preset) else load_preset(preset)
    wp = word_to_prompt(word, p, prompt_model, prompt_seed, device)
    out = Path(out_dir) if out_dir is not None else None
    results = []
    for image in dream_iter(model, p, seeds, overrides={**(overrides or {}), "prompt": wp.prompt}, unlock=unlock,
                            batch_size=batch_size, device=device, on_progress=on_progress, cancel=cancel):
        recipe = image.recipe.replace(runtime={**image.recipe.runtime, "word": wp.record()})
        path = save_png(image.image, out / image_name(recipe), recipe) if out is not None else None
        results.append(dataclasses.replace(image, recipe=recipe, path=path))
    if out is not None and len(results) > 1:
        write_contact_sheet(results, out / SHEET_NAME)
    return wp, results


def expand(word: str, model: str, max_new_tokens: int | None = None, seed: int = 0) -> str:
    """The studio's prompt helper: ``word_to_prompt(word, prompt_model=model, seed=seed).prompt`` with the
    word-style preset's ``[word]`` table (``max_new_tokens`` overriding its own)."""
    from .recipes.presets import load_preset

    word = _word(word)  # refused before any model is looked for
    p = load_preset(DEFAULT_PRESET)
    if max_new_tokens is not None:
        p = dataclasses.replace(p, word=dataclasses.replace(p.word, max_new_tokens=int(max_new_tokens)))
    return word_to_prompt(word, p, model, seed).prompt
