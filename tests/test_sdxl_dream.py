"""SDXL in Dream, on tiny-sdxl: stock parity, one generator per seed, folder/single-file loading, recipes and
recall, LoRAs (kohya and diffusers layouts) and clip_l/clip_g embeddings, the CLI and the studio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamy.dreaming.dreams import dream, recall
from dreamy.errors import RecallError, SourceError
from dreamy.png.metadata import read_recipe, read_text_chunks

SMALL = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture(scope="module")
def xl():
    from dreamy.models.sources import load_model

    return load_model("tiny-sdxl", device="cpu", expected_arch=None)


@pytest.fixture(scope="module")
def xl_dir():
    from dreamy.models.tiny import ensure_tiny_sdxl

    return ensure_tiny_sdxl()


def pixels(results) -> dict[int, np.ndarray]:
    return {r.seed: np.asarray(r.image) for r in results}


# ------------------------------------------------------------------------------------------ the model


def test_tiny_sdxl_has_sdxls_architecture_and_records_it(xl, xl_dir):
    assert xl.arch == "sdxl" and xl.ref.arch == "sdxl" and xl.ref.kind == "tiny" and xl.is_demo
    assert xl.unet.config.addition_embed_type == "text_time"
    assert type(xl.text_encoder).__name__ == "CLIPTextModel"
    assert type(xl.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert xl.vae.config.scaling_factor == 0.13025 and xl.force_zeros_for_empty_prompt
    assert xl.tokenizer.pad_token == "<|endoftext|>" and xl.tokenizer_2.pad_token == "!"  # as SDXL ships
    index = json.loads((xl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert json.loads((xl_dir / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
        "EulerDiscreteScheduler"
    # Train still needs SD 1.x: the default expected architecture refuses SDXL in one sentence
    from dreamy.models.sources import load_model

    with pytest.raises(SourceError, match="is an SDXL model"):
        load_model("tiny-sdxl", device="cpu")


@pytest.mark.parametrize("overrides", [
    {},  # the empty negative prompt: zeros, as stock's negative_prompt=None
    {"negative_prompt": "blurry", "prompt": "figure dancing, white background", "guidance": 5.0},
    {"guidance": 1.0, "sampler": "euler",  # one conditional pass; another sampler
     "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}},
])
def test_parity_with_stock_sdxl_pipeline_is_bit_identical(xl, xl_dir, overrides):
    import diffusers
    from diffusers import StableDiffusionXLPipeline

    results = dream(xl, "biased-dreams", "3", overrides={**SMALL, **overrides}, unlock=True)
    s = results[0].recipe.settings
    # stock's pipeline over the very modules tiny-sdxl's folder loads as (its model_index: force_zeros...)
    pipe = StableDiffusionXLPipeline(vae=xl.vae, text_encoder=xl.text_encoder, text_encoder_2=xl.text_encoder_2,
                                     tokenizer=xl.tokenizer, tokenizer_2=xl.tokenizer_2, unet=xl.unet,
                                     scheduler=diffusers.EulerDiscreteScheduler(), add_watermarker=False,
                                     force_zeros_for_empty_prompt=json.loads(
                                         (xl_dir / "model_index.json").read_text())["force_zeros_for_empty_prompt"])
    pipe.scheduler = getattr(diffusers, {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}[s.sampler])(
        **s.scheduler)
    pipe.set_progress_bar_config(disable=True)
    for r in results:
        stock = pipe(s.prompt, negative_prompt=s.negative_prompt or None, guidance_scale=s.guidance,
                     num_inference_steps=s.steps, width=s.width, height=s.height,
                     generator=torch.Generator("cpu").manual_seed(r.seed)).images[0]
        assert np.array_equal(np.asarray(r.image), np.asarray(stock)), f"seed {r.seed} differs from stock SDXL"


def test_a_seeds_picture_does_not_depend_on_its_batch(xl):
    alone = pixels(dream(xl, seeds="5", overrides=SMALL, unlock=True))
    batched = pixels(dream(xl, seeds="9,5", overrides=SMALL, unlock=True, batch_size=2))
    other = pixels(dream(xl, seeds="5,9", overrides=SMALL, unlock=True, batch_size=2))
    assert np.array_equal(batched[5], alone[5])
    assert all(np.array_equal(other[s], batched[s]) for s in other)
    assert not np.array_equal(batched[9], batched[5])


def test_a_folder_and_its_single_file_load_as_sdxl_and_dream_alike(xl, xl_dir, tmp_path):
    from dreamy.models.single_file import save_single_file
    from dreamy.models.sources import load_model

    folder = shutil.copytree(xl_dir, tmp_path / "my-sdxl")
    single = save_single_file(tmp_path / "my-sdxl.safetensors", unet=xl.unet, vae=xl.vae, text_encoder=xl.text_encoder,
                              text_encoder_2=xl.text_encoder_2, dtype=None)
    from_folder = load_model(str(folder), device="cpu", expected_arch=None)
    from_file = load_model(str(single), device="cpu", expected_arch=None, config_dir=xl_dir)
    assert (from_folder.arch, from_folder.ref.kind, from_file.arch, from_file.ref.kind) == ("sdxl", "folder", "sdxl", "file")
    assert from_folder.ref.sha256 == xl.ref.sha256  # the same files, the same content hash
    assert from_file.ref.a1111_hash == from_file.ref.sha256[:10]
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):  # the file holds exactly the folder's weights
        a, b = getattr(from_folder, part).state_dict(), getattr(from_file, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    a = dream(xl, seeds="2", overrides=SMALL, unlock=True)[0]
    b = dream(from_file, seeds="2", overrides=SMALL, unlock=True, out_dir=tmp_path / "b")[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    recipe = read_recipe(b.path)
    assert recipe.model.arch == "sdxl" and recipe.model.kind == "file"
    assert f"Model hash: {from_file.ref.a1111_hash}" in read_text_chunks(b.path)["parameters"]


def test_every_png_carries_the_sdxl_recipe_and_recall_reproduces_its_bytes(xl, tmp_path):
    ov = {**SMALL, "prompt": "figure dancing", "negative_prompt": "", "guidance": 5.0}
    made = dream(xl, seeds="4", overrides=ov, unlock=True, out_dir=tmp_path / "a")[0]
    recipe = read_recipe(made.path)
    assert recipe.model.arch == "sdxl" and recipe.model.source == "tiny-sdxl"
    assert recipe.runtime["sdxl"]["original_size"] == [64, 64] and recipe.runtime["sdxl"]["target_size"] == [64, 64]
    assert recipe.runtime["sdxl"]["crops_coords_top_left"] == [0, 0]
    assert recipe.runtime["sdxl"]["negative_prompt_embeds"] == "zeros"
    again = recall(made.path, tmp_path / "b")  # from the PNG alone: loads tiny-sdxl by its source
    assert again.path.read_bytes() == made.path.read_bytes()


# ------------------------------------------------------------------------------------------ a trained style


def _peft_lora(xl, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A random (non-zero) peft LoRA on copies of tiny-sdxl's UNet and both text encoders, as training makes one."""
    import copy

    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    out = {}
    for name, targets in (("unet", ["to_q", "to_k", "to_v", "to_out.0"]),
                          ("text_encoder", ["q_proj", "k_proj", "v_proj", "out_proj"]),
                          ("text_encoder_2", ["q_proj", "k_proj", "v_proj", "out_proj"])):
        module = copy.deepcopy(getattr(xl, name))
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=targets), module)
        out[name] = {k: v * 4 for k, v in get_peft_model_state_dict(module).items()}  # strong enough to show
    return out


@pytest.fixture(scope="module")
def style(xl, tmp_path_factory):
    """A kohya SDXL LoRA, the same adapters in diffusers' layout, and an SDXL embedding (clip_l + clip_g)."""
    from safetensors.torch import save_file

    from dreamy.models.sdxl_kohya import kohya_state_dict

    folder = tmp_path_factory.mktemp("style")
    lora = _peft_lora(xl)
    kohya = kohya_state_dict(alpha=2, unet=xl.unet, unet_lora=lora["unet"], text_encoder_lora=lora["text_encoder"],
                             text_encoder_2_lora=lora["text_encoder_2"])
    save_file(kohya, str(folder / "prtkl_lora.safetensors"))
    # diffusers' layout carries no alpha: its scale is alpha / rank = 1, so it gets the updates pre-scaled
    diffusers_sd = {f"{part}.{k}": (v * 0.5 if "lora_B" in k else v) for part, sd in lora.items() for k, v in sd.items()}
    save_file(diffusers_sd, str(folder / "pytorch_lora_weights.safetensors"))
    g = torch.Generator().manual_seed(1)
    save_file({"clip_l": torch.randn(2, 16, generator=g), "clip_g": torch.randn(2, 32, generator=g)},
              str(folder / "prtkl_emb.safetensors"))
    return folder, kohya


def test_kohya_keys_are_sd_scripts_sdxl_names(style):
    _, kohya = style
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.lora_up.weight" in kohya
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha" in kohya
    assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj.lora_down.weight" in kohya
    assert {k.split("_")[1] for k in kohya} == {"unet", "te1", "te2"}


def test_a_lora_changes_the_picture_both_layouts_merge_alike_and_scale_zero_is_the_base(xl, style):
    from dreamy.models.sources import load_model

    folder, _ = style
    kohya = load_model("tiny-sdxl", device="cpu", expected_arch=None, loras=[str(folder / "prtkl_lora.safetensors")])
    peft = load_model("tiny-sdxl", device="cpu", expected_arch=None,
                      loras=[str(folder / "pytorch_lora_weights.safetensors")])
    for part in ("unet", "text_encoder", "text_encoder_2"):
        a, b = getattr(kohya, part).state_dict(), getattr(peft, part).state_dict()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), part
    base = pixels(dream(xl, seeds="1", overrides=SMALL, unlock=True))[1]
    styled = pixels(dream("tiny-sdxl", seeds="1", overrides=SMALL, unlock=True,
                          loras=[f"{folder / 'prtkl_lora.safetensors'}:1.0"]))[1]
    off = pixels(dream("tiny-sdxl", seeds="1", overrides=SMALL, unlock=True,
                       loras=[f"{folder / 'prtkl_lora.safetensors'}:0"]))[1]
    assert not np.array_equal(base, styled)
    assert np.array_equal(base, off)


def test_a_style_is_recorded_in_the_png_and_recall_applies_it_again(style, tmp_path):
    folder, _ = style
    lora, emb = shutil.copy(folder / "prtkl_lora.safetensors", tmp_path), folder / "prtkl_emb.safetensors"
    ov = {**SMALL, "prompt": "prtkl_emb figure dancing, white background", "guidance": 5.0}
    plain = dream("tiny-sdxl", seeds="6", overrides=ov, unlock=True, loras=[f"{lora}:0.7"])[0]
    made = dream("tiny-sdxl", seeds="6", overrides=ov, unlock=True, loras=[f"{lora}:0.7"], embeddings=[str(emb)],
                 out_dir=tmp_path / "a")[0]
    assert not np.array_equal(np.asarray(plain.image), np.asarray(made.image))  # the embedding's word counts
    adapters = read_recipe(made.path).model.adapters
    assert [(a.kind, a.name, a.scale, a.token) for a in adapters] == [
        ("lora", "prtkl_lora", 0.7, None), ("embedding", "prtkl_emb", None, "prtkl_emb")]
    from dreamy.models.hashing import file_sha256

    assert [a.sha256 for a in adapters] == [file_sha256(Path(lora)), file_sha256(emb)]
    import hashlib

    data = Path(lora).read_bytes()  # A1111's LoRA hash: sha256 of what follows the safetensors header
    assert adapters[0].a1111_hash == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
    params = read_text_chunks(made.path)["parameters"]
    assert f'Lora hashes: "prtkl_lora: {adapters[0].a1111_hash}"' in params
    assert f'TI hashes: "prtkl_emb: {file_sha256(emb)[:12]}"' in params
    again = recall(made.path, tmp_path / "b")
    assert again.path.read_bytes() == made.path.read_bytes()
    # a changed style file is refused, as a changed model is
    from safetensors.torch import load_file, save_file

    save_file({k: v * 2 for k, v in load_file(str(lora)).items()}, str(lora))
    with pytest.raises(RecallError, match="LoRAs or embeddings"):
        recall(made.path, tmp_path / "d")


def test_a_style_for_another_model_is_refused_in_one_sentence(xl, style, tmp_path):
    from safetensors.torch import save_file

    from dreamy.models.sdxl_adapters import apply_adapters
    from dreamy.models.sources import load_model

    save_file({"emb_params": torch.zeros(2, 16)}, str(tmp_path / "sd15_emb.safetensors"))
    with pytest.raises(SourceError, match="is not an SDXL embedding"):
        apply_adapters(load_model("tiny-sdxl", device="cpu", expected_arch=None),
                       embeddings=[str(tmp_path / "sd15_emb.safetensors")])
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, str(tmp_path / "real.safetensors"))
    with pytest.raises(SourceError, match="trained on another model"):
        load_model("tiny-sdxl", device="cpu", expected_arch=None, embeddings=[str(tmp_path / "real.safetensors")])
    save_file({"lora_unet_foo_bar.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_foo_bar.lora_up.weight": torch.zeros(8, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SourceError, match="it is a LoRA for another model"):
        load_model("tiny-sdxl", device="cpu", expected_arch=None, loras=[str(tmp_path / "other.safetensors")])
    with pytest.raises(SourceError, match="No LoRA file"):
        load_model("tiny-sdxl", device="cpu", expected_arch=None, loras=[str(tmp_path / "missing.safetensors:0.5")])
    with pytest.raises(SourceError, match="already a word"):
        load_model("tiny-sdxl", device="cpu", expected_arch=None,
                   embeddings=[f"{style[0] / 'prtkl_emb.safetensors'}:a"])


def test_the_cli_dreams_sdxl_with_a_lora_and_an_embedding(style, tmp_path, capsys):
    from dreamy.cli.main import main

    folder, _ = style
    rc = main(["dream", "--model", "tiny-sdxl", "--seeds", "2", "--out", str(tmp_path), "--unlock",
               "--width", "64", "--height", "64", "--steps", "3", "--prompt", "my word figure dancing",
               "--lora", f"{folder / 'prtkl_lora.safetensors'}:0.5",
               "--embedding", f"{folder / 'prtkl_emb.safetensors'}:word"])
    assert rc == 0
    recipe = read_recipe(tmp_path / "seed000002.png")
    assert recipe.model.arch == "sdxl"
    assert [(a.kind, a.scale, a.token) for a in recipe.model.adapters] == [("lora", 0.5, None),
                                                                           ("embedding", None, "word")]


def test_a_recipes_style_record_is_checked_like_the_rest_of_an_untrusted_png():
    from dreamy.recipes.recipe import AdapterRef, ModelRef, Recipe
    from dreamy.recipes.settings import DreamSettings

    lora = AdapterRef("lora", "style.safetensors", "b" * 64, "style", scale=0.8, a1111_hash="0123456789ab")
    recipe = Recipe("dream", "biased-dreams", DreamSettings(), seed=1,
                    model=ModelRef("tiny-sdxl", "tiny", "a" * 64, "demo", arch="sdxl", adapters=(lora,)))
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert "style: LoRA style ×0.8" in recipe.summary()
    for field, bad in (("scale", float("nan")), ("scale", "1"), ("kind", "hypernetwork"), ("sha256", "x")):
        d = json.loads(recipe.to_json())
        d["model"]["adapters"][0][field] = bad
        with pytest.raises(RecallError):
            Recipe.from_dict(d)
    d = json.loads(recipe.to_json())
    d["model"]["arch"] = "sd3"
    with pytest.raises(RecallError):
        Recipe.from_dict(d)
