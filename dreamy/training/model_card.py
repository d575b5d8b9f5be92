"""The export's model card: README.md with Hub-valid front matter, the exact recipe, and for each
exported file which tool reads it and how (A1111/Forge, ComfyUI, kohya sd-scripts, diffusers).

``base_model`` is written only when it is a Hugging Face Hub id (the Hub rejects a card whose
``base_model`` is a label or a local path); a base from elsewhere is named in the body with its sha256.
A pivotal run's trigger is spelled per consumer: the new tokens (``<s0><s1>``) where the exported
tokenizer has them (Dreamy, the diffusers folder), the embedding's name elsewhere, since A1111/Forge
and ComfyUI name an embedding after its file and diffusers' ``load_textual_inversion(token=NAME)``
expands NAME into one token per vector.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .corridor_report import card_section

SD15_LICENSE = "creativeml-openrail-m"


def base_license(base: dict[str, Any]) -> str:
    """The base model's licence from its own card when there is one; SD1.x's OpenRAIL-M otherwise."""
    src = Path(str(base.get("source", "")))
    card = src / "README.md" if src.is_dir() else None
    if card is not None and card.is_file():
        m = re.search(r"^---\s*$(.*?)^---\s*$", card.read_text(encoding="utf-8", errors="replace"), re.S | re.M)
        lic = re.search(r"^license:\s*(\S+)\s*$", m.group(1), re.M) if m else None
        if lic:
            return lic.group(1)
    return SD15_LICENSE


def _valid_repo_id(repo_id: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return "/" in repo_id  # a model id is owner/name


def hub_id(base: dict[str, Any]) -> str | None:
    """The base's Hub id: its source when it came from the Hub, or when it is a folder of the Hub's
    cache (``…/models--owner--name/snapshots/<rev>``); None otherwise."""
    source = str(base.get("source", ""))
    if base.get("kind") == "hub":
        return source if _valid_repo_id(source) else None
    if base.get("kind") == "folder":
        m = re.search(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$", source.replace("\\", "/"))
        if m and _valid_repo_id(f"{m.group(1)}/{m.group(2)}"):
            return f"{m.group(1)}/{m.group(2)}"
    return None


def _swap(prompt: str, word: str, by: str) -> str:
    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", lambda _: by, prompt) if word else prompt


# What each exported file is, and which tools read it (the card's "Files" list).
FILE_ROLES = {
    "diffusers": "diffusers folder: fp32 weights plus an fp16 variant (`variant=\"fp16\"`), SD1.5's layout; "
                 "diffusers (transformers 4.x or 5.x), kohya sd-scripts",
    "single_file": "one file, LDM layout (fp16): A1111/Forge, ComfyUI, kohya sd-scripts, diffusers' `from_single_file`",
    "lora_kohya": "LoRA, kohya layout: A1111/Forge, ComfyUI, kohya sd-scripts",
    "lora_diffusers": "LoRA, diffusers layout: diffusers' `load_lora_weights` only",
    "embeddings": "textual-inversion embedding (`emb_params`): A1111/Forge, ComfyUI, diffusers' `load_textual_inversion`",
    "validation_grid": "the validation grid",
}


def _diffusers_blocks(files: dict[str, Path], base_id: str | None, prompt: str, named: str) -> list[list[str]]:
    """The diffusers examples: the exported folder; the base plus the adapters; the single file."""
    single, peft, emb, folder = (files.get(k) for k in ("single_file", "lora_diffusers", "embeddings", "diffusers"))
    head = ["from diffusers import StableDiffusionPipeline", ""]
    blocks = []
    if folder:
        blocks.append(["import torch", *head,
                       'pipe = StableDiffusionPipeline.from_pretrained("diffusers")  # fp32; or, on a GPU:',
                       '# pipe = StableDiffusionPipeline.from_pretrained("diffusers", variant="fp16", '
                       'torch_dtype=torch.float16).to("cuda")',
                       f"image = pipe({json.dumps(prompt)}).images[0]"])
    ti = [f'pipe.load_textual_inversion("{emb.name}", token="{emb.stem}")'] if emb else []
    if peft:
        base = json.dumps(base_id) + ")" if base_id else '"path/to/the/base")  # the base model named above'
        blocks.append([*head, f"pipe = StableDiffusionPipeline.from_pretrained({base}",
                       f'pipe.load_lora_weights(".", weight_name="{peft.name}")', *ti,
                       f"image = pipe({json.dumps(named)}).images[0]"])
    elif single and not folder:
        blocks.append([*head, f'pipe = StableDiffusionPipeline.from_single_file("{single.name}")', *ti,
                       f"image = pipe({json.dumps(named)}).images[0]"])
    return blocks


def _usage(meta: dict[str, Any], files: dict[str, Path], base_id: str | None) -> list[str]:
    """The "How to use" section: per consumer, the files it reads and the exact prompt."""
    s = meta["recipe"]["settings"]
    prompt, word, tokens = s.get("instance_prompt", ""), meta.get("trigger_word", ""), meta.get("tokens")
    emb = files.get("embeddings")
    named = _swap(prompt, word, emb.stem) if emb else prompt  # the embedding's name in the prompt
    comfy = _swap(prompt, word, f"embedding:{emb.stem}") if emb else prompt
    single, kohya, peft, folder = (files.get(k) for k in ("single_file", "lora_kohya", "lora_diffusers", "diffusers"))
    out = ["## How to use", ""]
    if kohya or peft:
        out += [f"Two LoRA files hold the same adapters: `{kohya.name if kohya else '<run>_lora.safetensors'}` "
                "(kohya layout) is the one for A1111/Forge, ComfyUI and kohya sd-scripts; "
                "`pytorch_lora_weights.safetensors` (diffusers layout) is for diffusers' `load_lora_weights` only: "
                "A1111 and ComfyUI do not read its keys.", ""]
    if single and kohya:
        out += [f"`{single.name}` already has the LoRA merged in: use it *or* the base model plus the LoRA file, "
                "never both.", ""]
    a1111, comfyui, ks = [], [], []
    if single:
        a1111.append(f"Copy `{single.name}` to `models/Stable-diffusion/` and pick it as the checkpoint.")
        comfyui.append(f"Copy `{single.name}` to `models/checkpoints/` and load it with *Load Checkpoint*.")
        ks.append(f"`--pretrained_model_name_or_path {single.name}` (or the `diffusers/` folder) to train further.")
    if kohya:
        alt = "Or, over the base checkpoint: copy" if single else "Over the base checkpoint: copy"
        a1111.append(f"{alt} `{kohya.name}` to `models/Lora/` and add `<lora:{kohya.stem}:1>` to the prompt.")
        comfyui.append(f"{alt} `{kohya.name}` to `models/loras/` and apply it with *Load LoRA* (strength 1.0).")
        ks.append(f"`{kohya.name}` is a `networks.lora` file: `--network_weights {kohya.name}` continues it, "
                  f"`networks/merge_lora.py --sd_model <base> --save_to merged.safetensors --models {kohya.name} "
                  "--ratios 1` merges it into the base.")
    if emb:
        a1111.append(f"Copy `{emb.name}` to `embeddings/`; A1111/Forge names it after its file: `{emb.stem}`.")
        comfyui.append(f"Copy `{emb.name}` to `models/embeddings/`; ComfyUI calls it `embedding:{emb.stem}`.")
    for title, steps, text in (("A1111 / Forge", a1111, named), ("ComfyUI", comfyui, comfy)):
        if steps:
            out += [f"### {title}", "", *[f"- {x}" for x in steps], f"- Prompt: `{text}`", ""]
    if ks:
        out += ["### kohya sd-scripts", "", *[f"- {x}" for x in ks], ""]
    with_tokens = _swap(prompt, word, "".join(tokens)) if tokens else prompt
    blocks = _diffusers_blocks(files, base_id, with_tokens, named)
    if blocks:
        out += ["### diffusers", ""]
        for block in blocks:
            out += ["```python", *block, "```", ""]
    if folder and tokens:
        out += [f"The `diffusers/` folder's tokenizer has the new tokens {', '.join(tokens)}; the single file "
                "keeps CLIP's own vocabulary, so it needs the embedding file.", ""]
    return out


def trigger_phrases(meta: dict[str, Any], files: dict[str, Path]) -> tuple[str, str]:
    """(the card's ``instance_prompt``, its "Trigger phrase" line)."""
    prompt, word, tokens = meta["recipe"]["settings"].get("instance_prompt", ""), meta.get("trigger_word", ""), meta.get("tokens")
    if not tokens:
        return prompt, f"Trigger phrase: `{prompt}`"
    with_tokens = _swap(prompt, word, "".join(tokens))
    emb = files.get("embeddings")
    if emb is None:
        return with_tokens, (f"Trigger phrase: `{with_tokens}` (the new tokens {', '.join(tokens)} stand for `{word}`; "
                             "export the 'lora' format for the embedding file other tools need)")
    named = _swap(prompt, word, emb.stem)
    return named, (f"Trigger phrase: `{named}`: the embedding `{emb.name}` ({len(tokens)} vectors, learned in place "
                   f"of `{word}`) under its file's name; in ComfyUI `embedding:{emb.stem}`; with Dreamy or the "
                   f"`diffusers/` folder, `{with_tokens}` (its tokenizer has {', '.join(tokens)}).")


_OPTIMIZERS = {"adamw8bit": "AdamW 8-bit (bitsandbytes)", "adamw": "AdamW (torch)", "prodigy": "Prodigy"}
_MODES = {"full": "full fine-tune", "prior": "full fine-tune with prior preservation", "lora": "LoRA",
          "pivotal": "pivotal tuning (new token embeddings + UNet LoRA)"}


def _cell(value: Any) -> str:
    """A Markdown table cell: one line, ``|`` escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _run_record(step: Path) -> dict[str, Any]:
    """``models/<run>/run.json`` of the checkpoint ``step`` (``<run>/checkpoints/step-N``), or {}."""
    try:
        record = json.loads((Path(step).parent.parent / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _text_encoder(s: dict[str, Any], mode: str, sdxl: bool = False) -> str:
    """What of the text encoder trained, at the lr it really had: new tokens (pivotal) and SDXL's
    text-encoder LoRA at ``text_encoder_lr`` (modes.py, sdxl_modes.py); SD 1.5's text-encoder LoRA at
    ``learning_rate``, in the UNet's optimizer group (modes.py); Prodigy gives every group
    ``learning_rate`` as its multiplier (0 stays 0: optim.py)."""
    if mode == "pivotal":
        return (f"only {s.get('num_new_tokens')} new token embedding(s) for `{s.get('trigger_word')}`, at "
                f"{_lr(s, 'text_encoder_lr')}, for the first {s.get('ti_fraction'):g} of the steps, then frozen")
    if mode == "lora":
        key = "text_encoder_lr" if sdxl else "learning_rate"  # SD 1.5: the UNet's lr (its recorded behaviour)
        return f"yes, a LoRA at {_lr(s, key)}" if s.get("lora_text_encoder") else "no"
    return "yes (full)" if s.get("train_text_encoder") else "no"


def _lr(s: dict[str, Any], key: str) -> str:
    """A group's lr as the optimizer used it: ``lr 0.0002 (text_encoder_lr)``."""
    value = s.get(key)
    if s.get("optimizer") == "prodigy" and key != "learning_rate" and value:
        return f"lr {s.get('learning_rate'):g} (Prodigy's multiplier, learning_rate)"
    return f"lr {value:g} ({key})" if isinstance(value, int | float) else f"lr ? ({key})"


def training_rows(step: Path, meta: dict[str, Any]) -> list[tuple[str, str]]:
    """The "Training" section's (setting, value) rows, as the run trained up to this checkpoint: the
    recipe from the checkpoint's own record ``meta`` (else ``run.json``'s), the base and the photos with
    their captions from its ``run.json`` where there is one, else from ``meta``. Values are the recipe's
    (the optimizer as the recipe names it)."""
    run = _run_record(step)
    # the checkpoint's own recipe first: a resume that raised max_train_steps (or changed any setting)
    # records it there, while run.json keeps the recipe the run started with
    recipe = meta["recipe"] if isinstance(meta.get("recipe"), dict) else run.get("recipe")
    s, base, mode = recipe["settings"], run.get("base") or meta["base"], meta.get("mode", recipe["settings"].get("mode"))
    photos = run.get("photos") if isinstance(run.get("photos"), list) else []
    processes = int(run.get("processes", 1) or 1)
    batch, accum = s["train_batch_size"], s["gradient_accumulation_steps"]
    lr = f"{s['learning_rate']:g}, {s['lr_scheduler']}"
    if s["lr_scheduler"] != "constant" and s.get("lr_warmup_steps"):
        lr += f" ({s['lr_warmup_steps']} warm-up steps)"
    if s["optimizer"] == "prodigy":
        lr += " (Prodigy's multiplier: it estimates the step size itself)"
    both = meta.get("arch") == "sdxl" and (mode == "pivotal" or bool(s.get("lora_text_encoder")))
    rows = [
        ("Mode", f"Dreambooth, {_MODES.get(mode, mode)}"),
        ("Base model", f"`{base.get('label', '?')}`, sha256 `{base.get('sha256', '?')}`"),
        ("Learning rate", lr),
        ("Steps", f"{s['max_train_steps']} (this checkpoint: step {meta.get('step', '?')})"),
        ("Batch", f"{batch} image(s) x {accum} accumulation step(s)" + (f" x {processes} processes" if processes > 1
                                                                        else "") + f" = {batch * accum * processes}"),
        ("Optimizer", f"{_OPTIMIZERS.get(s['optimizer'], s['optimizer'])}, betas ({s['adam_beta1']:g}, "
                      f"{s['adam_beta2']:g}), weight decay {s['weight_decay']:g}"),
        ("Resolution", f"{s['resolution']} x {s['resolution']}, {s.get('crop', 'center')} crop"),
        ("Mixed precision", s.get("mixed_precision", "?")),
        ("Text encoder trained", _text_encoder(s, mode, meta.get("arch") == "sdxl") + (" (both SDXL text encoders: clip_l and clip_g)" if both
                                                           else "")),
    ]
    if mode in ("lora", "pivotal"):
        rows.append(("LoRA", f"rank {s['lora_rank']}, alpha {s['lora_alpha']:g}"))
    if s.get("prior_preservation"):
        made = (f"from `{s['class_images_dir']}`" if s.get("class_images_dir") else
                f"generated by the base with the prompt `{s.get('class_image_prompt') or s['class_prompt']}`"
                + (f", negative `{s['class_negative_prompt']}`" if s.get("class_negative_prompt") else "")
                + f", CFG {s.get('class_guidance'):g}, {s.get('class_steps')} steps")
        rows.append(("Prior preservation", f"yes: class prompt `{s['class_prompt']}`, {s['num_class_images']} class "
                                           f"images {made}, prior loss weight {s['prior_loss_weight']:g}"))
    else:
        rows.append(("Prior preservation", "no"))
    if s.get("captions") == "files":
        files = sum(1 for p in photos if isinstance(p, dict) and p.get("caption_file"))
        captions = (f"one caption file per image ({files} of {len(photos)} had one; the others the instance "
                    f"prompt), trigger `{s.get('trigger_word')}` put in")
    else:
        captions = f"the instance prompt `{s['instance_prompt']}` for every image"
    rows.append(("Captions", captions))
    if photos:
        rows.append(("Training images", str(len(photos))))
    return rows


def training_section(step: Path, meta: dict[str, Any]) -> list[str]:
    """The card's "Training" section: a two-column table of :func:`training_rows`."""
    return ["## Training", "", "| setting | value |", "|---|---|",
            *[f"| {name} | {_cell(value)} |" for name, value in training_rows(step, meta)], ""]


def model_card(step: Path, meta: dict[str, Any], out: Path, grid: Path | None, files: dict[str, Path],
               model_hash: str | None = None) -> Path:
    """README.md with YAML front matter (licence, base, tags, trigger), how to use each file in each
    tool, the exact recipe and the validation grid. ``model_hash``: the sha256 of the single-file form
    of these weights (its first 10 hex digits are A1111's and Civitai's "Model hash"), when known.
    Raises OutputError when it cannot be written."""
    recipe = meta["recipe"]
    s = recipe["settings"]
    base = meta["base"]
    base_id = hub_id(base)
    sdxl = meta.get("arch") == "sdxl"
    if sdxl:
        from .sdxl_card import SDXL_LICENSE, SDXL_ROLES, sdxl_trigger, sdxl_usage

    instance, trigger_line = sdxl_trigger(meta, files) if sdxl else trigger_phrases(meta, files)
    tags = ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "dreambooth", "dreamy"]
    if sdxl:
        tags.insert(2, "stable-diffusion-xl")
    if meta["mode"] in ("lora", "pivotal"):
        tags += ["lora"] + (["textual-inversion", "pivotal-tuning"] if meta["mode"] == "pivotal" else [])
    front = [
        "---",
        f"license: {SDXL_LICENSE if sdxl and base_license(base) == SD15_LICENSE else base_license(base)}",
        *([f"base_model: {base_id}"] if base_id else []),
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags:",
        *[f"- {t}" for t in tags],
        f"instance_prompt: {json.dumps(instance)}",
        "inference: true",
        "---",
    ]
    where = f"the Hugging Face Hub model `{base_id}`" if base_id else "a base model not from the Hugging Face Hub"
    lines = [
        f"# {meta.get('run', step.parent.parent.name)} — step {meta['step']}",
        "",
        f"A Dreambooth {meta['mode']} fine-tune of `{base['label']}` made with Dreamy from preset "
        f"`{recipe['preset']}`, stopped at step {meta['step']} of {s['max_train_steps']}.",
        "",
        f"Base model: {where} (`{base['label']}`), sha256 `{base['sha256']}` (Dreamy's content hash of it).",
        "",
        trigger_line,
        "",
    ]
    if model_hash:
        lines += [f"Model hash (as A1111, Forge and Civitai show it): `{model_hash[:10]}` — the sha256 of this "
                  f"model's single `.safetensors` file is `{model_hash}`; pictures Dreamy makes from this "
                  "checkpoint, its diffusers folder or its single file record the same hash.", ""]
    lines += training_section(step, meta)
    if grid is not None:
        lines += ["## Validation grid (rows: checkpoints, columns: seeds)", "", f"![validation grid]({grid.name})", ""]
    lines += card_section(step)  # the corridor meter's table, when the run has one
    if files:
        roles = {**FILE_ROLES, **SDXL_ROLES} if sdxl else FILE_ROLES
        lines += ["## Files", ""] + [f"- `{p.name}{'/' if k == 'diffusers' else ''}`: {roles.get(k, k)}"
                                     for k, p in files.items()] + [""]
        lines += sdxl_usage(meta, files, base_id) if sdxl else _usage(meta, files, base_id)
    if recipe.get("unlocked"):
        lines += ["## Unlocked (changed) preset fields", "", "```json", json.dumps(recipe["unlocked"], indent=2), "```", ""]
    lines += ["## Recipe", "", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```", ""]
    return atomic_write_text(out / "README.md", "\n".join(front + lines))
