"""The model card's SDXL parts: the trigger per consumer and "How to use" for an SDXL LoRA / pivotal run.

An SDXL style ships as adapters over its base (``sdxl_exports.py``). The trigger word of a pivotal run
is learned as new tokens in both text encoders, so every consumer writes the embedding's name where
the captions had the trigger: A1111/Forge name an embedding after its file, ComfyUI as
``embedding:NAME``, Dreamy's ``--embedding FILE`` and diffusers' ``load_textual_inversion(…, token=NAME)``
(once with ``clip_l`` for ``text_encoder``, once with ``clip_g`` for ``text_encoder_2``) expand NAME into
one token per vector, as the advanced Dreambooth script's own card does with ``<s0><s1>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SDXL_LICENSE = "openrail++"  # SDXL base 1.0's licence (CreativeML Open RAIL++-M)
SDXL_ROLES = {
    "lora_kohya": "LoRA, kohya's SDXL layout (`lora_unet_`, `lora_te1_`, `lora_te2_`, with `.alpha`): A1111/Forge, "
                  "ComfyUI, kohya sd-scripts, Dreamy's `--lora`",
    "lora_diffusers": "LoRA, diffusers layout: `StableDiffusionXLPipeline.load_lora_weights`",
    "embeddings": "textual-inversion embedding for both SDXL text encoders (`clip_l`, `clip_g`): A1111/Forge, "
                  "ComfyUI, diffusers' `load_textual_inversion`, Dreamy's `--embedding`",
}


def _swap(prompt: str, word: str, by: str) -> str:
    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", lambda _: by, prompt) if word else prompt


def _prompt(meta: dict[str, Any]) -> str:
    """The example prompt: the run's first validation prompt, else its instance prompt."""
    s = meta["recipe"]["settings"]
    lines = [p.strip() for p in str(s.get("validation_prompts", "")).splitlines() if p.strip()]
    return lines[0] if lines else s.get("instance_prompt", "")


def sdxl_trigger(meta: dict[str, Any], files: dict[str, Path]) -> tuple[str, str]:
    """(the card's ``instance_prompt``, its "Trigger phrase" line) for an SDXL run."""
    prompt, word, tokens = _prompt(meta), meta.get("trigger_word", ""), meta.get("tokens")
    if not tokens:
        return prompt, f"Trigger phrase: `{prompt}` (the trigger word `{word}` as the captions had it)."
    emb = files.get("embeddings")
    with_tokens = _swap(prompt, word, "".join(tokens))
    if emb is None:
        return with_tokens, (f"Trigger phrase: `{with_tokens}` (the new tokens {', '.join(tokens)} in both text "
                             f"encoders stand for `{word}`; export the 'lora' format for the embedding file).")
    named = _swap(prompt, word, emb.stem)
    return named, (f"Trigger phrase: `{named}`: write the embedding's name `{emb.stem}` where the captions had "
                   f"`{word}` (its {len(tokens)} vectors per text encoder were learned in place of `{word}`); in "
                   f"ComfyUI `embedding:{emb.stem}`. Load `{emb.name}` as an embedding *and* the LoRA: the style is "
                   "both.")


def sdxl_usage(meta: dict[str, Any], files: dict[str, Path], base_id: str | None) -> list[str]:
    """The "How to use" section of an SDXL run's card."""
    prompt, word = _prompt(meta), meta.get("trigger_word", "")
    emb, kohya, peft = (files.get(k) for k in ("embeddings", "lora_kohya", "lora_diffusers"))
    named = _swap(prompt, word, emb.stem) if emb else prompt
    base = base_id or "path/to/the/base"
    preset = meta["recipe"].get("preset", "")
    out = ["## How to use", "", f"Over the SDXL base the run was trained on (`{base}`).", ""]
    if kohya:
        lora_tag = f"<lora:{kohya.stem}:1>"
        a1111 = [f"Copy `{kohya.name}` to `models/Lora/` and add `{lora_tag}` to the prompt."]
        comfy = [f"Copy `{kohya.name}` to `models/loras/` and apply it with *Load LoRA* (strength 1.0)."]
        if emb:
            a1111.append(f"Copy `{emb.name}` to `embeddings/`; A1111/Forge names it after its file: `{emb.stem}`.")
            comfy.append(f"Copy `{emb.name}` to `models/embeddings/`.")
        comfy_prompt = _swap(prompt, word, f"embedding:{emb.stem}") if emb else prompt
        out += ["### A1111 / Forge", "", *[f"- {x}" for x in a1111], f"- Prompt: `{lora_tag} {named}`", "",
                "### ComfyUI", "", *[f"- {x}" for x in comfy], f"- Prompt: `{comfy_prompt}`", ""]
        dreamy = [f"--lora {kohya.name}"] + ([f"--embedding {emb.name}"] if emb else [])
        out += ["### Dreamy", "", "```sh", f"python -m dreamy dream --model {base} {' '.join(dreamy)} --preset {preset} "
                f"--prompt {json.dumps(named)} --seeds 0-3 --out dreams", "```", ""]
    if peft:
        code = ["from diffusers import StableDiffusionXLPipeline", "",
                f"pipe = StableDiffusionXLPipeline.from_pretrained({json.dumps(base)})",
                f'pipe.load_lora_weights(".", weight_name="{peft.name}")']
        if emb:
            code = ["from safetensors.torch import load_file", *code,
                    f'state = load_file("{emb.name}")',
                    f'pipe.load_textual_inversion(state["clip_l"], token="{emb.stem}", text_encoder=pipe.text_encoder, '
                    "tokenizer=pipe.tokenizer)",
                    f'pipe.load_textual_inversion(state["clip_g"], token="{emb.stem}", '
                    "text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)"]
        code.append(f"image = pipe({json.dumps(named)}).images[0]")
        out += ["### diffusers", "", "```python", *code, "```", ""]
    return out
