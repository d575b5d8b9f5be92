"""Typed settings for each job, with the checks a preset file or a caller's override must pass.

A preset file has one table per job (``[dream]``, ``[train]``, ``[enlarge]``); each maps onto one
dataclass below. ``check_value`` is the one place where types and ranges are enforced, so the CLI,
the studio, the Python API and preset files all get the same message for the same mistake.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ..errors import PresetError
from .samplers import SAMPLERS as _SAMPLER_TABLE


def _f(default: Any, *, range: tuple | None = None, choices: tuple | None = None, doc: str = ""):
    meta = {"range": range, "choices": choices, "doc": doc}
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


SAMPLERS = tuple(_SAMPLER_TABLE)  # ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_sde, dpmpp_sde, pndm
PRECISIONS = ("fp16", "bf16", "fp32")
# plain: the text as stock diffusers reads it (one 77-token window, the rest cut); a1111: A1111's
# weights, BREAK and 75-token chunks (dreamy/models/a1111_prompt.py). It changes the picture, so a
# preset that locks its prompt locks it too.
PROMPT_SYNTAXES = ("plain", "a1111")


@dataclass(frozen=True)
class DreamSettings:
    """Everything that decides a dreamed image, apart from the model and the seed."""

    prompt: str = _f("", doc="what to dream")
    negative_prompt: str = _f("", doc="what to steer away from")
    prompt_syntax: str = _f("plain", choices=PROMPT_SYNTAXES,
                            doc="plain: as stock diffusers (77 tokens); a1111: (word:1.2), [word], BREAK, long prompts")
    guidance: float = _f(7.5, range=(0.0, 50.0), doc="classifier-free guidance scale")
    steps: int = _f(50, range=(1, 1000), doc="denoising steps")
    width: int = _f(512, range=(64, 2048), doc="pixels; a multiple of 8")
    height: int = _f(512, range=(64, 2048), doc="pixels; a multiple of 8")
    sampler: str = _f("ddim", choices=SAMPLERS)
    scheduler: dict = _f({}, doc="keyword arguments for the sampler's diffusers scheduler")
    precision: str = _f("fp16", choices=PRECISIONS, doc="on CUDA; the CPU always computes in fp32")


@dataclass(frozen=True)
class TrainSettings:
    """A Dreambooth run. The Train engine reads these; the preset pins the recipe."""

    mode: str = _f("full", choices=("full", "prior", "lora", "pivotal"),
                   doc="full fine-tune; full + prior preservation; LoRA; pivotal tuning (TI + LoRA)")
    train_text_encoder: bool = _f(True, doc="full/prior: train the text encoder with the UNet")
    optimizer: str = _f("adamw8bit", choices=("adamw8bit", "adamw", "prodigy"))
    learning_rate: float = _f(2e-6, range=(1e-9, 10.0))
    lr_scheduler: str = _f("constant", choices=("constant", "constant_with_warmup", "linear", "cosine"))
    lr_warmup_steps: int = _f(0, range=(0, 100_000))
    max_train_steps: int = _f(1200, range=(1, 1_000_000))
    train_batch_size: int = _f(1, range=(1, 64))
    gradient_accumulation_steps: int = _f(1, range=(1, 256))
    resolution: int = _f(512, range=(64, 2048), doc="short side resized to this, then cropped square; a multiple of 8")
    mixed_precision: str = _f("fp16", choices=("fp16", "bf16", "no"), doc="on CUDA; fp32 master weights; CPU is fp32")
    max_grad_norm: float = _f(1.0, range=(0.0, 1e6), doc="0 turns gradient clipping off")
    instance_prompt: str = _f("a photo of sks person")
    class_prompt: str = _f("")
    prior_preservation: bool = _f(False)
    num_class_images: int = _f(100, range=(0, 100_000))
    prior_loss_weight: float = _f(1.0, range=(0.0, 100.0))
    checkpointing_steps: int = _f(100, range=(1, 1_000_000))
    seed: int = _f(0, range=(0, 2**32 - 1))
    # data
    captions: str = _f("prompt", choices=("prompt", "files"),
                       doc="the instance prompt for every image, or NAME.txt beside each image")
    trigger_word: str = _f("sks", doc="put into captions that lack it ('[trigger]' marks where); pivotal: the new tokens")
    crop: str = _f("center", choices=("center", "random"))
    class_images_dir: str = _f("", doc="prior preservation: a folder of class images (else generated into the run)")
    class_guidance: float = _f(7.5, range=(0.0, 50.0), doc="CFG for generating class images")
    class_steps: int = _f(50, range=(1, 1000), doc="sampler steps for generating class images (the sampler, its "
                          "scheduler and the prompt syntax are the preset's [dream] ones)")
    # Published recipes (Gigafractal's) made their class images with a long prompt of their own and
    # trained them under the bare class word: the two are apart, the class prompt the caption.
    class_image_prompt: str = _f("", doc="prior preservation: the prompt class images are generated with "
                                 "('' : the class prompt); the class prompt stays their caption")
    class_negative_prompt: str = _f("", doc="prior preservation: the negative prompt for generating class images")
    # optimizer details
    adam_beta1: float = _f(0.9, range=(0.0, 1.0))
    adam_beta2: float = _f(0.999, range=(0.0, 1.0))
    adam_epsilon: float = _f(1e-8, range=(0.0, 1.0))
    weight_decay: float = _f(1e-2, range=(0.0, 10.0))
    noise_offset: float = _f(0.0, range=(0.0, 1.0), doc="scale of per-channel offset noise; 0 is off")
    snr_gamma: float = _f(0.0, range=(0.0, 100.0), doc="min-SNR loss weighting gamma (instance half only); 0 is off")
    # LoRA and pivotal tuning
    lora_rank: int = _f(4, range=(1, 1024))
    lora_alpha: float = _f(4.0, range=(0.0, 4096.0))
    lora_text_encoder: bool = _f(False, doc="lora: also train a text-encoder LoRA")
    # SD 1.5's text-encoder LoRA trains in the UNet's group at learning_rate (modes.py; kept bit-identical)
    text_encoder_lr: float = _f(5e-6, range=(0.0, 10.0), doc="pivotal: the new tokens' learning rate; SDXL lora: also "
                                "the text-encoder LoRA's (SD 1.5's trains at learning_rate)")
    num_new_tokens: int = _f(2, range=(1, 16), doc="pivotal: new embeddings that stand for the trigger word")
    ti_fraction: float = _f(0.5, range=(0.0, 1.0), doc="pivotal: the new tokens train for this fraction, then freeze")
    # speed and memory (none changes what is learned)
    gradient_checkpointing: bool = _f(False)
    cache_latents: bool = _f(True, doc="encode each image once and keep its latent mean/std (center crop only)")
    fused_params: bool = _f(False, doc="full/prior: trained weights in one flat fp32 buffer, so the optimizer, "
                            "clipping and zeroing are one kernel each instead of ~1100 (8-bit states then "
                            "share quantisation blocks across tensor edges)")
    compile_unet: bool = _f(False, doc="torch.compile the UNet (CUDA; minutes of warm-up, faster steps)")
    # checkpoints and validation
    checkpoints_total_limit: int = _f(0, range=(0, 100_000), doc="keep this many newest checkpoints; 0 keeps all")
    keep_resume_state: str = _f("last", choices=("last", "all"),
                                doc="optimizer state etc. in the two newest checkpoints (the one before is the fallback "
                                "if the newest is damaged), or in every one")
    validation_seeds: str = _f("0-3", doc="seeds rendered with the Dream preset at step 0 and each checkpoint")
    validation_prompts: str = _f("", doc="prompts rendered at step 0 and each checkpoint, one per line ('': the "
                                 "Dream preset's prompt); the first one's row fills the grid, each other one gets "
                                 "its own folder validation/prompt-N/ and grid")


@dataclass(frozen=True)
class EnlargeSettings:
    """A SUPIR enlargement (defaults are the official Quality settings with our recipe's choices)."""

    # "tiny": the offline demo (random weights); a recipe names it when the demo is what ran
    supir_model: str = _f("SUPIR-v0Q", choices=("SUPIR-v0Q", "SUPIR-v0F", "tiny"))
    sdxl_base: str = _f("Juggernaut XL v9")
    upscale: float = _f(4.0, range=(1.0, 8.0))
    steps: int = _f(30, range=(1, 500))
    s_cfg: float = _f(3.0, range=(0.0, 50.0), doc="CFG at the end of the linear ramp")
    spt_linear_cfg: float = _f(4.0, range=(0.0, 50.0), doc="CFG at the start of the ramp")
    s_stage1: float = _f(-1.0, range=(-1.0, 100.0), doc="restoration guidance; negative turns it off")
    control_scale: float = _f(0.9, range=(0.0, 2.0), doc="s_stage2: strength of the control connectors")
    s_churn: float = _f(5.0, range=(0.0, 100.0))
    s_noise: float = _f(1.003, range=(0.0, 2.0))
    color_fix: str = _f("wavelet", choices=("wavelet", "adain", "none"))
    positive_prompt: str = _f("")
    negative_prompt: str = _f("")
    precision: str = _f("fp16", choices=PRECISIONS)


SECTIONS: dict[str, type] = {"dream": DreamSettings, "train": TrainSettings, "enlarge": EnlargeSettings}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _type_word(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table"}[tp]


def check_value(cls: type, name: str, value: Any, where: str) -> Any:
    """Return ``value`` converted to field ``name``'s type, or raise PresetError saying what is wrong.

    ``where`` names the origin for the message, e.g. ``"presets/mine.toml [dream]"`` or ``"--guidance"``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
        raise PresetError(f"{where}: unknown setting '{name}'{hint}.")
    f = fields[name]
    tp = typing.get_type_hints(cls)[name]
    bad = PresetError(f"{where}: '{name}' must be {_type_word(tp)}, got {type(value).__name__} {value!r:.60}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise bad
        value = int(value)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise bad
        if len(value) > 4000:
            raise PresetError(f"{where}: '{name}' is {len(value)} characters long; the limit is 4000.")
    elif tp is dict:
        if not isinstance(value, dict):
            raise bad
        value = dict(value)
    lo_hi = f.metadata.get("range")
    if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
        raise PresetError(f"{where}: '{name}' must be between {lo_hi[0]} and {lo_hi[1]}, got {value}.")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise PresetError(f"{where}: '{name}' must be one of {', '.join(choices)}; got {value!r:.60}.")
    if name in ("width", "height", "resolution") and value % 8:
        raise PresetError(f"{where}: '{name}' must be a multiple of 8, got {value}.")
    return value


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """A settings object from a mapping, every value checked."""
    return cls(**{k: check_value(cls, k, v, where) for k, v in values.items()})
