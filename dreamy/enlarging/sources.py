"""Where Enlarge's two models come from: a SUPIR checkpoint and an SDXL base, by path, hub name or ``tiny``.

SUPIR source: ``tiny``; ``SUPIR-v0Q`` / ``SUPIR-v0F`` (the pruned fp16 files on the hub); a hub file
``owner/repo/file.safetensors`` (also ``.ckpt``); or a local ``.ckpt`` / ``.safetensors``.
SDXL base: ``tiny``; ``Juggernaut XL v9`` (the single file on the hub); a hub file; a hub id of a
diffusers repo; a local single file; or a local diffusers folder.

Hub files are downloaded once into the Hugging Face cache and then used offline. The recipe's own
models (``SUPIR-v0Q`` and ``Juggernaut XL v9`` in biased-dreams) are fetched on first use when nothing
else is given; with downloads off or the hub unreachable, the tiny demo stands in (:func:`locate_pair`).
Each model becomes a ``ModelRef`` with its content hash, so the recipe names exactly which weights
made a picture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import HubUnreachable, SourceError
from ..events import Progress
from ..models import hub, sdxl
from ..models.hashing import file_sha256
from ..recipes.recipe import ModelRef
from . import tiny

log = logging.getLogger(__name__)

# Hub files, as named by their uploaders (Kijai's pruned fp16 SUPIR, RunDiffusion's Juggernaut), with
# their sizes as the hub lists them and their licences: SUPIR's own licence allows non-commercial use
# only (Kijai/SUPIR_pruned carries no model card; the weights are SUPIR's); Juggernaut XL v9's model
# card declares creativeml-openrail-m and adds that it may not be used behind API services.
_SUPIR_LICENCE = "SUPIR licence: non-commercial use only"
SUPIR_WEIGHTS = {
    name: hub.Weights(name, "Kijai/SUPIR_pruned", (f"{name}_fp16.safetensors",), 2.66, _SUPIR_LICENCE)
    for name in ("SUPIR-v0Q", "SUPIR-v0F")
}
BASE_WEIGHTS = {
    "Juggernaut XL v9": hub.Weights("Juggernaut XL v9", "RunDiffusion/Juggernaut-XL-v9",
                                    ("Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors",), 7.11,
                                    "CreativeML OpenRAIL-M, not behind API services"),
}
SUPIR_HUB = {name: f"{w.repo_id}/{w.files[0]}" for name, w in SUPIR_WEIGHTS.items()}
BASE_HUB = {name: f"{w.repo_id}/{w.files[0]}" for name, w in BASE_WEIGHTS.items()}
FILE_SUFFIXES = (".safetensors", ".ckpt")
_REPO = r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}"
_HUB_FILE = re.compile(rf"^({_REPO})/((?:[\w.-]+/)*[\w.-]+\.(?:safetensors|ckpt))$")
_HUB_REPO = re.compile(rf"^{_REPO}$")
_SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
_HUB_PATTERNS = ["model_index.json", *(f"{c}/*.json" for c in _SDXL_PARTS), "tokenizer*/*.txt",
                 *(f"{c}/*.safetensors" for c in _SDXL_PARTS[:4])]


@dataclass(frozen=True)
class Located:
    """A source resolved to local files: kind (tiny | hub | file | folder), path, what to call it."""

    spec: str
    kind: str
    path: Path
    label: str

    def ref(self) -> ModelRef:
        sha = sdxl_folder_sha256(self.path) if self.path.is_dir() else file_sha256(self.path)
        return ModelRef(source=self.spec, kind=self.kind, sha256=sha, label=self.label)


def sdxl_folder_sha256(folder: Path) -> str:
    """sha256 over (path, content hash) of an SDXL diffusers folder's component files."""
    lines = []
    for part in (*_SDXL_PARTS, "scheduler"):
        sub = folder / part
        if sub.is_dir():
            lines += [f"{part}/{f.name}:{file_sha256(f)}" for f in sorted(sub.iterdir())
                      if f.is_file() and not f.name.startswith(".")]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ------------------------------------------------------------------------------------ defaults


def hub_cached(spec: str) -> bool:
    """Whether a hub file source is already in the local Hugging Face cache (no network)."""
    match = _HUB_FILE.match(spec)
    if not match:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(match[1], match[2]), str)
    except (ImportError, OSError, ValueError):
        return False


def _available(spec: str) -> bool:
    return Path(spec).expanduser().exists() or hub_cached(spec)


def default_sources(supir: str | None, base: str | None, supir_model: str, sdxl_base: str) -> tuple[str, str, bool]:
    """(SUPIR source, base source, fell back to the demo) for what the caller left as None.

    ``$DREAMY_SUPIR`` / ``$DREAMY_SDXL`` first, then the recipe's models (``supir_model``,
    ``sdxl_base``), which :func:`locate_supir` / :func:`locate_base` download on first use. When
    neither model was given, the recipe's are not downloaded and downloads are off ($HF_HUB_OFFLINE,
    a shared studio), both become the tiny demo (as Dream falls back to its tiny model offline); one
    real and one tiny never mix. No network is used.
    """
    if supir == tiny_name() and base is None or base == tiny_name() and supir is None:
        return tiny_name(), tiny_name(), False
    if supir is None and base is None and tiny_name() in (supir_model, sdxl_base):  # the recipe asks for the demo
        return tiny_name(), tiny_name(), False
    env_supir, env_base = os.environ.get("DREAMY_SUPIR") or None, os.environ.get("DREAMY_SDXL") or None
    picked_supir = supir or env_supir or SUPIR_HUB.get(supir_model, supir_model)
    picked_base = base or env_base or BASE_HUB.get(sdxl_base, sdxl_base)
    if supir is None and base is None and env_supir is None and env_base is None:
        if not (_available(picked_supir) and _available(picked_base)) and hub.downloads_off():
            return tiny_name(), tiny_name(), True
    return picked_supir, picked_base, False


def locate_pair(supir: str | None, base: str | None, supir_model: str, sdxl_base: str,
                on_progress: Callable[[Progress], None] | None = None) -> tuple[Located, Located, bool]:
    """(SUPIR, SDXL base, the demo stands in) for :func:`default_sources`' choice, located on disk.

    The recipe's own models download on first use (SUPIR-v0Q ~2.7 GB, Juggernaut XL v9 ~7.1 GB):
    a console line states size and licence, then ``on_progress`` follows the bytes
    (``Progress("download", MB done, MB in all)``; without it huggingface_hub draws its bars). When
    they were the defaults and cannot be fetched now (downloads off, hub unreachable), the tiny demo
    stands in with a warning; sources given by the caller or $DREAMY_SUPIR / $DREAMY_SDXL never fall
    back. Raises SourceError (one sentence) otherwise, e.g. a gated repo or a full disk.
    """
    supir_spec, base_spec, fell_back = default_sources(supir, base, supir_model, sdxl_base)
    if fell_back:
        log.warning("%s and %s are not on this machine and downloads are off (%s): enlarging with the offline tiny "
                    "demo, which paints noise; give --supir and --base (or $DREAMY_SUPIR and $DREAMY_SDXL) for real "
                    "results.", supir_model, sdxl_base, hub.downloads_off())
    defaults = (supir is None and base is None and not fell_back
                and not (os.environ.get("DREAMY_SUPIR") or os.environ.get("DREAMY_SDXL")))
    try:
        return locate_supir(supir_spec, on_progress), locate_base(base_spec, on_progress), fell_back
    except HubUnreachable as e:
        if not defaults:
            raise
        log.warning("Enlarging with the offline tiny demo, which paints noise: %s", e)
    return locate_supir(tiny_name()), locate_base(tiny_name()), True


def _fetch(weights: hub.Weights, on_progress: Callable[[Progress], None] | None) -> Path:
    """A catalogued hub file, from the cache or downloaded once (size and licence said first)."""
    if hub.cached_folder(weights) is None and not hub.downloads_off():
        log.warning("Downloading %s once into the Hugging Face cache (%s; %s).", weights.name, weights.summary,
                    weights.page)

    def report(done: int, total: int) -> None:
        on_progress(Progress("download", done >> 20, max(total >> 20, 1), message=f"downloading {weights.name} "
                             f"({weights.licence}): {done / 1e9:.2f} of {total / 1e9:.2f} GB"))

    folder = hub.fetch(weights, report if on_progress is not None else None,
                       "a local file (or 'tiny' for the offline demo)")
    return folder / weights.files[0]


def tiny_name() -> str:
    from ..models.tiny import TINY_NAME

    return TINY_NAME


# ------------------------------------------------------------------------------------ locating


def _hub_file(repo: str, filename: str, spec: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, filename))
    except GatedRepoError:
        raise SourceError(f"'{repo}' is gated on the Hugging Face Hub: accept its licence on its page and log in "
                          "(`hf auth login`), or give a local file.") from None
    except RepositoryNotFoundError:
        raise SourceError(f"'{spec}': no repository '{repo}' on the Hugging Face Hub.") from None
    except LocalEntryNotFoundError:
        raise SourceError(f"'{spec}' is not in the local Hugging Face cache and the hub could not be reached; "
                          "connect once to download it, or give a local file (or 'tiny' for the offline demo).") from None
    except EntryNotFoundError:
        raise SourceError(f"'{spec}': the repository '{repo}' has no file '{filename}'.") from None
    except (OSError, ValueError) as e:
        raise SourceError(f"'{spec}' could not be downloaded ({type(e).__name__}: {e!s:.100}); try again, or "
                          "give a local file.") from None


def _hub_snapshot(repo: str) -> Path:
    return hub.snapshot(repo, _HUB_PATTERNS, ["*.fp16.*"], "a local file")


def _local(spec: str, folders: bool) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_dir():
        if not folders:
            raise SourceError(f"'{spec}' is a folder; a SUPIR checkpoint is one .ckpt or .safetensors file.")
        return path
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise SourceError(f"'{spec}' is a {path.suffix or 'suffix-less'} file; model files are .safetensors or .ckpt.")
        return path
    if path.suffix.lower() in FILE_SUFFIXES and not _HUB_FILE.match(spec) or spec.startswith((".", "/", "~")):
        raise SourceError(f"No model file or folder at '{spec}': check the path.")
    return None


def _catalogued(spec: str, table: dict[str, hub.Weights]) -> hub.Weights | None:
    """The catalogue entry a source names, by name ('SUPIR-v0Q') or by hub file (owner/repo/file)."""
    return table.get(spec) or next((w for w in table.values() if spec == f"{w.repo_id}/{w.files[0]}"), None)


def locate_supir(spec: str, on_progress: Callable[[Progress], None] | None = None) -> Located:
    """A SUPIR source -> its local file (downloading a hub file once)."""
    spec = str(spec).strip()
    if spec == tiny_name():
        return Located(spec, "tiny", tiny.ensure_tiny_enlarge()[1], tiny.SUPIR_LABEL)
    known = _catalogued(spec, SUPIR_WEIGHTS)
    if known is not None:
        return Located(spec, "hub", _fetch(known, on_progress), spec if spec in SUPIR_WEIGHTS else
                       Path(known.files[0]).stem)
    path = _local(spec, folders=False) if spec else None
    if path is not None:
        return Located(spec, "file", path, path.stem)
    match = _HUB_FILE.match(spec)
    if match:
        return Located(spec, "hub", _hub_file(match[1], match[2], spec), Path(match[2]).stem)
    raise SourceError(f"'{spec}' is not a SUPIR source: give 'tiny', {' or '.join(SUPIR_HUB)}, a hub file such as "
                      f"{SUPIR_HUB['SUPIR-v0Q']}, or a local .ckpt/.safetensors file.")


def locate_base(spec: str, on_progress: Callable[[Progress], None] | None = None) -> Located:
    """An SDXL base source -> a local single file or diffusers folder."""
    spec = str(spec).strip()
    if spec == tiny_name():
        return Located(spec, "tiny", tiny.ensure_tiny_enlarge()[0], tiny.BASE_LABEL)
    known = _catalogued(spec, BASE_WEIGHTS)
    if known is not None:
        return Located(spec, "hub", _fetch(known, on_progress), spec if spec in BASE_WEIGHTS else
                       Path(known.files[0]).stem)
    path = _local(spec, folders=True) if spec else None
    if path is not None:
        return Located(spec, "folder" if path.is_dir() else "file", path, path.name if path.is_dir() else path.stem)
    match = _HUB_FILE.match(spec)
    if match:
        return Located(spec, "hub", _hub_file(match[1], match[2], spec), Path(match[2]).stem)
    if _HUB_REPO.match(spec):
        return Located(spec, "hub", _hub_snapshot(spec), spec)
    raise SourceError(f"'{spec}' is not an SDXL source: give 'tiny', {' or '.join(repr(k) for k in BASE_HUB)}, a hub "
                      "id or file, an SDXL .safetensors file, or a diffusers folder.")


def supir_variant(located: Located) -> str | None:
    """'SUPIR-v0Q' / 'SUPIR-v0F' when the source's name says which, else None."""
    if located.kind == "tiny":
        return None
    name = (located.spec if located.spec in SUPIR_HUB else located.path.name).lower()
    found = {v for v in SUPIR_HUB if v.lower().removeprefix("supir-") in name}
    return found.pop() if len(found) == 1 else None


# ------------------------------------------------------------------------------------- loading


def load_base(located: Located, dtype: torch.dtype) -> dict[str, Any]:
    """unet, vae, text_encoder(_2), tokenizer(_2) of an SDXL base, on the CPU in ``dtype``."""
    if located.path.is_file():
        from ..models.single_file import load_single_file

        return load_single_file(located.path, arch="sdxl", torch_dtype=dtype)
    return _load_folder(located.path, located.spec, dtype)


def _load_folder(folder: Path, spec: str, dtype: torch.dtype) -> dict[str, Any]:
    missing = [p + "/" for p in _SDXL_PARTS if not (folder / p).is_dir()]
    if missing:
        sd15 = not (folder / "text_encoder_2").is_dir() and (folder / "unet").is_dir()
        raise SourceError(
            f"'{spec}' is a Stable Diffusion 1.x model; SUPIR's backbone needs SDXL (such as Juggernaut XL v9)."
            if sd15 else f"'{spec}' has no {', '.join(missing)} folder; it is not a complete SDXL diffusers model."
        )
    try:
        unet_config = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"'{spec}': unet/config.json cannot be read ({e!s:.80}); the folder is corrupt.") from None
    if unet_config.get("addition_embed_type") != "text_time":
        raise SourceError(f"'{spec}' is not an SDXL base model (its UNet lacks SDXL's size conditioning).")
    return sdxl.load_folder(folder, spec, dtype)  # the same parts Dream loads for an SDXL model
