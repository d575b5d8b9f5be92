"""Model sources: ``tiny`` / ``tiny-sdxl``, a hub id, a local diffusers folder, or a single .safetensors/.ckpt file.

``load_model`` turns any of them into loaded components plus a ``ModelRef`` (the source as given,
its kind and a content hash), so a recipe names exactly which weights made a picture. Every
failure becomes a SourceError with one sentence that names the source and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import HubUnreachable, SourceError
from ..events import Progress, ProgressCallback
from ..layout import CHECKPOINT_FILE, HUB_ID, step_of
from ..recipes.recipe import ModelRef
from . import a1111_hash, checkpoints, hub
from .devices import pick_device, pick_dtype
from .hashing import COMPONENTS as _COMPONENTS
from .hashing import file_sha256, folder_sha256
from .tiny import TINY_LABEL, TINY_NAME, TINY_NAMES, TINY_SDXL_LABEL, TINY_SDXL_NAME, ensure_tiny

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
# SDXL repos add text_encoder_2/ and tokenizer_2/ (in hashing.COMPONENTS); SD1.5 repos have none to match.
_HUB_PATTERNS = ["model_index.json", *(f"{c}/*.json" for c in _COMPONENTS), "tokenizer*/*.txt",
                 *(f"{c}/*.safetensors" for c in ("unet", "vae", "text_encoder", "text_encoder_2"))]
_HUB_IGNORE = ["*.fp16.*", "*non_ema*", "*.ema.*"]
# What the patterns above select in SD 1.5's repo (its file list on the hub): the fp32 safetensors of
# unet (3.44 GB), text_encoder (492 MB) and vae (335 MB), plus configs and tokenizer. fp32, not the
# *.fp16.* variant (half the size): Train checkpoints and recipes record the sha256 of these files,
# training starts from fp32 weights, and fp16 is a cast at load time anyway.
SD15 = hub.Weights(
    "Stable Diffusion 1.5", DEFAULT_MODEL,
    ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
     "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
     "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
     "vae/diffusion_pytorch_model.safetensors"),
    4.3, "CreativeML OpenRAIL-M")


@dataclass
class SDModel:
    """A loaded Stable Diffusion model, ready to dream on ``device`` in ``dtype``.

    ``arch`` "sd15" (one text encoder) or "sdxl" (``text_encoder_2`` and ``tokenizer_2`` too, and
    ``force_zeros_for_empty_prompt`` from its pipeline config: see dreamy/models/sdxl.py). LoRAs and
    embeddings applied to it are recorded in ``ref.adapters`` (dreamy/models/sdxl_adapters.py)."""

    ref: ModelRef
    arch: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    force_zeros_for_empty_prompt: bool = False

    @property
    def text_encoders(self) -> list[Any]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    @property
    def is_demo(self) -> bool:
        return self.ref.kind == "tiny"


def classify(spec: str) -> tuple[str, Path | None]:
    """(kind, local path) for a source string, without loading anything."""
    spec = str(spec).strip()
    if not spec:
        raise SourceError(f"An empty string is not a model source: give 'tiny', a hub id such as {DEFAULT_MODEL}, "
                          "a diffusers folder, or a .safetensors/.ckpt file.")
    if spec in TINY_NAMES:
        return "tiny", None
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            from .single_file import describe_weights_file

            what = describe_weights_file(path) if path.suffix.lower() in (".bin", ".pt", ".pth") else None
            if what is not None:
                raise SourceError(what)
            raise SourceError(
                f"'{spec}' is a {path.suffix or 'suffix-less'} file; a model file must be "
                f"{', '.join(SINGLE_FILE_SUFFIXES)} (or give a diffusers folder or a hub id)."
            )
        return "file", path
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES or spec.startswith((".", "/", "~")) or os.sep + os.sep in spec:
        raise SourceError(f"No model file or folder at '{spec}': check the path.")
    if HUB_ID.match(spec):
        return "hub", None
    raise SourceError(
        f"'{spec}' is not a model source: give 'tiny', a hub id such as {DEFAULT_MODEL}, "
        "a diffusers folder, or a .safetensors/.ckpt file."
    )


# ---- loading ----

def _hub_snapshot(repo_id: str) -> Path:
    if repo_id == DEFAULT_MODEL:  # every file cached: no round trip to the hub
        folder = hub.cached_folder(SD15)
        if folder is not None:
            return folder
    return hub.snapshot(repo_id, _HUB_PATTERNS, _HUB_IGNORE, "a local folder or .safetensors file with --model "
                        "(or --model tiny for the offline demo)")


def _folder_arch(folder: Path, spec: str) -> str:
    from .sdxl import folder_arch

    return folder_arch(folder, spec)


def _load_folder(folder: Path, spec: str, dtype: torch.dtype) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype),
        "vae": lambda: AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
    }
    missing = [name for name in loaders if not (folder / name).is_dir()]
    if missing:
        raise SourceError(f"'{spec}' has no {', '.join(m + '/' for m in missing)} folder; it is not a complete "
                          "Stable Diffusion model.")
    parts = {}
    for name, load in loaders.items():
        try:
            parts[name] = load()
        except Exception as e:  # noqa: BLE001 - library errors vary; the user needs one sentence
            reason = str(e).replace(str(folder), "").splitlines()[0][:100] if str(e) else ""
            raise SourceError(
                f"Could not load the {name} of '{spec}' ({type(e).__name__}: {reason}); "
                "the folder is incomplete or corrupt: re-download or re-export it."
            ) from None
    return parts


def load_model(
    spec: str = TINY_NAME,
    device: str | torch.device | None = None,
    precision: str = "fp16",
    expected_arch: str | None = "sd15",
    config_dir: str | Path | None = None,
    loras: Sequence[Any] = (),
    embeddings: Sequence[Any] = (),
) -> SDModel:
    """Load a Stable Diffusion model from any source, on ``device`` with the dtype policy applied.

    ``spec`` is one of (see :func:`classify`):

    - ``"tiny"`` / ``"tiny-sdxl"``: the offline demos, tiny SD1.x- and SDXL-shaped models with seeded
      random weights (they paint noise), generated once under ``$DREAMY_CACHE`` (default
      ``~/.cache/dreamy``);
    - a Hugging Face hub id (``owner/name``): a diffusers repo, fetched into the hub cache - only the
      fp32 ``.safetensors`` of unet, vae and the text encoder(s) plus configs and tokenizers (no ``*.fp16.*``,
      non-EMA or EMA variants); a cached copy is used offline;
    - a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``; SDXL also
      ``text_encoder_2/``, ``tokenizer_2/``);
    - one ``.safetensors`` / ``.ckpt`` / ``.pt`` / ``.pth`` file (an A1111-style checkpoint), converted
      to diffusers components with the configs shipped in dreamy/models/configs (``config_dir``
      replaces them, for a non-standard architecture such as the tiny demo's);
    - a Train checkpoint folder: its base model is loaded (by the source its metadata names) and the
      trained parts replace the base's.

    ``device``: None/"auto" picks CUDA, then Apple's MPS, then the CPU; a ``torch.device`` is used as
    is. ``precision`` ("fp16", "bf16" or "fp32") is the weights' and the compute dtype on an
    accelerator; the CPU always gets fp32, and MPS gets fp16 for bf16 (models/devices.py). The
    weights are loaded in that dtype, moved to the device and put in eval mode without gradients (the
    tokenizer is CPU-side). ``expected_arch`` is the architecture the caller needs: "sd15" (the
    default: Train), "sdxl", or None for either (Dream); a model of another one is refused with a
    SourceError saying so. The architecture found is ``SDModel.arch`` and ``ref.arch``.

    ``loras`` / ``embeddings``: LoRA files (``"FILE"`` or ``"FILE:SCALE"``) and textual-inversion
    embeddings (``"FILE"`` or ``"FILE:TOKEN"``) applied after loading, in that order; each is
    recorded with its sha256 in ``ref.adapters`` (see :mod:`dreamy.models.sdxl_adapters`).

    Returns an :class:`SDModel` whose ``ref`` is a :class:`ModelRef`: the source as given, its kind
    ("tiny", "hub", "folder", "file" or "checkpoint"), a sha256 (of the file for single files; for
    folders, of the list of component files and their sha256), a label, the Train checkpoint step
    when there is one, and the sha256 of the single file A1111 would load for these weights (the file
    itself; a Train checkpoint's or an exported folder's single-file export, see models/a1111_hash.py;
    None for other folders), whose first 10 digits are A1111's "Model hash".

    Raises SourceError with one sentence for every source problem (empty or unknown spec, missing
    path, wrong suffix, not a model or an incomplete one, a LoRA/VAE/embedding/SD2.x file, gated or
    unknown hub repo, hub unreachable and nothing cached, the wrong architecture, no CLIP tokenizer
    for a single file, a Train checkpoint whose base changed), and DreamyError for a device that is
    unknown or not present.
    """
    spec = str(spec)
    device = device if isinstance(device, torch.device) else pick_device(device)
    dtype = pick_dtype(precision, device)
    kind, path = classify(spec)
    if loras or embeddings:
        from .sdxl_adapters import apply_adapters

        base = load_model(spec, device=device, precision=precision, expected_arch=expected_arch,
                          config_dir=config_dir)
        return apply_adapters(base, loras, embeddings)
    if kind == "folder" and (path / CHECKPOINT_FILE).is_file():
        # A Train checkpoint holds only the trained parts and names its base: load the base, then complete it.
        meta = checkpoints.read_meta(path)
        arch = meta.get("arch", "sd15")
        if expected_arch not in (arch, None):
            raise SourceError(f"'{spec}' is {'an SDXL' if arch == 'sdxl' else 'a Stable Diffusion 1.x'} training "
                              f"checkpoint; this needs {'an SDXL' if expected_arch == 'sdxl' else 'a Stable Diffusion 1.x'}"
                              " model.")
        base = load_model(meta["base"]["source"], device=device, precision=precision, expected_arch=arch)
        model = checkpoints.complete(base, path, spec, meta)
        # an SDXL run exports LoRAs and embeddings, no single file: its pictures carry no A1111 "Model hash"
        if arch == "sdxl":
            from dataclasses import replace

            model.ref = replace(model.ref, single_file_sha256=None)
            return model
        return _with_a1111_hash(model, path, spec, meta)
    if kind == "file":
        from .single_file import load_single_file

        parts = load_single_file(path, arch=expected_arch, config_dir=config_dir, torch_dtype=dtype)
        arch, sha = parts["arch"], file_sha256(path)
        label, single, folder = path.stem, sha, None
    else:
        if kind == "tiny":
            folder, label = ensure_tiny(spec), TINY_SDXL_LABEL if spec == TINY_SDXL_NAME else TINY_LABEL
        elif kind == "hub":
            folder, label = _hub_snapshot(spec), spec
        else:
            folder, label = path, path.name
        arch = _folder_arch(folder, spec)
        if expected_arch is not None and arch != expected_arch:
            raise SourceError(
                f"'{spec}' is an SDXL model; this needs a Stable Diffusion 1.x model."
                if arch == "sdxl" else f"'{spec}' is a Stable Diffusion 1.x model; this needs an SDXL model."
            )
        if arch == "sdxl":
            from .sdxl import load_folder

            parts = load_folder(folder, spec, dtype)
        else:
            parts = _load_folder(folder, spec, dtype)
        sha = folder_sha256(folder)
        single = a1111_hash.folder_hash(folder, sha) if kind == "folder" else None
    ref = ModelRef(source=spec, kind=kind, sha256=sha, label=label, checkpoint_step=step_of(path) if path else None,
                   single_file_sha256=single, arch=arch)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if parts.get(name) is not None:
            parts[name].to(device).eval().requires_grad_(False)
    extra = {}
    if arch == "sdxl":
        from .sdxl import force_zeros_for_empty_prompt

        extra = dict(text_encoder_2=parts["text_encoder_2"], tokenizer_2=parts["tokenizer_2"],
                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt(folder))
    return SDModel(ref=ref, arch=arch, unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                   tokenizer=parts["tokenizer"], device=device, dtype=dtype, **extra)


def _with_a1111_hash(model: SDModel, path: Path, spec: str, meta: dict) -> SDModel:
    """A loaded Train checkpoint with the sha256 of its single-file export in its ref (A1111's hash).

    Recorded beside the checkpoint after the first load; computed from the CPU fp32 load, as export
    loads it, because weights merged and rounded on a GPU or in fp16 could differ by a last bit: on
    another device, that first load loads the checkpoint once more on the CPU."""
    from dataclasses import replace

    if model.device.type == "cpu" and model.dtype == torch.float32:
        sha = a1111_hash.checkpoint_hash(model, path, meta)
    else:
        sha = a1111_hash.recorded(path, model.ref.sha256)
        if sha is None:
            sha = load_model(spec, device="cpu", precision="fp32").ref.single_file_sha256
    model.ref = replace(model.ref, single_file_sha256=sha)
    return model


def default_model() -> str:
    """``$DREAMY_MODEL``, else SD1.5 when it is on this machine or can be downloaded, else the tiny demo
    (SD1.5 not cached and downloads off: $HF_HUB_OFFLINE, a shared studio). No network is used;
    :func:`starting_model` also downloads it."""
    env = os.environ.get("DREAMY_MODEL")
    if env:
        return env
    return DEFAULT_MODEL if on_this_machine(DEFAULT_MODEL) or not hub.downloads_off() else TINY_NAME


def starting_model(note: Callable[[str], None] | None = None) -> str:
    """The model the studio and the CLI start on, on this machine: :func:`default_model`, with SD1.5
    downloaded first when it is not cached (once, ~4.3 GB, huggingface_hub's progress bars on the
    console), or the tiny demo when that cannot be done.

    ``note`` receives one sentence for the console: what downloads (size, licence) before a
    download, or why the tiny demo stands in (downloads off, hub unreachable). A gated or refused
    download, or a full disk, also falls back to the demo, with its sentence. ``$DREAMY_MODEL`` is
    returned as it is (it loads, and downloads, like any source)."""
    say = note or (lambda _: None)
    model = default_model()
    if model != DEFAULT_MODEL or on_this_machine(DEFAULT_MODEL):
        if model == TINY_NAME and not os.environ.get("DREAMY_MODEL"):
            say(f"{SD15.name} is not on this machine and downloads are off ({hub.downloads_off()}): starting on the "
                "tiny demo, which paints noise.")
        return model
    say(f"Downloading {SD15.name} once into the Hugging Face cache ({SD15.summary} licence: {SD15.page}).")
    try:
        download_model(DEFAULT_MODEL)
    except SourceError as e:
        say(f"Starting on the tiny demo, which paints noise: {e}")
        return TINY_NAME
    return DEFAULT_MODEL


# What must be cached for another hub model to load offline: its index and the largest part (a
# download cut short leaves the index without it). SD 1.5: every file it loads.
_ON_DISK = ("model_index.json", "unet/diffusion_pytorch_model.safetensors")


def on_this_machine(spec: str) -> bool:
    """False for a hub id whose weights are not in the local Hugging Face cache (loading it would
    download them); True for everything else (tiny, local files and folders: their own checks)."""
    if spec in TINY_NAMES or Path(spec).expanduser().exists() or not HUB_ID.match(spec):
        return True
    return hub.is_cached(spec, SD15.files if spec == DEFAULT_MODEL else _ON_DISK)


def download_model(spec: str, on_progress: ProgressCallback | None = None) -> Path:
    """Download a hub model's files (those :func:`load_model` reads) into the Hugging Face cache,
    reporting ``Progress("download", MB done, MB in all)``; returns its local folder.

    Without ``on_progress`` huggingface_hub draws its own bars on the console. SD1.5 comes from the
    cache without a network call when every file is there.

    Raises HubUnreachable (a SourceError, one sentence) when downloads are off ($HF_HUB_OFFLINE, a
    shared studio) or the hub cannot be reached, SourceError when it is gated, refused or missing."""
    name = SD15.name if spec == DEFAULT_MODEL else f"'{spec}'"
    off = hub.downloads_off()
    if off and not on_this_machine(spec):
        raise HubUnreachable(f"{name} is not on this machine and downloads are off ({off}); download it once "
                             "with a connection, or dream with the tiny demo.")

    def report(done: int, total: int) -> None:
        on_progress(Progress("download", done >> 20, max(total >> 20, 1),
                             message=f"downloading {name}: {done / 1e9:.2f} of {total / 1e9:.2f} GB"))

    bar = report if on_progress is not None else None
    instead = "a model that is on this machine"
    if spec == DEFAULT_MODEL:
        return hub.fetch(SD15, bar, instead)
    return hub.snapshot(spec, _HUB_PATTERNS, _HUB_IGNORE, instead, bar)


_loaded: dict[tuple, SDModel] = {}


def cached_model(spec: str, device: str | None = None, precision: str = "fp16",
                 expected_arch: str | None = None, loras: Sequence[Any] = (),
                 embeddings: Sequence[Any] = ()) -> SDModel:
    """Keep one model loaded between jobs (Dream's models in the studio: SD 1.x or SDXL unless
    ``expected_arch`` says which); loading another replaces it (another set of LoRAs or embeddings
    too: they change the weights)."""
    key = (str(spec), str(pick_device(device)), precision, expected_arch, tuple(map(str, loras)),
           tuple(map(str, embeddings)))
    if key not in _loaded:
        _loaded.clear()  # free the previous model before loading the next
        _loaded[key] = load_model(spec, device=device, precision=precision, expected_arch=expected_arch,
                                  loras=loras, embeddings=embeddings)
    return _loaded[key]
