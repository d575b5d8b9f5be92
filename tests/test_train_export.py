"""Exports as other tools read them: stock diffusers loads the folder (with default arguments, and its
fp16 variant), the single file, the LoRA files and the embedding exactly as the model card says; the card
is one the Hub accepts. (tests/test_interop.py loads them with transformers 4.x and diffusers 0.3x.)"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_train_loop import photos, run

from dreamy.dreaming.dreams import dream_iter
from dreamy.models.checkpoints import read_meta
from dreamy.models.sources import load_model
from dreamy.recipes.presets import load_preset
from dreamy.training import export
from dreamy.training.exports import ExportError
from dreamy.training.model_card import model_card

# SD1.5's own tokenizer folder (stable-diffusion-v1-5/stable-diffusion-v1-5, tokenizer/): what the slow
# transformers-4.x CLIPTokenizer reads
SD15_TOKENIZER_FILES = {"merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"}

SIZE, STEPS, SEED = 64, 4, 11
PROMPT = "monumental, dramatic, atmospheric, transcendent"


def stock_images(pipe, prompt=PROMPT, seeds=(SEED,)) -> list[np.ndarray]:
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler(**load_preset("biased-dreams").dream.scheduler)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for seed in seeds:
        image = pipe(prompt, num_inference_steps=STEPS, guidance_scale=3.0, height=SIZE, width=SIZE,
                     generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0]
        out.append(np.asarray(image, dtype=np.int16))
    return out


def ours(model, prompt=PROMPT) -> np.ndarray:
    overrides = {"width": SIZE, "height": SIZE, "steps": STEPS, "prompt": prompt}
    return np.asarray(next(dream_iter(model, seeds=[SEED], overrides=overrides, unlock=True)).image, dtype=np.int16)


def front_matter(card: str):
    """The card as the Hub's own parser reads it (huggingface_hub.ModelCard), failing on bad metadata."""
    from huggingface_hub import ModelCard

    return ModelCard(card, ignore_metadata_errors=False).data


def card_python(card: str, having: str) -> list[str]:
    """The lines of the card's diffusers example that has ``having`` (every example must be valid Python)."""
    section = card.split("### diffusers\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)\n```", section, re.S)
    for block in blocks:
        ast.parse(block)
    return next(b.splitlines() for b in blocks if having in b)


def test_full_run_exports_a_diffusers_folder_a_single_file_and_a_card(tmp_path):
    from diffusers import StableDiffusionPipeline
    from huggingface_hub.utils import validate_repo_id

    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "portrait", {"max_train_steps": 2, "validation_seeds": "1"})
    files = export(tmp_path / "m" / "portrait", formats=["diffusers", "single-file", "card"])
    out = tmp_path / "m" / "portrait" / "export" / "step-0002"
    assert files["diffusers"] == out / "diffusers" and files["single_file"] == out / "portrait.safetensors"
    assert list(files) == ["diffusers", "single_file", "card", "validation_grid"]  # every file it wrote
    assert files["validation_grid"] == out / "validation-grid.png"

    # SD1.5's layout: fp32 weights, an fp16 variant, CLIP's text_model. keys, the slow tokenizer's files
    folder = files["diffusers"]
    for part, weights in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                          ("text_encoder", "model")):
        for suffix, dtype in (("", torch.float32), (".fp16", torch.float16)):
            with safe_open(str(folder / part / f"{weights}{suffix}.safetensors"), "pt") as f:
                assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}
                if part == "text_encoder":
                    assert all(k.startswith("text_model.") for k in f.keys())
    assert {p.name for p in (folder / "tokenizer").iterdir()} == SD15_TOKENIZER_FILES

    # stock diffusers with default arguments: fp32 everywhere, the picture Dream paints from the checkpoint
    ckpt = ours(load_model(str(tmp_path / "m" / "portrait" / "checkpoints" / "step-0002"), device="cpu"))
    folder_pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert {folder_pipe.unet.dtype, folder_pipe.text_encoder.dtype, folder_pipe.vae.dtype} == {torch.float32}
    assert folder_pipe.safety_checker is None
    assert np.array_equal(stock_images(folder_pipe)[0], ckpt)  # same fp32 weights, same arithmetic
    # the fp16 variant holds the single file's weights: read in fp32 they paint the same picture...
    variant_pipe = StableDiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float32)
    file_pipe = StableDiffusionPipeline.from_single_file(str(files["single_file"]), config=str(folder),
                                                         local_files_only=True, torch_dtype=torch.float32)
    from_variant, from_file = stock_images(variant_pipe)[0], stock_images(file_pipe)[0]
    assert np.array_equal(from_variant, from_file)
    # ...and loaded as the hub's SD1.5 is on a GPU (variant="fp16", fp16), one 8-bit level from fp32's
    half_pipe = StableDiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    assert {half_pipe.unet.dtype, half_pipe.text_encoder.dtype, half_pipe.vae.dtype} == {torch.float16}
    assert np.abs(stock_images(half_pipe)[0] - ckpt).max() <= 2
    assert np.abs(from_file - ckpt).max() <= 2  # fp16-rounded weights: at most a level or two
    with safe_open(str(files["single_file"]), "pt") as f:
        assert f.metadata()["dreamy_step"] == "2"
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16

    card = files["card"].read_text()
    front = re.match(r"---\n(.*?)\n---\n", card, re.S).group(1)
    assert "license: creativeml-openrail-m" in front and "library_name: diffusers" in front
    assert 'instance_prompt: "a photo of sks person"' in front and "- dreambooth" in front
    data = front_matter(card)  # the Hub's parser; the tiny base is no Hub model: no base_model, its hash
    assert data.base_model is None and "base_model" not in front and data.license == "creativeml-openrail-m"
    meta = read_meta(tmp_path / "m" / "portrait" / "checkpoints" / "step-0002")
    assert f"sha256 `{meta['base']['sha256']}`" in card
    assert 'from_pretrained("diffusers")' in card and 'variant="fp16"' in card
    assert "`portrait.safetensors` to `models/Stable-diffusion/`" in card  # A1111/Forge
    assert "`portrait.safetensors` to `models/checkpoints/`" in card  # ComfyUI
    # a base from the Hub (or the Hub's cache) is named by its id; a local folder is not
    hub = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    cached = f"/home/u/.cache/huggingface/hub/models--{hub.replace('/', '--')}/snapshots/451f4fe16113bff5a5d2269ed5ad43b0592e9a14"
    for base, want in (({"kind": "hub", "source": hub}, hub), ({"kind": "folder", "source": cached}, hub),
                       ({"kind": "folder", "source": "/home/u/my models/sd15"}, None),
                       ({"kind": "file", "source": "/home/u/v1-5-pruned.safetensors"}, None)):
        other = {**meta, "base": {**meta["base"], **base, "label": Path(base["source"]).name}}
        data = front_matter(model_card(tmp_path, other, tmp_path / "cards" / base["kind"], None, {}).read_text())
        assert data.base_model == want
        if want:
            validate_repo_id(data.base_model)
    assert "![validation grid](validation-grid.png)" in card and (out / "validation-grid.png").is_file()
    assert '"learning_rate": 0.0001' in card  # the exact recipe, unlocked change included
    with pytest.raises(ExportError, match="not a LoRA"):
        export(tmp_path / "m" / "portrait", formats=["lora"])


def test_lora_exports_load_in_stock_diffusers_in_both_layouts(tmp_path, tiny_dir):
    from diffusers import StableDiffusionPipeline

    settings = {"mode": "lora", "lora_text_encoder": True, "lora_rank": 4, "lora_alpha": 8.0,
                "learning_rate": 3e-2, "optimizer": "adamw", "max_train_steps": 3}
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "adapter", settings)
    step = tmp_path / "m" / "adapter" / "checkpoints" / "step-0003"
    files = export(step, tmp_path / "out", formats=["lora", "card"])
    with safe_open(str(files["lora_kohya"]), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor(next(k for k in keys if k.endswith(".alpha"))).item() == 8.0
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    merged = ours(load_model(str(step), device="cpu"))  # our loader merges W + alpha/rank * B @ A
    base = ours(load_model(str(tiny_dir), device="cpu"))
    results = {}
    for name in ("lora_diffusers", "lora_kohya"):
        pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
        pipe.load_lora_weights(str(files[name].parent), weight_name=files[name].name)
        results[name] = stock_images(pipe)[0]
    assert np.abs(results["lora_diffusers"] - results["lora_kohya"]).max() <= 2
    assert np.abs(results["lora_diffusers"] - merged).max() <= 3
    assert np.abs(base - merged).max() > 10  # the adapters do change the picture
    card = files["card"].read_text()
    assert "- lora" in card and front_matter(card).base_model is None
    # which LoRA file for which tool (diffusers' layout is not read by A1111 or ComfyUI)
    assert ("`adapter_lora.safetensors` (kohya layout) is the one for A1111/Forge, ComfyUI and kohya sd-scripts; "
            "`pytorch_lora_weights.safetensors` (diffusers layout) is for diffusers' `load_lora_weights` only") in card
    assert "`<lora:adapter_lora:1>`" in card and "`adapter_lora.safetensors` to `models/loras/`" in card
    assert 'pipe.load_lora_weights(".", weight_name="pytorch_lora_weights.safetensors")' in card_python(card, "lora")
    assert "validation_grid" not in files  # no validation seeds, no grid

    again = export(step, tmp_path / "again", formats=["lora"])  # the same bytes, so the same file hash on Civitai
    assert all(again[k].read_bytes() == files[k].read_bytes() for k in ("lora_kohya", "lora_diffusers"))

    at_two = export(tmp_path / "m" / "adapter", tmp_path / "two", formats=["lora", "card"], step=2)  # a run + a step
    assert at_two["card"].read_text().count("# adapter — step 2") == 1
    with pytest.raises(ExportError, match="Run 'adapter' has no checkpoint at step 5"):
        export(tmp_path / "m" / "adapter", formats=["card"], step=5)
    with pytest.raises(ExportError, match="not a training run"):
        export(step, formats=["card"], step=2)


def test_pivotal_trigger_works_in_stock_diffusers_as_the_card_says(tmp_path, tiny_dir, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    settings = {"mode": "pivotal", "optimizer": "prodigy", "learning_rate": 1.0, "text_encoder_lr": 1.0,
                "max_train_steps": 4, "ti_fraction": 0.5}
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "Pivot", settings)  # a capital: the name is lower-cased
    step = tmp_path / "m" / "Pivot" / "checkpoints" / "step-0004"
    files = export(step, tmp_path / "out", formats=["lora", "single-file", "card"])
    # A1111/Forge and ComfyUI read one tensor [vectors, width] from a one-key file (kohya's key), named by the file
    assert files["embeddings"].name == "pivot_emb.safetensors"
    emb = load_file(str(files["embeddings"]))
    assert list(emb) == ["emb_params"] and emb["emb_params"].shape == (2, 32)
    card = files["card"].read_text()
    assert front_matter(card).instance_prompt == "a photo of pivot_emb person"
    assert "Prompt: `a photo of pivot_emb person`" in card  # A1111/Forge
    assert "Prompt: `a photo of embedding:pivot_emb person`" in card  # ComfyUI
    assert "`pivot_emb.safetensors` to `embeddings/`" in card and "`pivot_emb.safetensors` to `models/embeddings/`" in card

    # diffusers, exactly as the card's example: its load lines run as written, its prompt is used
    lines = card_python(card, "load_textual_inversion")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    monkeypatch.chdir(tmp_path / "out")
    for line in lines:
        if line.startswith(("pipe.load_lora_weights(", "pipe.load_textual_inversion(")):
            exec(line, {"pipe": pipe})  # noqa: S102 - the card's own code
    assert 'pipe.load_textual_inversion("pivot_emb.safetensors", token="pivot_emb")' in lines
    prompt = json.loads(re.search(r"image = pipe\((.*)\)\.images\[0\]", lines[-1]).group(1))
    assert prompt == "a photo of pivot_emb person"
    stock = stock_images(pipe, prompt)[0]
    model = load_model(str(step), device="cpu")
    assert model.tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"]) == [514, 515]
    mine = ours(model, "a photo of <s0><s1> person")
    assert np.abs(mine - stock).max() <= 3  # LoRA applied un-merged by peft vs merged: a few levels
    # the trigger reaches the text encoder as Dreamy's <s0><s1> do: the same token vectors in the same places
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer), return_tensors="pt").input_ids
    our_ids = model.tokenizer("a photo of <s0><s1> person", return_tensors="pt").input_ids
    assert ids.shape == our_ids.shape
    with torch.no_grad():
        assert torch.equal(pipe.text_encoder.get_input_embeddings()(ids),
                           model.text_encoder.get_input_embeddings()(our_ids))
    with safe_open(str(files["single_file"]), "pt") as f:  # CLIP's own vocabulary in the single file
        key = next(k for k in f.keys() if k.endswith("token_embedding.weight"))
        assert f.get_slice(key).get_shape()[0] == 514
    # the single file alone (no 'lora' format) still comes with the embedding its trigger needs
    alone = export(step, tmp_path / "alone", formats=["single-file"])
    assert set(alone) == {"single_file", "embeddings"} and alone["embeddings"].name == "pivot_emb.safetensors"
