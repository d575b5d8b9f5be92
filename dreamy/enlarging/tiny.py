"""The tiny Enlarge demo: SDXL's architecture at toy widths plus random SUPIR parts, for CPUs and tests.

It paints noise: nothing in it was trained. It exists so that the Enlarge tab, the CLI and the tests
run end to end with no download. Like ``dreamy.models.tiny`` it is generated deterministically on first use
into the Dreamy cache, as files in the layouts real weights come in (an SDXL diffusers folder, and a
SUPIR checkpoint under the official key names), and loaded by the same code as real weights.

The UNet keeps SDXL's block structure (three levels, two resnets per level, cross-attention in the
lower two, SDXL's added size conditioning), so GLVControl has its ten outputs and the connectors
their twelve places; only the widths shrink. Its "native" size shrinks with it, so the demo skips
SUPIR's 1024-pixel minimum and uses proportionally small tiles.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..atomic import temp_dir
from ..models.clip_vocab import write_byte_tokenizer
from ..models.tiny import cache_root

TINY_VERSION = 1
_SEED = 4321
SUPIR_FILE = "supir-tiny-demo.safetensors"
BASE_LABEL = "dreamy tiny SDXL demo (random weights)"
SUPIR_LABEL = "dreamy tiny SUPIR demo (random weights: paints noise, not an enlargement)"
MIN_SIDE = 64  # instead of SUPIR's 1024: the demo's latents stay small on a CPU
# SUPIR's tiles cover 1024 px (sampling) and 512 px (VAE); the demo's cover 128 px, so a 64 -> 256 px
# enlargement already runs tiled (3 x 3 sampling tiles).
SAMPLING_TILE, SAMPLING_STRIDE = 16, 8  # latent pixels (SUPIR: 128 / 64)
VAE_ENCODER_TILE, VAE_DECODER_TILE = 128, 16  # pixels / latent pixels (SUPIR: 512 / 64)

_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),  # ZeroSFT's GroupNorm(32) and ZeroCrossAttn's 64-wide heads bound these
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=1,
    attention_head_dim=(2, 4, 4),
    cross_attention_dim=32,  # 16 (first text encoder) + 16 (second)
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=16 + 6 * 8,  # pooled text + six size embeddings
)
_VAE = dict(
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
_TEXT = dict(
    vocab_size=514,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,  # SDXL reads the penultimate layer
    num_attention_heads=2,
    max_position_embeddings=77,
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
)


def tiny_enlarge_dir() -> Path:
    return cache_root() / f"tiny-enlarge-v{TINY_VERSION}"


def official_state_dict(control, connectors, denoise_encoder: dict, vae) -> dict[str, torch.Tensor]:
    """SUPIR's parts under the names (and layouts) of the released checkpoints, ready to save or load."""
    from .model import supir_names

    own = {"control": control.state_dict(), "connectors": connectors.state_dict(), "denoise_encoder": denoise_encoder}
    state = {}
    for official, (part, ours) in supir_names(control, connectors, vae).items():
        tensor = own[part][ours]
        if part == "denoise_encoder" and ".mid.attn_1." in official and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]  # official files store these projections as 1x1 convolutions
        state[official] = tensor.detach().contiguous()
    return state


def _build(seed: int) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .connectors import Connectors
    from .control import GLVControl

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_UNET)
    vae = AutoencoderKL(**_VAE)
    text = CLIPTextModel(CLIPTextConfig(**_TEXT, hidden_act="quick_gelu"))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_TEXT, hidden_act="gelu", projection_dim=16))
    # SUPIR's parts: the control encoder starts as a copy of the UNet's encoder (as SUPIR's training
    # does); its hint conv, the connectors and the denoise encoder get their own random weights.
    control = GLVControl.from_unet(unet)
    torch.nn.init.normal_(control.hint_conv.weight, std=0.05)
    connectors = Connectors.for_unet(unet)
    denoise = AutoencoderKL(**_VAE).encoder
    supir = official_state_dict(control, connectors, denoise.state_dict(), vae)
    return dict(unet=unet, vae=vae, text_encoder=text, text_encoder_2=text_2, supir=supir)


def save_tiny_enlarge(folder: Path, seed: int = _SEED) -> Path:
    """Write ``folder/base`` (an SDXL diffusers folder) and ``folder/SUPIR_FILE`` (official key names)."""
    from safetensors.torch import save_file

    from ..models.single_file import CONFIGS

    parts = _build(seed)
    base = folder / "base"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        parts[name].save_pretrained(base / name, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        write_byte_tokenizer(base / name)
    shutil.copytree(CONFIGS / "sdxl" / "scheduler", base / "scheduler")
    shutil.copy(CONFIGS / "sdxl" / "model_index.json", base / "model_index.json")
    (base / "README.md").write_text(f"# {BASE_LABEL}\n\nGenerated by dreamy.enlarging.tiny (seed {seed}).\n")
    save_file(parts["supir"], str(folder / SUPIR_FILE), metadata={"dreamy": json.dumps({"label": SUPIR_LABEL, "seed": seed})})
    return folder


def ensure_tiny_enlarge() -> tuple[Path, Path]:
    """(base folder, SUPIR file) of the demo, generated on first use; concurrent first uses are safe."""
    final = tiny_enlarge_dir()
    done = (final / SUPIR_FILE, final / "base" / "model_index.json")
    if not all(p.is_file() for p in done):
        tmp = temp_dir(final, prefix=".tiny-enlarge-")
        try:
            save_tiny_enlarge(tmp)
            try:
                os.rename(tmp, final)  # atomic: complete or absent
            except OSError:
                if not all(p.is_file() for p in done):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "base", final / SUPIR_FILE
