"""Export a checkpoint: a diffusers folder, a single LDM file, LoRA files, TI embeddings, a model card.

Every export starts from the checkpoint loaded as a model (its base completed, LoRA merged), so
the diffusers folder (fp32, plus an fp16 variant: export_folder.py) and the single file (fp16) hold
the weights the validation grid showed. LoRA runs also export their adapters un-merged: the diffusers/peft layout and kohya's
``lora_unet_…``/``lora_te_…`` layout with ``.alpha``; pivotal runs their embeddings as A1111/kohya's
``emb_params`` in ``<run>_emb.safetensors``, the name A1111/Forge and ComfyUI give the trigger. Every
file and folder gets the modes the umask gives any other program's (dreamy/atomic.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write, output_error
from ..errors import ExportError
from ..layout import CHECKPOINT_FILE
from ..layout import checkpoints as list_checkpoints
from ..models import a1111_hash, safetensors_file
from ..models.checkpoints import PART_FILES, damage, read_meta
from ..models.sources import load_model
from ..paths import check_tree
from .export_folder import export_diffusers, text_encoder_key
from .model_card import model_card

FORMATS = ("diffusers", "single-file", "lora", "card")


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


def _kohya_name(prefix: str, module_path: str) -> str:
    return f"{prefix}_{module_path.replace('.', '_')}"


def lora_files(step: Path, meta: dict[str, Any], out: Path, name: str) -> dict[str, Path]:
    """The adapters of a LoRA/pivotal checkpoint in diffusers and kohya layouts, plus TI embeddings."""
    from safetensors.torch import load_file

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
            path = text_encoder_key(path) if prefix == "text_encoder" else path
            # diffusers assumes alpha == rank when a file names none: bake alpha/rank into B
            diffusers_sd[f"{prefix}.{path}.lora_A.weight"] = a
            diffusers_sd[f"{prefix}.{path}.lora_B.weight"] = (b.float() * (alpha / rank)).to(b.dtype)
            k = _kohya_name(kohya, path)
            kohya_sd[f"{k}.lora_down.weight"] = a
            kohya_sd[f"{k}.lora_up.weight"] = b
            kohya_sd[f"{k}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    files = {"lora_diffusers": out / "pytorch_lora_weights.safetensors", "lora_kohya": out / f"{name}_lora.safetensors"}
    _save_atomic(diffusers_sd, files["lora_diffusers"], {"format": "pt"})
    _save_atomic(kohya_sd, files["lora_kohya"], {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
                                                 "ss_base_model_version": "sd_v1"})
    files.update(embedding_file(step, meta, out, name))
    return files


def embedding_name(run: str) -> str:
    """What a pivotal run's embedding is called, in lower case: diffusers registers a non-special
    token it matches after CLIP's lower-casing, so a capital would never match it."""
    return f"{run}_emb".lower()


def embedding_file(step: Path, meta: dict[str, Any], out: Path, run: str) -> dict[str, Path]:
    """A pivotal run's new token embeddings as ``<run>_emb.safetensors``: {"emb_params": [n, 768]}.

    One tensor under ``emb_params`` (what kohya writes and A1111 reads, as any single-key file) is
    what every consumer takes: A1111/Forge name it after the file, ComfyUI reads it as
    ``embedding:<name>``, diffusers' ``load_textual_inversion(file, token=<name>)`` gives <name> its
    n vectors. The order of the rows is the order of the tokens (``<s0>``, ``<s1>``...)."""
    if "embeddings" not in meta.get("parts", []):
        return {}
    from safetensors.torch import load_file

    emb = load_file(str(step / PART_FILES["embeddings"]))["clip_l"]
    path = out / f"{embedding_name(run)}.safetensors"
    _save_atomic({"emb_params": emb}, path, {"format": "pt"})
    return {"embeddings": path}


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # byte-deterministic (sorted metadata): the file hash Civitai shows for a LoRA is the same on every export
    safetensors_file.write(path, tensors, metadata)


def export(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    formats: tuple[str, ...] | list[str] | None = None,
    dtype: torch.dtype = torch.float16,
    *,
    step: int | None = None,
) -> dict[str, Path]:
    """Export a checkpoint (a step folder, or a run folder: its checkpoint at ``step``, else its newest)
    into ``out_dir``.

    Default ``out_dir``: ``models/<run>/export/step-XXXX/``. Returns {what: path}, every file or folder
    written. Formats: ``diffusers`` (folder ``diffusers/``: fp32 weights plus a ``dtype`` variant,
    ``*.fp16.safetensors`` by default), ``single-file`` (``<run>.safetensors``, LDM layout; a pivotal
    run's also writes its embedding file), ``lora`` (LoRA/pivotal runs:
    ``pytorch_lora_weights.safetensors`` for diffusers, kohya's ``<run>_lora.safetensors`` for
    A1111/Forge/ComfyUI/kohya, and pivotal runs' ``<run>_emb.safetensors``, its name in lower case),
    ``card`` (``README.md``, and ``validation_grid``: the run's validation grid beside it, when there is
    one). ``dtype`` is the single file's and the folder's variant's. ``formats`` None: ``diffusers``,
    ``single-file`` and ``card``; an SDXL run's: ``lora`` and ``card``.

    An SDXL run (LoRA or pivotal) exports adapters over its base (``sdxl_exports.py``): ``lora`` writes kohya's
    SDXL LoRA (``lora_unet_`` / ``lora_te1_`` / ``lora_te2_``), the diffusers LoRA and, for pivotal runs, the
    ``clip_l`` / ``clip_g`` embeddings file; it has no ``diffusers`` or ``single-file`` form (ExportError).
    """
    unknown = [f for f in formats or () if f not in FORMATS]
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
    sdxl = meta.get("arch") == "sdxl"
    if formats is None:
        formats = ("lora", "card") if sdxl else ("diffusers", "single-file", "card")
    if sdxl and {"diffusers", "single-file"} & set(formats):
        raise ExportError(f"Run '{name}' trained SDXL adapters: export 'lora' (kohya and diffusers LoRA files and the "
                          "clip_l/clip_g embeddings) and 'card'; a merged diffusers folder or single file is not made "
                          "for SDXL.")
    out = Path(out_dir) if out_dir is not None else folder.parent.parent / "export" / folder.name
    files: dict[str, Path] = {}
    model_hash = None
    if "diffusers" in formats or "single-file" in formats:
        model = load_model(str(folder), device="cpu", precision="fp32")
        if "diffusers" in formats:
            files["diffusers"] = export_diffusers(model, out / "diffusers", dtype)
        if "single-file" in formats:
            files["single_file"] = a1111_hash.write_single_file(out / f"{name}.safetensors", model, meta, dtype)
        model_hash = a1111_hash.record_export(folder, model, meta, files, dtype)  # one Model hash for every form
    if "lora" in formats and sdxl:
        from .sdxl_exports import sdxl_lora_files

        files.update(sdxl_lora_files(folder, meta, out, name, embedding_name(name)))
    elif "lora" in formats:
        files.update(lora_files(folder, meta, out, name))
    elif "single_file" in files:  # a pivotal single file keeps CLIP's vocabulary: the trigger is the embedding
        files.update(embedding_file(folder, meta, out, name))
    if "card" in formats:
        grid_src = folder.parent.parent / "validation" / "grid.png"
        grid = None
        if grid_src.is_file():
            grid = atomic_write(out / "validation-grid.png", lambda f: f.write(grid_src.read_bytes()))
        files["card"] = model_card(folder, meta, out, grid, dict(files), model_hash)
        if grid is not None:
            files["validation_grid"] = grid
    return files
