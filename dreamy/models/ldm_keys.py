"""Diffusers state dicts -> the original LDM single-file key layout (what A1111 and ComfyUI load).

One function per component; each maps every key it is given or raises ``KeyError`` naming the key,
so an export never drops a weight silently. The functions only rename (and, for the VAE attention
and OpenCLIP, reshape or concatenate) tensors, so they also run on meta tensors: the single-file
loader uses them to list the keys and shapes a checkpoint must hold.

Layout facts encoded below (diffusers name -> LDM name):

UNet (``model.diffusion_model.``), with L = layers per block:
  ``down_blocks.i.resnets.j``     -> ``input_blocks.{(L+1)i+j+1}.0``
  ``down_blocks.i.attentions.j``  -> ``input_blocks.{(L+1)i+j+1}.1``
  ``down_blocks.i.downsamplers.0.conv`` -> ``input_blocks.{(L+1)(i+1)}.0.op``
  ``mid_block.resnets.j`` -> ``middle_block.{2j}``, ``mid_block.attentions.0`` -> ``middle_block.1``
  ``up_blocks.i.resnets.j``       -> ``output_blocks.{(L+1)i+j}.0``   (L+1 resnets per up block)
  ``up_blocks.i.attentions.j``    -> ``output_blocks.{(L+1)i+j}.1``
  ``up_blocks.i.upsamplers.0``    -> ``output_blocks.{(L+1)i+L}.{2 if the block has attentions else 1}``
  inside a resnet: norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut ->
  in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection;
  transformer blocks keep their names.
VAE (``first_stage_model.``): ``down_blocks.i.resnets.j`` -> ``down.i.block.j``, ``up_blocks.i`` ->
  ``up.{N-1-i}`` (LDM counts decoder blocks from the lowest resolution), ``mid_block.resnets.j`` ->
  ``mid.block_{j+1}``, mid attention ``group_norm/to_q/to_k/to_v/to_out.0`` -> ``norm/q/k/v/proj_out``
  stored as 1x1 convolutions.
CLIP-L (``cond_stage_model.transformer.``; SDXL ``conditioner.embedders.0.transformer.``): the
  transformers names under ``text_model.``.
OpenCLIP bigG (SDXL ``conditioner.embedders.1.model.``): q/k/v projections concatenated into
  ``attn.in_proj_*``, the text projection stored transposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size/crop conditioning
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {
    "conv_in": "conv_in",
    "conv_out": "conv_out",
    "conv_norm_out": "norm_out",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# Current diffusers names first, then the names diffusers used before 0.14.
_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
# Buffers some transformers versions save; LDM files do not need them.
_CLIP_SKIP = ("embeddings.position_ids",)

StateDict = Mapping[str, torch.Tensor]


def state_dict_of(part: Any) -> dict[str, torch.Tensor]:
    """A module's state dict, or a mapping passed through."""
    return dict(part.state_dict() if hasattr(part, "state_dict") else part)


def _rename(name: str, table: Mapping[str, str]) -> str | None:
    """Replace the longest leading dotted prefix of ``name`` found in ``table``."""
    for key in sorted(table, key=len, reverse=True):
        if name == key or name.startswith(key + "."):
            return table[key] + name[len(key) :]
    return None


def _resnets_per_block(keys: list[str], head: str) -> dict[int, int]:
    """For keys ``<head>.<i>.resnets.<j>...``: how many resnets block i holds."""
    seen: dict[int, set[int]] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == head and len(parts) > 3 and parts[2] == "resnets":
            seen.setdefault(int(parts[1]), set()).add(int(parts[3]))
    return {i: len(js) for i, js in seen.items()}


def unet_to_ldm(unet: Any, prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` (module or state dict) in LDM names (SD1.x and SDXL)."""
    sd = state_dict_of(unet)
    keys = list(sd)
    down = _resnets_per_block(keys, "down_blocks")
    layers = max(down.values()) if down else 0
    up = _resnets_per_block(keys, "up_blocks")
    if any(n != layers + 1 for n in up.values()):
        raise KeyError(f"up blocks hold {sorted(up.values())} resnets; expected {layers + 1} each")
    up_attn = {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}
    step = layers + 1

    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        parts = key.split(".")
        name: str | None = None
        if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 4:
            i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            down_side = parts[0] == "down_blocks"
            slot = step * i + j + 1 if down_side else step * i + j
            group = "input_blocks" if down_side else "output_blocks"
            if kind == "resnets":
                inner = _rename(rest, _UNET_RESNET)
                name = f"{group}.{slot}.0.{inner}" if inner else None
            elif kind == "attentions":
                name = f"{group}.{slot}.1.{rest}"
            elif kind == "downsamplers" and down_side and rest.startswith("conv."):
                name = f"input_blocks.{step * (i + 1)}.0.op.{rest[5:]}"
            elif kind == "upsamplers" and not down_side and rest.startswith("conv."):
                name = f"output_blocks.{step * i + layers}.{2 if i in up_attn else 1}.{rest}"
        elif parts[0] == "mid_block" and len(parts) > 3:
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                inner = _rename(rest, _UNET_RESNET)
                name = f"middle_block.{2 * j}.{inner}" if inner else None
            elif kind == "attentions" and j == 0:
                name = f"middle_block.1.{rest}"
        else:
            name = _rename(key, _UNET_TOP)
        if name is None:
            raise KeyError(f"no LDM name for UNet weight {key!r}")
        out[prefix + name] = tensor
    return out


def vae_to_ldm(vae: Any, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` (module or state dict) in LDM names, attention as 1x1 convs."""
    sd = state_dict_of(vae)
    n_up = len({k.split(".")[2] for k in sd if k.startswith("decoder.up_blocks.")})

    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        parts = key.split(".")
        side, name = parts[0], None
        if side in ("quant_conv", "post_quant_conv"):
            name = key
        elif side in ("encoder", "decoder") and len(parts) > 2:
            block = parts[1]
            if block in ("down_blocks", "up_blocks") and len(parts) > 4:
                i, kind, j, rest = int(parts[2]), parts[3], parts[4], ".".join(parts[5:])
                ldm_i = i if block == "down_blocks" else n_up - 1 - i
                ldm_block = "down" if block == "down_blocks" else "up"
                if kind == "resnets":
                    inner = _rename(rest, _VAE_RESNET)
                    name = f"{side}.{ldm_block}.{ldm_i}.block.{j}.{inner}" if inner else None
                elif kind in ("downsamplers", "upsamplers") and j == "0" and rest.startswith("conv."):
                    sampler = "downsample" if kind == "downsamplers" else "upsample"
                    name = f"{side}.{ldm_block}.{ldm_i}.{sampler}.{rest}"
            elif block == "mid_block" and len(parts) > 4:
                kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
                if kind == "resnets":
                    inner = _rename(rest, _VAE_RESNET)
                    name = f"{side}.mid.block_{j + 1}.{inner}" if inner else None
                elif kind == "attentions" and j == 0:
                    inner = _rename(rest, _VAE_ATTN)
                    name = f"{side}.mid.attn_1.{inner}" if inner else None
                    if name and name.endswith(".weight") and tensor.dim() == 2:
                        tensor = tensor.reshape(*tensor.shape, 1, 1)  # linear -> 1x1 conv
            else:
                inner = _rename(".".join(parts[1:]), _VAE_TOP)
                name = f"{side}.{inner}" if inner else None
        if name is None:
            raise KeyError(f"no LDM name for VAE weight {key!r}")
        out[prefix + name] = tensor
    return out


def _clip_body(key: str) -> str:
    """A CLIP text model key without its ``text_model.`` wrapper (transformers >= 5.6 drops it)."""
    return key[len("text_model.") :] if key.startswith("text_model.") else key


def clip_to_ldm(text_encoder: Any, prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` (CLIP ViT-L/14) in the LDM names A1111 and ComfyUI read."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict_of(text_encoder).items():
        body = _clip_body(key)
        if body in _CLIP_SKIP:
            continue
        if not body.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            raise KeyError(f"no LDM name for CLIP text weight {key!r}")
        out[f"{prefix}text_model.{body}"] = tensor
    return out


def openclip_to_ldm(text_encoder: Any, prefix: str = SDXL_CLIP_G_PREFIX) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` (SDXL's OpenCLIP bigG) in the OpenCLIP names SDXL files use."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict_of(text_encoder).items():
        body = _clip_body(key)
        if body in _CLIP_SKIP:
            continue
        if body == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.t().contiguous()  # OpenCLIP computes x @ proj
            continue
        if body in _OPENCLIP_TOP:
            out[prefix + _OPENCLIP_TOP[body]] = tensor
            continue
        parts = body.split(".")
        if parts[:2] != ["encoder", "layers"] or len(parts) < 5:
            raise KeyError(f"no OpenCLIP name for text weight {key!r}")
        layer, rest = parts[2], ".".join(parts[3:])
        block = f"{prefix}transformer.resblocks.{layer}."
        if parts[3] == "self_attn" and parts[4] in ("q_proj", "k_proj", "v_proj"):
            kind = parts[-1]  # weight or bias
            qkv.setdefault(f"{block}attn.in_proj_{kind}", {})[parts[4][0]] = tensor
            continue
        inner = _rename(rest, _OPENCLIP_LAYER)
        if inner is None:
            raise KeyError(f"no OpenCLIP name for text weight {key!r}")
        out[block + inner] = tensor
    for name, parts_qkv in qkv.items():
        if set(parts_qkv) != {"q", "k", "v"}:
            raise KeyError(f"{name} lacks one of its q/k/v projections")
        out[name] = torch.cat([parts_qkv["q"], parts_qkv["k"], parts_qkv["v"]], dim=0)
    return out


def sd15_to_ldm(unet: Any, vae: Any, text_encoder: Any) -> dict[str, torch.Tensor]:
    """A whole SD1.x model (modules or diffusers state dicts) as one LDM state dict."""
    return {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(text_encoder)}


def sdxl_to_ldm(unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any) -> dict[str, torch.Tensor]:
    """A whole SDXL base model as one LDM state dict (the layout of ``sd_xl_base_1.0.safetensors``)."""
    return {
        **unet_to_ldm(unet),
        **vae_to_ldm(vae),
        **clip_to_ldm(text_encoder, SDXL_CLIP_L_PREFIX),
        **openclip_to_ldm(text_encoder_2),
    }
