"""A1111's "Model hash" for whatever form of a model Dreamy loads, so an image names findable weights.

A1111 (and Civitai, which shows the same "AutoV2" hash) identifies a checkpoint by the first 10 hex
digits of the sha256 of its single file. A diffusers folder or a Train checkpoint has no such file,
so Dreamy uses the file it makes of the same weights: the single-file export. Then a picture dreamed
from a checkpoint, from its diffusers export or from its single-file export records one hash, the
one A1111 shows for that ``.safetensors`` file.

- A single file: its own sha256.
- A Train checkpoint: the sha256 of its single-file export as :func:`write_single_file` writes it
  (``export()``'s default fp16, byte-deterministic: models/safetensors_file.py). It is computed when
  the checkpoint is first loaded (from the checkpoint loaded on the CPU in fp32, as export does,
  so the LoRA merge rounds the same way) and kept in ``model_hash.json`` beside its marker.
- A diffusers folder written by ``export()``: the sha256 of the single file exported with it (or that
  it would have), kept in its ``model_hash.json``.

A record names the content hash of the folder it describes (``folder_sha256``) and counts only while
the folder still holds those files. Any other folder (a hub model, a plain diffusers folder) has no
single file Dreamy knows: its pictures carry no "Model hash" rather than one no file has; Dreamy's
own content hash stays in the recipe.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..errors import OutputError
from . import safetensors_file
from .hashing import file_sha256, folder_sha256

log = logging.getLogger(__name__)

RECORD_FILE = "model_hash.json"
RECORD_FORMAT = 1
CANONICAL_DTYPE = torch.float16  # export()'s default: the single file users take to A1111


def single_file_form(model: Any, meta: dict[str, Any],
                     dtype: torch.dtype = CANONICAL_DTYPE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a Train checkpoint's single file, from the checkpoint loaded as a model.

    The text encoder keeps CLIP's own vocabulary (A1111 expects it; a pivotal run's new tokens ship as
    an embedding file); the metadata holds the recipe and step."""
    from .single_file import single_file_tensors  # lazily: checkpoints.py imports this module for RECORD_FILE

    text = model.text_encoder.state_dict()
    if meta.get("tokens"):
        key = next(k for k in text if k.endswith("token_embedding.weight"))
        text[key] = text[key][: -len(meta["tokens"])]
    tensors = single_file_tensors(unet=model.unet, vae=model.vae, text_encoder=text, dtype=dtype)
    return tensors, {"dreamy_recipe": json.dumps(meta["recipe"], sort_keys=True), "dreamy_step": str(meta["step"])}


def write_single_file(path: Path, model: Any, meta: dict[str, Any], dtype: torch.dtype = CANONICAL_DTYPE) -> Path:
    """Write a Train checkpoint's single file (LDM layout, A1111/ComfyUI/kohya load it) atomically.

    Raises OutputError when the folder cannot be written."""
    safetensors_file.write(path, *single_file_form(model, meta, dtype))
    return Path(path)


def recorded(folder: Path, folder_hash: str) -> str | None:
    """The single-file sha256 that ``folder``'s record holds, if it was made for these very files."""
    try:
        rec = json.loads((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or rec.get("folder_sha256") != folder_hash:
        return None
    sha = rec.get("single_file_sha256")
    return sha if isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) else None


def record(folder: Path, single_file_sha256: str, folder_hash: str, *, best_effort: bool = False) -> None:
    """Keep ``single_file_sha256`` in ``folder``/model_hash.json (atomically), bound to ``folder_hash``.

    Raises OutputError when it cannot be written, unless ``best_effort`` (a read-only checkpoint
    only costs computing the hash again on the next load). Never creates ``folder``."""
    folder = Path(folder)
    text = json.dumps({"format": RECORD_FORMAT, "folder_sha256": folder_hash,
                       "single_file_sha256": single_file_sha256,
                       "about": "sha256 of the single .safetensors file of these weights; its first 10 hex "
                                "digits are the Model hash A1111 and Civitai show"}, indent=2, sort_keys=True)
    if not folder.is_dir():  # pruned meanwhile: never resurrect a checkpoint folder for its record
        return
    try:
        atomic_write_text(folder / RECORD_FILE, text + "\n")
    except OutputError as e:
        if not best_effort:
            raise
        log.debug("Model hash not kept: %s", e)


def checkpoint_hash(model: Any, path: Path, meta: dict[str, Any]) -> str:
    """A Train checkpoint's single-file sha256: its record, else computed from ``model`` and recorded.

    ``model`` is the checkpoint loaded on the CPU in fp32 (the export's own load): the hash is only
    the export's when the weights were merged and rounded exactly as export does it."""
    known = recorded(path, model.ref.sha256)
    if known is None:
        known = safetensors_file.sha256(*single_file_form(model, meta))
        record(path, known, model.ref.sha256, best_effort=True)
    return known


def folder_hash(folder: Path, content_sha256: str) -> str | None:
    """A diffusers folder's single-file sha256 when Dreamy's export recorded it for these files."""
    return recorded(folder, content_sha256)


def record_export(checkpoint: Path, model: Any, meta: dict[str, Any], files: dict[str, Path],
                  dtype: torch.dtype = CANONICAL_DTYPE) -> str | None:
    """After an export: keep the single file's sha256 in the exported diffusers folder, and (for the
    default dtype) in the checkpoint. Returns that sha256, None when neither form was exported.

    The single file's own bytes decide when it was written (they always equal the computed form;
    if a machine's arithmetic ever differed, the file users hold is the one that counts)."""
    if "single_file" in files:
        sha = file_sha256(files["single_file"])
    elif "diffusers" in files:
        same = dtype == CANONICAL_DTYPE and model.ref.single_file_sha256
        sha = same or safetensors_file.sha256(*single_file_form(model, meta, dtype))
    else:
        return None
    if "diffusers" in files:
        record(files["diffusers"], sha, folder_sha256(files["diffusers"]))
    if dtype == CANONICAL_DTYPE and sha != recorded(checkpoint, model.ref.sha256):
        record(checkpoint, sha, model.ref.sha256, best_effort=True)
    return sha
