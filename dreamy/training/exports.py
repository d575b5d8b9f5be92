"""Export a checkpoint: a diffusers folder, a single LDM file, LoRA files, TI embeddings, a model card.

Every export starts from the checkpoint loaded as a model (its base completed, LoRA merged), so
the diffusers folder and the single file hold the same weights the validation grid showed (in
fp16). LoRA runs also export their adapters un-merged: the diffusers/peft layout and kohya's
``lora_unet_…``/``lora_te_…`` layout with ``.alpha``; pivotal runs their embeddings as ``clip_l``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..layout import CHECKPOINT_FILE
from ..layout import checkpoints as list_checkpoints
from ..models.checkpoints import PART_FILES, damage, read_meta
from ..models.single_file import CONFIGS, save_single_file
from ..models.sources import load_model
from ..paths import check_tree
from .checkpoints import replace_dir

FORMATS = ("diffusers", "single-file", "lora", "card")
SD15_LICENSE = "creativeml-openrail-m"


def _resolve_checkpoint(checkpoint: str | os.PathLike, step: int | None = None) -> Path:
    """A step folder, or a run folder (its checkpoint at ``step``, else its newest)."""
    p = Path(checkpoint)
    if (p / "checkpoints").is_dir() or (p / "run.json").is_file():
        found = list_checkpoints(p)
        if step is not None:
            at_step = dict(found).get(step)
            if at_step is None:
                raise ExportError(f"Run '{p.name}' has no checkpoint at step {step}.")
            return at_step
        if not found:
            raise ExportError(f"Run '{p.name}' has no checkpoint to export yet.")
        return found[-1][1]
    if step is not None:
        raise ExportError(f"'{p}' is not a training run (models/<run>), so it has no step {step} to pick.")
    if not (p / CHECKPOINT_FILE).is_file():
        raise ExportError(f"'{p}' is neither a training run (models/<run>) nor one of its checkpoints.")
    return p


def _atomic_dir(final: Path):
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def export_diffusers(model: Any, out: Path, dtype: torch.dtype = torch.float16) -> Path:
    """A folder stock ``StableDiffusionPipeline.from_pretrained`` loads (no safety checker)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    scheduler = PNDMScheduler.from_pretrained(CONFIGS / "sd15", subfolder="scheduler")
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype)  # an export copy, never live training modules
    tmp = _atomic_dir(out)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        return replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}_{module_path.replace('.', '_')}"


def _text_path(path: str) -> str:
    """transformers >= 5.6 drops CLIP's ``text_model.`` wrapper; LoRA files keep the canonical name."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def lora_files(step: Path, meta: dict[str, Any], out: Path, name: str) -> dict[str, Path]:
    """The adapters of a LoRA/pivotal checkpoint in diffusers and kohya layouts, plus TI embeddings."""
    from safetensors.torch import load_file, save_file

    parts = {p: load_file(str(step / f)) for p, f in PART_FILES.items() if p in meta["parts"]}
    if "lora_unet" not in parts:
        raise ExportError(f"Checkpoint {step.name} is a {meta['mode']} fine-tune, not a LoRA; export "
                          "'diffusers' or 'single-file' instead.")
    rank, alpha = meta["lora_rank"], float(meta["lora_alpha"])
    diffusers_sd, kohya_sd = {}, {}
    for part, prefix, kohya in (("lora_unet", "unet", "lora_unet"), ("lora_text_encoder", "text_encoder", "lora_te")):
        for key, a in parts.get(part, {}).items():
            if not key.endswith(".lora_A.weight"):
                continue
            path = key[: -len(".lora_A.weight")]
            b = parts[part][f"{path}.lora_B.weight"]
            path = _text_path(path) if prefix == "text_encoder" else path
            # diffusers assumes alpha == rank when a file names none: bake alpha/rank into B
            diffusers_sd[f"{prefix}.{path}.lora_A.weight"] = a
            diffusers_sd[f"{prefix}.{path}.lora_B.weight"] = (b.float() * (alpha / rank)).to(b.dtype)
            k = _kohya_name(kohya, path)
            kohya_sd[f"{k}.lora_down.weight"] = a
            kohya_sd[f"{k}.lora_up.weight"] = b
            kohya_sd[f"{k}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    files = {"lora_diffusers": out / "pytorch_lora_weights.safetensors", "lora_kohya": out / f"{name}_lora.safetensors"}
    _save_atomic(save_file, diffusers_sd, files["lora_diffusers"], {"format": "pt"})
    _save_atomic(save_file, kohya_sd, files["lora_kohya"], {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                                                            "ss_base_model_version": "sd_v1"})
    if "embeddings" in parts:
        files["embeddings"] = out / f"{name}_emb.safetensors"
        _save_atomic(save_file, {"clip_l": parts["embeddings"]["clip_l"]}, files["embeddings"], {"format": "pt"})
    return files


def _save_atomic(save_file, tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def model_card(step: Path, meta: dict[str, Any], out: Path, grid: Path | None, files: dict[str, Path]) -> Path:
    """README.md with YAML front matter (licence, base, tags, trigger), the exact recipe and the grid."""
    recipe = meta["recipe"]
    s = recipe["settings"]
    base = meta["base"]
    trigger = s.get("instance_prompt", "")
    if meta.get("tokens"):
        trigger = re.sub(rf"(?<!\w){re.escape(meta.get('trigger_word', ''))}(?!\w)", "".join(meta["tokens"]), trigger)
    tags = ["stable-diffusion", "stable-diffusion-diffusers", "text-to-image", "dreambooth", "dreamy"]
    if meta["mode"] in ("lora", "pivotal"):
        tags += ["lora"] + (["textual-inversion", "pivotal-tuning"] if meta["mode"] == "pivotal" else [])
    base_model = base["source"] if base["kind"] == "hub" else base["label"]
    front = [
        "---",
        f"license: {base_license(base)}",
        f"base_model: {json.dumps(base_model)}",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags:",
        *[f"- {t}" for t in tags],
        f"instance_prompt: {json.dumps(trigger)}",
        "inference: true",
        "---",
    ]
    lines = [
        f"# {meta.get('run', step.parent.parent.name)} — step {meta['step']}",
        "",
        f"A Dreambooth {meta['mode']} fine-tune of `{base['label']}` (sha256 `{base['sha256'][:10]}`) made with "
        f"Dreamy from preset `{recipe['preset']}`, stopped at step {meta['step']} "
        f"of {s['max_train_steps']}.",
        "",
        f"Trigger phrase: `{trigger}`" + (f" (the new tokens {', '.join(meta['tokens'])} stand for "
                                           f"`{meta.get('trigger_word')}`)" if meta.get("tokens") else ""),
        "",
    ]
    if grid is not None:
        lines += ["## Validation grid (rows: checkpoints, columns: seeds)", "", f"![validation grid]({grid.name})", ""]
    if files:
        lines += ["## Files", ""] + [f"- `{p.name}`: {k}" for k, p in files.items()] + [""]
    if recipe.get("unlocked"):
        lines += ["## Unlocked (changed) preset fields", "", "```json", json.dumps(recipe["unlocked"], indent=2), "```", ""]
    lines += ["## Recipe", "", "```json", json.dumps(recipe, indent=2, sort_keys=True), "```", ""]
    path = out / "README.md"
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".README-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(front + lines))
    os.replace(tmp, path)
    return path


def export(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    formats: tuple[str, ...] | list[str] = ("diffusers", "single-file", "card"),
    dtype: torch.dtype = torch.float16,
    *,
    step: int | None = None,
) -> dict[str, Path]:
    """Export a checkpoint (a step folder, or a run folder: its checkpoint at ``step``, else its newest)
    into ``out_dir``.

    Default ``out_dir``: ``models/<run>/export/step-XXXX/``. Returns {what: path}, every file or folder
    written. Formats: ``diffusers`` (folder ``diffusers/``), ``single-file`` (``<run>.safetensors``, LDM
    layout), ``lora`` (LoRA/pivotal runs: ``pytorch_lora_weights.safetensors``, kohya
    ``<run>_lora.safetensors``, ``<run>_emb.safetensors``), ``card`` (``README.md``, and
    ``validation_grid``: the run's validation grid beside it, when there is one).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"Unknown export format '{unknown[0]}'; choose from {', '.join(FORMATS)}.")
    folder = _resolve_checkpoint(checkpoint, step)
    # what export reads (the checkpoint) and, by default, writes (export/) stays inside the run's folder
    check_tree(folder.parent.parent if out_dir is None else folder, [folder.parent.parent], "run folder")
    meta = read_meta(folder)
    hurt = damage(folder, resume=False, meta=meta, cached=True)
    if hurt is not None:
        raise ExportError(f"Checkpoint '{folder}' is damaged ({hurt}); export another checkpoint of the run.")
    name = meta.get("run") or folder.parent.parent.name
    out = Path(out_dir) if out_dir is not None else folder.parent.parent / "export" / folder.name
    files: dict[str, Path] = {}
    if "diffusers" in formats or "single-file" in formats:
        model = load_model(str(folder), device="cpu", precision="fp32")
        if "diffusers" in formats:
            files["diffusers"] = export_diffusers(model, out / "diffusers", dtype)
        if "single-file" in formats:
            meta_text = {"dreamy_recipe": json.dumps(meta["recipe"], sort_keys=True), "dreamy_step": str(meta["step"])}
            text = model.text_encoder.state_dict()
            if meta.get("tokens"):  # A1111 expects CLIP's own vocabulary; the new tokens ship as an embedding
                key = next(k for k in text if k.endswith("token_embedding.weight"))
                text[key] = text[key][: -len(meta["tokens"])]
            files["single_file"] = save_single_file(out / f"{name}.safetensors", unet=model.unet, vae=model.vae,
                                                    text_encoder=text, dtype=dtype, metadata=meta_text)
    if "lora" in formats:
        files.update(lora_files(folder, meta, out, name))
    if "card" in formats:
        grid_src = folder.parent.parent / "validation" / "grid.png"
        grid = None
        if grid_src.is_file():
            grid = out / "validation-grid.png"
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(grid_src, grid)
        files["card"] = model_card(folder, meta, out, grid, dict(files))
        if grid is not None:
            files["validation_grid"] = grid
    return files
