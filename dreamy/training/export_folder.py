"""The diffusers-folder export, laid out as the Stable Diffusion 1.5 repository itself is.

Each of ``unet/``, ``vae/`` and ``text_encoder/`` holds full-precision (fp32) weights, which stock
``StableDiffusionPipeline.from_pretrained(folder)`` loads with default arguments in every supported
diffusers/transformers pair, plus an ``fp16`` variant (``*.fp16.safetensors``) for
``from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)``. (An fp16-only folder crashed
stock diffusers on the CPU: transformers 5 keeps the text encoder in the dtype it was saved in while
diffusers loads the UNet in fp32.)

The text encoder's keys carry CLIP's ``text_model.`` prefix and the tokenizer is vocab.json +
merges.txt, as in SD1.5's repository, because transformers 4.x (which kohya sd-scripts, A1111 and
many tools pin) ignores unprefixed keys and its slow ``CLIPTokenizer`` cannot read a lone
``tokenizer.json``; transformers 5 reads both layouts.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch

from ..atomic import output_error, set_file_mode, temp_dir
from ..models.clip_vocab import write_tokenizer_of
from ..models.single_file import CONFIGS
from .checkpoints import replace_dir

# The variant name each export dtype is saved under (diffusers' and the hub's convention).
VARIANTS = {torch.float16: "fp16", torch.bfloat16: "bf16"}
_WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


def text_encoder_key(key: str) -> str:
    """CLIP's canonical key: transformers >= 5.6 drops the ``text_model.`` wrapper that 4.x needs."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _save(tensors: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    def cast(t: torch.Tensor) -> torch.Tensor:
        return (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()

    save_file({k: cast(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
    set_file_mode(path)


def _write_component(name: str, module: Any, folder: Path, variants: list[tuple[str | None, torch.dtype]]) -> None:
    folder.mkdir()
    state = module.state_dict()
    if name == "text_encoder":
        state = {text_encoder_key(k): v for k, v in state.items()}
        config = copy.deepcopy(module.config)
        config.architectures = ["CLIPTextModel"]
        config.save_pretrained(folder)
    else:
        module.save_config(folder)
    for variant, dtype in variants:
        suffix = f".{variant}" if variant else ""
        _save(state, folder / f"{_WEIGHTS[name]}{suffix}.safetensors", dtype)


def write_folder(model: Any, folder: Path, dtype: torch.dtype = torch.float16) -> None:
    """Fill the empty ``folder`` with ``model`` as a diffusers SD1.5 pipeline (no safety checker)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    variants: list[tuple[str | None, torch.dtype]] = [(None, torch.float32)]
    if dtype in VARIANTS:
        variants.append((VARIANTS[dtype], dtype))
    for name in _WEIGHTS:
        _write_component(name, getattr(model, name), folder / name, variants)
    scheduler = PNDMScheduler.from_pretrained(CONFIGS / "sd15", subfolder="scheduler")
    scheduler.save_pretrained(folder / "scheduler")
    write_tokenizer_of(model.tokenizer, folder / "tokenizer")
    # model_index.json exactly as save_pretrained writes it (which classes, which components are None)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_config(folder)


def export_diffusers(model: Any, out: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``model`` (loaded in fp32) to the folder ``out`` atomically: fp32 weights plus a ``dtype``
    variant (``fp16``/``bf16``; none for fp32). Raises OutputError when it cannot be written."""
    try:
        tmp = temp_dir(out)
    except OSError as e:
        raise output_error(out, e) from None
    try:
        write_folder(model, tmp, dtype)
        return replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise output_error(out, e) from None
        raise
