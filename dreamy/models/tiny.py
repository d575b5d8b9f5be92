"""The built-in tiny demo models: Stable Diffusion 1.5's (``tiny``) and SDXL's (``tiny-sdxl``)
architectures at toy widths, with random weights.

They exist so the studio, the CLI and the tests run end to end on a CPU with no network. They paint
noise-like pictures: they have never seen an image. Each is generated deterministically on first use
into a cache folder in diffusers' layout and then loaded through the same ``from_pretrained`` path
as a real model.

The VAEs keep SD's 8x downscale (four blocks), so a 512x512 picture has 64x64 latents as in SD1.5.
``tiny-sdxl`` keeps SDXL's structure: a three-level UNet with SDXL's ``text_time`` size conditioning,
two text encoders (a CLIPTextModel and a CLIPTextModelWithProjection whose pooled output conditions
the UNet), two tokenizers (the second pads with ``!``, as SDXL's does), the VAE scaling factor
0.13025 and SDXL's own scheduler and pipeline configs (dreamy/models/configs/sdxl). As in SDXL, its
second text encoder is wider than its first (diffusers' single-file loader tells them apart by
width), so it also round-trips through one LDM-layout ``.safetensors`` file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..atomic import temp_dir
from .clip_vocab import write_byte_tokenizer

TINY_NAME = "tiny"
TINY_LABEL = "dreamy tiny demo model (random weights: paints noise-like pictures)"
TINY_SDXL_NAME = "tiny-sdxl"
TINY_SDXL_LABEL = "dreamy tiny SDXL demo model (random weights: paints noise-like pictures)"
TINY_NAMES = (TINY_NAME, TINY_SDXL_NAME)
TINY_SDXL_VERSION = 1
_SDXL_SEED = 2024
# Bump when the architecture or the recipe below changes: a new folder is generated beside the old.
TINY_VERSION = 1
_SEED = 1234

_TEXT = dict(
    vocab_size=514,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
    hidden_act="quick_gelu",
    projection_dim=32,
)
_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
_VAE = dict(
    sample_size=512,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    scaling_factor=0.18215,
)
# Stable Diffusion v1.5 ships a PNDM scheduler config; presets replace it with their own scheduler.
_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    trained_betas=None,
)


# SDXL at toy widths (real SDXL: block_out_channels (320, 640, 1280), transformer_layers_per_block
# (1, 2, 10), attention_head_dim (5, 10, 20), cross_attention_dim 2048 = 768 + 1280, time ids
# embedded at 256 each, pooled text 1280). The UNet and VAE are the Enlarge demo's (its text
# encoders are both 16 wide; here the second is 32, as SDXL's second is the wider).
SDXL_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=1,
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=16 + 32,  # first text encoder + second
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text (second encoder) + six size embeddings
)
SDXL_VAE = dict(
    sample_size=128,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 16, 16, 16),  # four blocks: SDXL's 8x downscale
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    scaling_factor=0.13025,
)
SDXL_TEXT = dict(  # both encoders: SDXL reads their penultimate layers
    vocab_size=514,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=77,
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
)


def cache_root() -> Path:
    """Where Dreamy keeps generated files (``$DREAMY_CACHE``, else ``~/.cache/dreamy``)."""
    return Path(os.environ.get("DREAMY_CACHE") or Path.home() / ".cache" / "dreamy")


def tiny_model_dir() -> Path:
    return cache_root() / f"tiny-sd-v{TINY_VERSION}"


def build_tiny_components(seed: int = _SEED) -> dict:
    """The tiny model's components, freshly built with seeded random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**_VAE)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_TEXT))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, scheduler=PNDMScheduler(**_SCHEDULER))


def save_tiny_model(folder: Path, seed: int = _SEED) -> Path:
    """Write the tiny model as a diffusers folder (model_index.json + one subfolder per component)."""
    import diffusers

    parts = build_tiny_components(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder"):
        parts[name].save_pretrained(folder / name, safe_serialization=True)
    parts["scheduler"].save_pretrained(folder / "scheduler")
    write_byte_tokenizer(folder / "tokenizer")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "README.md").write_text(f"# {TINY_LABEL}\n\nGenerated by dreamy.models.tiny (seed {seed}).\n")
    return folder


def tiny_sdxl_dir() -> Path:
    return cache_root() / f"tiny-sdxl-v{TINY_SDXL_VERSION}"


def build_tiny_sdxl_components(seed: int = _SDXL_SEED) -> dict:
    """tiny-sdxl's unet, vae, text_encoder (CLIPTextModel, quick_gelu as CLIP ViT-L) and text_encoder_2
    (CLIPTextModelWithProjection, gelu as OpenCLIP bigG), freshly built with seeded random weights."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_UNET)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**SDXL_VAE)
    torch.manual_seed(seed + 2)
    text = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT, hidden_size=16, intermediate_size=32, hidden_act="quick_gelu"))
    torch.manual_seed(seed + 3)
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT, hidden_size=32, intermediate_size=64,
                                                        hidden_act="gelu", projection_dim=32))
    return dict(unet=unet, vae=vae, text_encoder=text, text_encoder_2=text_2)


def save_tiny_sdxl(folder: Path, seed: int = _SDXL_SEED) -> Path:
    """Write tiny-sdxl as an SDXL diffusers folder: SDXL's own model_index.json (with
    ``force_zeros_for_empty_prompt``) and EulerDiscrete scheduler config, one subfolder per component."""
    configs = Path(__file__).parent / "configs" / "sdxl"  # single_file.CONFIGS; not imported: it imports us

    parts = build_tiny_sdxl_components(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in parts.items():
        module.save_pretrained(folder / name, safe_serialization=True)
    write_byte_tokenizer(folder / "tokenizer")
    write_byte_tokenizer(folder / "tokenizer_2", pad_token="!")  # SDXL's second tokenizer pads with "!"
    shutil.copytree(configs / "scheduler", folder / "scheduler")
    shutil.copy(configs / "model_index.json", folder / "model_index.json")
    (folder / "README.md").write_text(f"# {TINY_SDXL_LABEL}\n\nGenerated by dreamy.models.tiny (seed {seed}).\n")
    return folder


def ensure_tiny_sdxl() -> Path:
    """tiny-sdxl's folder, generated on first use; concurrent first uses are safe."""
    return _ensure(tiny_sdxl_dir(), save_tiny_sdxl)


def ensure_tiny(name: str) -> Path:
    """The folder of the tiny demo called ``name`` (one of TINY_NAMES)."""
    return ensure_tiny_sdxl() if name == TINY_SDXL_NAME else ensure_tiny_model()


def ensure_tiny_model() -> Path:
    """The tiny model's folder, generated on first use; concurrent first uses are safe."""
    return _ensure(tiny_model_dir(), save_tiny_model)


def _ensure(final: Path, save) -> Path:
    if (final / "model_index.json").is_file():
        return final
    tmp = temp_dir(final, prefix=".tiny-")
    try:
        save(tmp)
        try:
            os.rename(tmp, final)  # atomic: the folder is complete or absent
        except OSError:
            if not (final / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
