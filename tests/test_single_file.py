"""Single-file checkpoints: LDM export, offline loading, and one clear sentence for each bad file."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dreamy.errors import SourceError
from dreamy.models.ldm_keys import CLIP_PREFIX, UNET_PREFIX, sd15_to_ldm
from dreamy.models.single_file import CONFIGS, load_single_file, save_single_file
from dreamy.models.tiny import build_tiny_components

COMPONENTS = ("unet", "vae", "text_encoder")


@pytest.fixture(scope="module")
def tiny_parts():
    return build_tiny_components()


@pytest.fixture(scope="module")
def tiny_ldm(tiny_parts):
    return {k: v.detach().clone() for k, v in sd15_to_ldm(*(tiny_parts[c] for c in COMPONENTS)).items()}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("single-file loading tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def assert_same_weights(original: dict, loaded: dict, names=COMPONENTS) -> None:
    for name in names:
        want, got = original[name].state_dict(), loaded[name].state_dict()
        assert set(want) == set(got), name
        wrong = [k for k in want if not torch.equal(want[k], got[k].to(want[k].dtype))]
        assert not wrong, f"{name}: {wrong[:3]}"


# ------------------------------------------------------------------------------------------ round trips


def test_tiny_round_trip_safetensors(tmp_path, tiny_parts, tiny_dir, no_network):
    path = save_single_file(tmp_path / "tiny.safetensors", **{c: tiny_parts[c] for c in COMPONENTS}, dtype=None)
    loaded = load_single_file(path, config_dir=tiny_dir)
    assert loaded["arch"] == "sd15"
    assert_same_weights(tiny_parts, loaded)
    assert type(loaded["scheduler"]).__name__ == "PNDMScheduler"
    # The tiny byte vocabulary: "a" is byte symbol 64, its word-final form 256 later.
    assert loaded["tokenizer"]("a").input_ids == [512, 64 + 256, 513]
    assert all(p.dtype == torch.float32 for c in COMPONENTS for p in loaded[c].parameters())


def test_tiny_round_trip_ckpt_with_lightning_nesting(tmp_path, tiny_parts, tiny_ldm, tiny_dir, monkeypatch):
    # As SD's original training checkpoints: weights under "state_dict", Lightning bookkeeping
    # beside them (a callback class used as a dict key, numpy metrics) and CLIP's position_ids.
    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    import sys
    import types

    import numpy as np

    # Just enough of a package for pickle to name the class; monkeypatch restores sys.modules.
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", ModelCheckpoint.__module__):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[ModelCheckpoint.__module__].ModelCheckpoint = ModelCheckpoint
    sd = dict(tiny_ldm)
    sd[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    payload = {
        "state_dict": {"state_dict": sd},
        "global_step": 470000,
        "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.12), "monitor": None}},
    }
    torch.save(payload, tmp_path / "tiny.ckpt")
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", ModelCheckpoint.__module__):
        monkeypatch.delitem(sys.modules, name)  # loading must not need them
    loaded = load_single_file(tmp_path / "tiny.ckpt", config_dir=tiny_dir)
    assert_same_weights(tiny_parts, loaded)


def test_ema_only_and_old_clip_key_spelling(tmp_path, tiny_parts, tiny_ldm, tiny_dir):
    sd = {}
    for key, value in tiny_ldm.items():
        if key.startswith(UNET_PREFIX):  # LDM's EMA copy: dots dropped below "model."
            key = "model_ema." + key[len("model.") :].replace(".", "")
        elif key.startswith(CLIP_PREFIX + "text_model."):  # transformers < 4.19 naming
            key = CLIP_PREFIX + key[len(CLIP_PREFIX + "text_model.") :]
        sd[key] = value
    sd["model_ema.decay"] = torch.tensor(0.9999)
    torch.save(sd, tmp_path / "ema.ckpt")
    assert_same_weights(tiny_parts, load_single_file(tmp_path / "ema.ckpt", config_dir=tiny_dir))


def test_non_ema_weights_win_over_ema(tmp_path, tiny_parts, tiny_ldm, tiny_dir):
    sd = dict(tiny_ldm)
    for key, value in tiny_ldm.items():
        if key.startswith(UNET_PREFIX):
            sd["model_ema." + key[len("model.") :].replace(".", "")] = torch.zeros_like(value)
    save_file(sd, tmp_path / "both.safetensors")
    assert_same_weights(tiny_parts, load_single_file(tmp_path / "both.safetensors", config_dir=tiny_dir))


def _tiny_sdxl(folder: Path):
    """A tiny SDXL-architecture model and its diffusers config folder (two text encoders, text_time)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from dreamy.models.clip_vocab import write_byte_tokenizer

    torch.manual_seed(7)
    text = dict(vocab_size=514, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                bos_token_id=512, eos_token_id=513, pad_token_id=513)
    parts = {
        # The encoders need different widths: diffusers tells them apart by width, as in SDXL (768/1280).
        "text_encoder": CLIPTextModel(CLIPTextConfig(hidden_size=32, hidden_act="quick_gelu", **text)),
        "text_encoder_2": CLIPTextModelWithProjection(
            CLIPTextConfig(hidden_size=48, projection_dim=48, hidden_act="gelu", **text)
        ),
        "unet": UNet2DConditionModel(
            sample_size=32, block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), use_linear_projection=True,
            cross_attention_dim=32 + 48, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 48,
        ),
        "vae": AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, layers_per_block=1),
    }
    for name, module in parts.items():
        module.save_pretrained(folder / name)
        for weights in (folder / name).glob("*.safetensors"):
            weights.unlink()  # a config folder: no weights in it
    shutil.copytree(CONFIGS / "sdxl" / "scheduler", folder / "scheduler")
    shutil.copy(CONFIGS / "sdxl" / "model_index.json", folder / "model_index.json")
    write_byte_tokenizer(folder / "tokenizer")
    write_byte_tokenizer(folder / "tokenizer_2")
    return parts


def test_tiny_sdxl_round_trip_and_arch_checks(tmp_path, tiny_parts, tiny_dir):
    parts = _tiny_sdxl(tmp_path / "cfg")
    path = save_single_file(tmp_path / "xl.safetensors", dtype=None, **parts)
    loaded = load_single_file(path, arch="sdxl", config_dir=tmp_path / "cfg")
    assert loaded["arch"] == "sdxl"
    assert_same_weights(parts, loaded, names=(*COMPONENTS, "text_encoder_2"))
    assert type(loaded["scheduler"]).__name__ == "EulerDiscreteScheduler"
    assert {"tokenizer", "tokenizer_2"} <= set(loaded)

    with pytest.raises(SourceError, match=r"^xl\.safetensors is an SDXL checkpoint; Train needs Stable Diffusion 1\.x"):
        load_single_file(path, arch="sd15", config_dir=tmp_path / "cfg")
    sd15 = save_single_file(tmp_path / "one.safetensors", **{c: tiny_parts[c] for c in COMPONENTS})
    with pytest.raises(SourceError, match=r"^one\.safetensors is a Stable Diffusion 1\.x checkpoint; SUPIR's backbone needs an SDXL"):
        load_single_file(sd15, arch="sdxl", config_dir=tiny_dir)


@pytest.mark.slow
def test_full_size_sd15_round_trip_with_shipped_configs(tmp_path):
    """Real SD1.5 shapes, random fp16 weights: our configs + LDM export agree with diffusers' loader."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CONFIGS / "sd15"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("meta"):  # skip the costly random init; fill with randn below
            parts = {
                "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg, subfolder="unet")),
                "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(cfg, subfolder="vae")),
                "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(cfg, subfolder="text_encoder")),
            }
    finally:
        torch.set_default_dtype(previous)
    gen = torch.Generator().manual_seed(0)
    for module in parts.values():
        module.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in module.state_dict().values():
                tensor.copy_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))
    assert sum(p.numel() for p in parts["unet"].parameters()) == 859_520_964

    path = save_single_file(tmp_path / "sd15.safetensors", **parts)
    del parts["vae"], parts["text_encoder"]  # keep the UNet for comparison; save memory
    loaded = load_single_file(path, arch="sd15", torch_dtype=torch.float16)
    assert loaded["arch"] == "sd15"
    assert_same_weights(parts, loaded, names=("unet",))
    assert loaded["tokenizer"]("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Check VAE and text encoder against the file itself (their originals were freed).
    from safetensors.torch import load_file

    from dreamy.models.ldm_keys import clip_to_ldm, vae_to_ldm

    stored = load_file(path)
    for part in (vae_to_ldm(loaded["vae"]), clip_to_ldm(loaded["text_encoder"])):
        for key, value in part.items():
            assert torch.equal(stored[key], value.reshape(stored[key].shape)), key


def test_sdxl_config_has_sdxl_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CONFIGS / "sdxl"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg, subfolder="text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg, subfolder="text_encoder_2"))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(unet) == 2_567_463_684
    assert count(vae) == 83_653_863
    assert count(te) == 123_060_480
    assert count(te2) == 694_659_840
    tok2 = json.loads((cfg / "tokenizer_2" / "special_tokens_map.json").read_text())
    assert tok2["pad_token"] == "!"


def test_sdxl_export_keys_match_diffusers_single_file_mapping():
    """Our SDXL export names, read back through diffusers' own converters, give the model's keys."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from dreamy.models.ldm_keys import SDXL_CLIP_G_PREFIX, openclip_to_ldm, unet_to_ldm, vae_to_ldm

    cfg = CONFIGS / "sdxl"
    ucfg = UNet2DConditionModel.load_config(cfg, subfolder="unet")
    vcfg = AutoencoderKL.load_config(cfg, subfolder="vae")
    with torch.device("meta"):
        unet, vae = UNet2DConditionModel.from_config(ucfg), AutoencoderKL.from_config(vcfg)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(cfg, subfolder="text_encoder_2"))
    for model, back in (
        (unet, convert_ldm_unet_checkpoint(unet_to_ldm(unet), ucfg)),
        (vae, convert_ldm_vae_checkpoint(vae_to_ldm(vae), vcfg)),
        (te2, convert_open_clip_checkpoint(te2, openclip_to_ldm(te2), prefix=SDXL_CLIP_G_PREFIX)),
    ):
        want = model.state_dict()
        assert set(back) == set(want)
        assert all(back[k].shape == want[k].shape for k in want)


# ---------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match=r"^The model file .*nope\.safetensors does not exist; check the path\.$"):
        load_single_file(tmp_path / "nope.safetensors")


def test_directory_given(tmp_path):
    folder = tmp_path / "model.safetensors"
    folder.mkdir()
    with pytest.raises(SourceError, match=r"is a folder, not a single-file checkpoint"):
        load_single_file(folder)


@pytest.mark.parametrize("name", ["model.txt", "model.gguf", "model.bin"])
def test_wrong_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"x" * 100)
    with pytest.raises(SourceError, match=r"a single-file checkpoint is a \.safetensors or \.ckpt file"):
        load_single_file(tmp_path / name)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.safetensors").touch()
    with pytest.raises(SourceError, match=r"^empty\.safetensors is empty \(0 bytes\)"):
        load_single_file(tmp_path / "empty.safetensors")


def test_truncated_safetensors(tmp_path, tiny_ldm):
    save_file(tiny_ldm, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"^cut\.safetensors is incomplete .*download it again\.$"):
        load_single_file(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("how", ["garbage", "truncated zip", "garbage pickle"])
def test_corrupt_ckpt(tmp_path, tiny_ldm, how):
    path = tmp_path / "bad.ckpt"
    if how == "garbage":
        path.write_bytes(os.urandom(4096))
        match = r"^bad\.ckpt is neither a safetensors nor a PyTorch checkpoint file"
    else:
        if how == "truncated zip":
            torch.save({"state_dict": tiny_ldm}, path)
            path.write_bytes(path.read_bytes()[:50_000])
        else:
            path.write_bytes(b"\x80\x02" + os.urandom(4096))
        match = r"^bad\.ckpt is damaged or is not a PyTorch checkpoint Dreamy can read safely"
    with pytest.raises(SourceError, match=match):
        load_single_file(path)


class _Payload:
    """Unpickling this would run code that creates a marker file."""

    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("container", ["torch zip", "raw pickle"])
def test_malicious_pickle_is_never_run(tmp_path, tiny_ldm, container):
    marker = tmp_path / "PWNED"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.ckpt"
    if container == "torch zip":
        torch.save({"state_dict": tiny_ldm, "hook": _Payload()}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": _Payload()}, protocol=2))
    with pytest.raises(SourceError, match=r"^evil\.ckpt contains pickled Python code \(exec\) that Dreamy refuses to run"):
        load_single_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"foo.weight": (2, 2)}, r"is not a Stable Diffusion checkpoint"),
        ({"lora_unet_down_blocks_0.lora_down.weight": (4, 8)}, r"is a LoRA, not a full checkpoint"),
        ({"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 4, 3, 3)}, r"is a standalone VAE"),
        ({"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (1, 1)}, r"single diffusers component"),
        ({UNET_PREFIX + "out.2.weight": (4, 1), "cond_stage_model.model.ln_final.weight": (4,)}, r"Stable Diffusion 2\.x"),
        ({"string_to_param.*": (1, 768)}, r"textual-inversion embedding"),
    ],
)
def test_unknown_layouts(tmp_path, keys, message):
    save_file({k: torch.zeros(s) for k, s in keys.items()}, tmp_path / "odd.safetensors")
    with pytest.raises(SourceError, match=r"^odd\.safetensors .*" + message):
        load_single_file(tmp_path / "odd.safetensors")


def test_missing_vae(tmp_path, tiny_ldm, tiny_dir):
    save_file({k: v for k, v in tiny_ldm.items() if not k.startswith("first_stage_model.")}, tmp_path / "novae.safetensors")
    with pytest.raises(SourceError, match=r"^novae\.safetensors holds no VAE weights; it is incomplete"):
        load_single_file(tmp_path / "novae.safetensors", config_dir=tiny_dir)


def test_missing_some_weights(tmp_path, tiny_ldm, tiny_dir):
    dropped = sorted(k for k in tiny_ldm if k.startswith(UNET_PREFIX))[5]
    save_file({k: v for k, v in tiny_ldm.items() if k != dropped}, tmp_path / "holey.safetensors")
    with pytest.raises(SourceError, match=rf"^holey\.safetensors lacks 1 of the \d+ weights of Stable Diffusion 1\.x \(first: {dropped}\)"):
        load_single_file(tmp_path / "holey.safetensors", config_dir=tiny_dir)


def test_inpainting_and_wrong_shapes(tmp_path, tiny_ldm, tiny_dir):
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    sd = dict(tiny_ldm)
    sd[key] = torch.zeros(sd[key].shape[0], 9, 3, 3)
    save_file(sd, tmp_path / "inpaint.safetensors")
    with pytest.raises(SourceError, match=r"^inpaint\.safetensors is an inpainting .*9 input channels, not 4"):
        load_single_file(tmp_path / "inpaint.safetensors", config_dir=tiny_dir)
    # The tiny checkpoint against the real SD1.5 configs: every shape is off.
    save_file(tiny_ldm, tmp_path / "tiny.safetensors")
    with pytest.raises(SourceError, match=r"^tiny\.safetensors does not match the Stable Diffusion 1\.x architecture"):
        load_single_file(tmp_path / "tiny.safetensors")


def test_no_tokenizer_source_fails_before_reading_weights(tmp_path, tiny_ldm, monkeypatch):
    import huggingface_hub.constants

    from dreamy.models import clip_tokenizer, single_file

    monkeypatch.setenv("DREAMY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(clip_tokenizer, "find_bpe_file", lambda: None)
    monkeypatch.setattr(single_file, "_select", lambda *a: pytest.fail("weights read before the tokenizer"))
    save_file(tiny_ldm, tmp_path / "model.safetensors")
    with pytest.raises(SourceError, match=r"^model\.safetensors needs the CLIP tokenizer, which is not on this computer: .*pip install --no-deps open-clip-torch"):
        load_single_file(tmp_path / "model.safetensors")


def test_ldm_names_of_real_sd15_layout():
    """Spot checks against names every SD1.5 .safetensors in the wild carries."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreamy.models.ldm_keys import unet_to_ldm

    cfg = CONFIGS / "sd15"
    with torch.device("meta"):
        ldm = sd15_to_ldm(
            UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg, subfolder="unet")),
            AutoencoderKL.from_config(AutoencoderKL.load_config(cfg, subfolder="vae")),
            CLIPTextModel(CLIPTextConfig.from_pretrained(cfg, subfolder="text_encoder")),
        )
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    assert shapes[UNET_PREFIX + "input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert shapes[UNET_PREFIX + "input_blocks.3.0.op.weight"] == (320, 320, 3, 3)
    assert shapes[UNET_PREFIX + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] == (640, 768)
    assert shapes[UNET_PREFIX + "middle_block.1.proj_in.weight"] == (1280, 1280, 1, 1)
    assert shapes[UNET_PREFIX + "output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)  # UpBlock2D: no attention
    assert shapes[UNET_PREFIX + "output_blocks.5.2.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes[UNET_PREFIX + "output_blocks.11.0.skip_connection.weight"] == (320, 640, 1, 1)
    assert shapes[UNET_PREFIX + "out.2.weight"] == (4, 320, 3, 3)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert shapes["first_stage_model.decoder.up.3.upsample.conv.weight"] == (512, 512, 3, 3)
    assert shapes["first_stage_model.quant_conv.weight"] == (8, 8, 1, 1)
    assert shapes[CLIP_PREFIX + "text_model.embeddings.token_embedding.weight"] == (49408, 768)
    assert shapes[CLIP_PREFIX + "text_model.final_layer_norm.weight"] == (768,)
    assert len([k for k in shapes if k.startswith(CLIP_PREFIX)]) == 196
    with pytest.raises(KeyError, match="class_embedding"):
        unet_to_ldm({"class_embedding.linear_1.weight": torch.zeros(1)})
