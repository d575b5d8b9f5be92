"""Load an SD1.x or SDXL single-file checkpoint (LDM / A1111 layout) fully offline.

The file is read here, safely (``.ckpt`` only through ``torch.load(weights_only=True)``), checked
against the architecture (every weight present, every shape right), then handed to diffusers'
single-file converters with the configs shipped in ``dreamy/configs`` and the offline CLIP
tokenizer, so no step asks the network for anything.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import SourceError
from . import safetensors_file
from .clip_tokenizer import HOW_TO_GET, TokenizerMissing, _pad_of, clip_tokenizer_dir
from .clip_vocab import EOS
from .ldm_keys import (
    CLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    sd15_to_ldm,
    sdxl_to_ldm,
)

SD15, SDXL = "sd15", "sdxl"
ARCH_LABELS = {SD15: "Stable Diffusion 1.x", SDXL: "SDXL"}
CONFIGS = Path(__file__).parent / "configs"
SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")

# Who needs which architecture, for the one-sentence mismatch message.
_NEEDED_BY = {
    SD15: "Train needs Stable Diffusion 1.x for now (such as v1-5-pruned-emaonly.safetensors); Dream takes both",
    SDXL: "SUPIR's backbone needs an SDXL checkpoint (such as Juggernaut XL v9)",
}


class _LightningCallbackRef:
    """Stands in for the callback classes old Lightning .ckpt files name (as dict keys, never run)."""


# Harmless globals found in training .ckpt files (SD 1.x originals included): a Lightning class used
# as a dict key and numpy scalars in its metrics. Everything else stays refused by weights_only.
def _ckpt_safe_globals() -> list[Any]:
    allowed: list[Any] = [
        (_LightningCallbackRef, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (_LightningCallbackRef, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    ]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        scalar = core.multiarray.scalar
        allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
        allowed += [np.dtype] + [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType")]
    except (ImportError, AttributeError):
        pass
    return allowed


# --------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` / ``.ckpt`` file, un-nested from ``state_dict``; never runs code."""
    shapes, fetch = _open_checkpoint(_check_path(path))
    return {key: fetch(key) for key in shapes}


_Fetch = Callable[[str], torch.Tensor]


def _open_checkpoint(path: Path) -> tuple[dict[str, tuple[int, ...]], _Fetch]:
    """Every weight's name and shape, and a function that reads one weight.

    A .safetensors file is only indexed here (its tensors are read later, one by one, and only those
    the model needs: a "pruned" SD file also holds an EMA copy that would double the memory).
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise SourceError(f"{path.name} is empty (0 bytes): the download or copy did not finish; fetch it again.")
    if _looks_like_safetensors(head):
        return _index_safetensors(path)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise SourceError(
            f"{path.name} is neither a safetensors nor a PyTorch checkpoint file (it may be damaged, "
            "or an HTML page saved instead of the model); download it again."
        )
    data = _read_torch(path, zipped=head.startswith(b"PK"))
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise SourceError(f"{path.name} does not hold a state dict of named weights; it is not a model checkpoint.")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        other = foreign_kind(_nested_keys(data), path.name)  # an A1111 embedding nests its tensors
        raise SourceError(other or f"{path.name} holds no weights; it is not a model checkpoint.")
    return {k: tuple(v.shape) for k, v in tensors.items()}, tensors.__getitem__


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"The model file {p} does not exist; check the path.")
    if p.is_dir():
        raise SourceError(
            f"{p} is a folder, not a single-file checkpoint; give the .safetensors/.ckpt file itself, "
            "or load the folder as a diffusers model (it needs a model_index.json)."
        )
    if p.suffix.lower() not in SUFFIXES:
        raise SourceError(
            f"{p.name} has the extension '{p.suffix}', but a single-file checkpoint is a .safetensors or "
            ".ckpt file; pick the model file itself."
        )
    return p


def _looks_like_safetensors(head: bytes) -> bool:
    # An 8-byte little-endian header length, then the JSON header itself.
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1


def _index_safetensors(path: Path) -> tuple[dict[str, tuple[int, ...]], _Fetch]:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")  # checks the header against the size
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as err:
        if any(s in str(err) for s in ("incomplete", "too small", "invalid header length")):
            raise SourceError(
                f"{path.name} is incomplete (the file ends before its weights do: an interrupted download "
                "or copy); download it again."
            ) from None
        raise SourceError(f"{path.name} is a damaged .safetensors file ({err}); download it again.") from None
    if not shapes:
        raise SourceError(f"{path.name} holds no weights; it is not a model checkpoint.")
    return shapes, handle.get_tensor


def _read_torch(path: Path, zipped: bool) -> Any:
    try:
        with torch.serialization.safe_globals(_ckpt_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # noise for odd files
            # mmap keeps a multi-GB .ckpt out of RAM until used; only the zip format supports it.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as err:  # torch raises many types for bad files; each becomes one sentence
        text = str(err)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:
            raise SourceError(
                f"{path.name} contains pickled Python code ({refused.group(1)}) that Dreamy refuses to run; "
                "use a .safetensors version of this model instead."
            ) from None
        raise SourceError(
            f"{path.name} is damaged or is not a PyTorch checkpoint Dreamy can read safely; download it "
            "again, or use a .safetensors version."
        ) from None


# ------------------------------------------------------------------------------------------- detection


_LORA_MARKS = ("lora", "hada_w", "lokr_", "oft_")  # LoRA and its LyCORIS kin (LoHa, LoKr, OFT)
_EMBEDDING_KEYS = ("string_to_param", "emb_params", "clip_l", "clip_g")


def foreign_kind(keys: Iterable[str], name: str) -> str | None:
    """The sentence for a weights file that is an add-on rather than a model - a LoRA (kohya, peft, or
    diffusers' old attention-processor ``...processor.to_q_lora.down.weight`` layout) or a
    textual-inversion embedding (A1111 ``string_to_param``, ``emb_params``, SDXL ``clip_l``/``clip_g``) -
    or None. Checked before anything says what a file is not."""
    keys = list(keys)
    if any(k.split(".")[0] in _EMBEDDING_KEYS for k in keys) and len(keys) <= 8:
        return (f"{name} is a textual-inversion embedding (a learned word), not a model checkpoint; keep the base model it "
                "was trained on as the model, and use the embedding in A1111/ComfyUI or with diffusers' "
                "load_textual_inversion.")
    if keys and any(m in k.lower() for k in keys for m in _LORA_MARKS):
        return (f"{name} is a LoRA, not a full checkpoint (add-on weights for a base model); give its base model "
                "as the model, and apply the LoRA with diffusers' load_lora_weights or in A1111/ComfyUI.")
    return None


def _nested_keys(data: Any, prefix: str = "") -> list[str]:
    """Dotted names of every tensor in nested dicts (an A1111 embedding keeps its under ``string_to_param``)."""
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _nested_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else (
                [f"{prefix}{k}"] if isinstance(v, torch.Tensor) else [])
    return out


def describe_weights_file(path: Path) -> str | None:
    """What a weights file with another suffix (``pytorch_lora_weights.bin``, ``learned_embeds.bin``) is,
    when it is a LoRA or an embedding; None when it cannot be told (or read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        if _looks_like_safetensors(head):
            keys = list(_index_safetensors(path)[0])
        elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            keys = _nested_keys(_read_torch(path, zipped=head.startswith(b"PK")))
        else:
            return None
    except (OSError, SourceError):
        return None
    return foreign_kind(keys, path.name)


def detect_arch(keys: Iterable[str], name: str = "The checkpoint") -> str:
    """``"sd15"`` or ``"sdxl"`` from an LDM state dict's keys; a :class:`SourceError` for anything else."""
    keys = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has(UNET_PREFIX):
        if has(SDXL_CLIP_G_PREFIX) or f"{UNET_PREFIX}label_emb.0.0.weight" in keys:
            if not has(SDXL_CLIP_L_PREFIX) and has("conditioner.embedders.0.model."):
                raise SourceError(f"{name} is an SDXL refiner; Dreamy needs an SDXL base model or a fine-tune of it.")
            return SDXL
        if has("cond_stage_model.model."):
            raise SourceError(f"{name} is a Stable Diffusion 2.x checkpoint; Dreamy supports SD 1.x and SDXL.")
        return SD15
    if has("model_ema.diffusion_model"):  # EMA-only training checkpoint
        return SDXL if has(SDXL_CLIP_G_PREFIX) else SD15
    other = foreign_kind(keys, name)
    if other is not None:
        raise SourceError(other)
    if {"encoder.conv_in.weight", "decoder.conv_in.weight"} <= keys:
        raise SourceError(f"{name} is a standalone VAE, not a full checkpoint; pick the model file itself.")
    if has("down_blocks.") or "conv_in.weight" in keys:
        raise SourceError(
            f"{name} holds a single diffusers component (UNet), not a whole checkpoint; load the model "
            "folder that contains model_index.json instead."
        )
    raise SourceError(
        f"{name} is not a Stable Diffusion checkpoint (it has no model.diffusion_model.* weights); "
        "pick an SD 1.x or SDXL .safetensors/.ckpt file."
    )


# ----------------------------------------------------------------------------------------- validation


def _canonical_names(stored: Iterable[str]) -> dict[str, str]:
    """Canonical name -> stored name, fixing what older tools wrote: CLIP keys without ``text_model.``."""
    names = {}
    for key in stored:
        canonical = key
        for prefix in (CLIP_PREFIX, SDXL_CLIP_L_PREFIX):
            body = key[len(prefix) :]
            if key.startswith(prefix) and body.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
                canonical = prefix + "text_model." + body
        names[canonical] = key
    return names


def _ema_name(key: str) -> str:
    # LDM's EMA keeps each UNet weight as ``model_ema.`` + its name below ``model.`` without dots.
    return "model_ema." + key[len("model.") :].replace(".", "")


def _expected(arch: str, config_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every LDM key the architecture has, with its shape: our converter applied to meta-device models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder"))
        if arch == SDXL:
            te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder_2"))
            ldm = sdxl_to_ldm(unet, vae, te, te2)
        else:
            ldm = sd15_to_ldm(unet, vae, te)
    return {k: tuple(v.shape) for k, v in ldm.items()}


def _core_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    # VAE attention weights exist both as 1x1 convs and as plain matrices; diffusers reads either.
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


_PARTS = (
    (UNET_PREFIX, "UNet"),
    (VAE_PREFIX, "VAE"),
    ("cond_stage_model.", "text encoder"),
    (SDXL_CLIP_L_PREFIX, "first text encoder"),
    (SDXL_CLIP_G_PREFIX, "second text encoder"),
)


def _select(
    names: dict[str, str],
    shapes: dict[str, tuple[int, ...]],
    fetch: _Fetch,
    arch: str,
    config_dir: Path,
    name: str,
) -> dict[str, torch.Tensor]:
    """Read exactly the weights the architecture needs (EMA UNet weights as a fallback), shapes checked."""
    expected = _expected(arch, config_dir)
    label = ARCH_LABELS[arch]
    conv_in = f"{UNET_PREFIX}input_blocks.0.0.weight"
    have_in = shapes.get(names.get(conv_in, ""))
    want_in = expected.get(conv_in)
    if have_in and want_in and len(have_in) == 4 and have_in[1] != want_in[1]:
        raise SourceError(
            f"{name} is an inpainting or otherwise modified {label} model (its UNet takes "
            f"{have_in[1]} input channels, not {want_in[1]}); pick a regular text-to-image checkpoint."
        )
    chosen: dict[str, str] = {}
    missing: list[str] = []
    for key, shape in expected.items():
        stored = names.get(key)
        if stored is None and key.startswith(UNET_PREFIX):
            stored = names.get(_ema_name(key))
        if stored is None:
            missing.append(key)
            continue
        if _core_shape(shapes[stored]) != _core_shape(shape):
            raise SourceError(
                f"{name} does not match the {label} architecture ({key} has shape {shapes[stored]}, "
                f"expected {shape}); it is a different model type."
            )
        chosen[key] = stored
    if missing:
        prefix, part = next(((pre, part) for pre, part in _PARTS if missing[0].startswith(pre)), ("", "model"))
        gone = [k for k in missing if k.startswith(prefix)]
        if len(gone) == sum(k.startswith(prefix) for k in expected):
            what = f"holds no {part} weights"
        else:
            what = f"lacks {len(missing)} of the {len(expected)} weights of {label} (first: {missing[0]})"
        raise SourceError(f"{name} {what}; it is incomplete or not a full {label} checkpoint.")
    return {key: fetch(stored) for key, stored in chosen.items()}


# ------------------------------------------------------------------------------------------- building


def load_single_file(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    config_dir: str | os.PathLike | None = None,
    torch_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Load a single-file SD1.x / SDXL checkpoint into diffusers components, without the network.

    ``arch`` is the architecture the caller needs (``"sd15"`` / ``"sdxl"``): a file of the other one
    raises :class:`SourceError`. ``config_dir`` replaces the shipped configs (a diffusers folder;
    a tokenizer with vocab files inside it is used too). ``torch_dtype`` defaults to float32.
    Returns unet, vae, text_encoder, tokenizer (SDXL: text_encoder_2, tokenizer_2), scheduler, arch.
    """
    if arch is not None and arch not in ARCH_LABELS:
        raise ValueError(f"arch must be one of {sorted(ARCH_LABELS)}, not {arch!r}")
    p = _check_path(path)
    shapes, fetch = _open_checkpoint(p)
    names = _canonical_names(shapes)
    found = detect_arch(names, p.name)
    if arch is not None and found != arch:
        article = "an" if found == SDXL else "a"
        raise SourceError(f"{p.name} is {article} {ARCH_LABELS[found]} checkpoint; {_NEEDED_BY[arch]}.")
    cfg = Path(config_dir) if config_dir is not None else CONFIGS / found
    try:  # before reading gigabytes of weights
        tokenizers = {"tokenizer": _tokenizer_folder(cfg / "tokenizer", EOS)}
        if found == SDXL:
            tokenizers["tokenizer_2"] = _tokenizer_folder(cfg / "tokenizer_2", "!")
    except TokenizerMissing:
        raise SourceError(f"{p.name} needs the CLIP tokenizer, which is not on this computer: {HOW_TO_GET}.") from None
    sd = _select(names, shapes, fetch, found, cfg, p.name)
    dtype = torch_dtype or torch.float32
    try:
        parts = _build(sd, found, cfg, dtype, tokenizers)
    except SourceError:
        raise
    except Exception as err:  # a converter or config problem: one sentence, the cause chained for logs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(f"{p.name} could not be loaded as {ARCH_LABELS[found]}: {first}") from err
    return {**parts, "arch": found}


def _build(
    sd: dict[str, torch.Tensor], arch: str, cfg: Path, dtype: torch.dtype, tokenizers: dict[str, Path]
) -> dict[str, Any]:
    from diffusers.utils import logging as diffusers_logging

    # _select already checked every weight; diffusers' remaining warnings here are noise to a user.
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return _build_parts(sd, arch, cfg, dtype, tokenizers)
    finally:
        diffusers_logging.set_verbosity(level)


def _build_parts(
    sd: dict[str, torch.Tensor], arch: str, cfg: Path, dtype: torch.dtype, tokenizers: dict[str, Path]
) -> dict[str, Any]:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    common = dict(config=str(cfg), local_files_only=True, torch_dtype=dtype)
    parts: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_single_file(sd, subfolder="unet", **common),
        "vae": AutoencoderKL.from_single_file(sd, subfolder="vae", **common),
        "text_encoder": create_diffusers_clip_model_from_ldm(CLIPTextModel, sd, subfolder="text_encoder", **common),
    }
    if arch == SDXL:
        parts["text_encoder_2"] = create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection, sd, subfolder="text_encoder_2", **common
        )
    for name, folder in tokenizers.items():
        parts[name] = CLIPTokenizer.from_pretrained(folder)
    scheduler_config = json.loads((cfg / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])
    parts["scheduler"] = scheduler_cls.from_pretrained(cfg, subfolder="scheduler", local_files_only=True)
    for name, module in parts.items():
        if isinstance(module, torch.nn.Module) and any(t.is_meta for t in module.state_dict().values()):
            raise RuntimeError(f"{name} kept weights on the meta device after loading")
    return parts


def _tokenizer_folder(folder: Path, default_pad: str) -> Path:
    """The config folder's own tokenizer when it has vocab files, else the offline CLIP tokenizer."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    return clip_tokenizer_dir(_pad_of(folder) or default_pad)


# ------------------------------------------------------------------------------------------- exporting


def single_file_tensors(
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    text_encoder_2: Any = None,
    dtype: torch.dtype | None = torch.float16,
) -> dict[str, torch.Tensor]:
    """A model (modules or diffusers state dicts) as the LDM-layout tensors of one checkpoint file.

    SD1.x without ``text_encoder_2``, SDXL with it; floating tensors cast to ``dtype`` (None keeps
    theirs), every tensor on the CPU and contiguous."""
    if text_encoder_2 is None:
        ldm = sd15_to_ldm(unet, vae, text_encoder)
    else:
        ldm = sdxl_to_ldm(unet, vae, text_encoder, text_encoder_2)

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu()
        return (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()

    return {k: cast(v) for k, v in ldm.items()}


def save_single_file(
    path: str | os.PathLike,
    *,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    text_encoder_2: Any = None,
    dtype: torch.dtype | None = torch.float16,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a model (modules or diffusers state dicts) as one LDM-layout ``.safetensors`` file.

    SD1.x without ``text_encoder_2``, SDXL with it. The file appears complete or not at all, and the
    same weights and metadata always give the same bytes (models/safetensors_file.py), so its sha256,
    A1111's model hash, is a property of the weights. Raises OutputError when it cannot be written.
    """
    tensors = single_file_tensors(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                  dtype=dtype)
    out = Path(path)
    safetensors_file.write(out, tensors, metadata)
    return out


