"""Exports as other tools read them: stock diffusers loads the folder, the single file, the LoRA files."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_train_loop import photos, run

from dreamy.dreaming.dreams import dream_iter
from dreamy.models.sources import load_model
from dreamy.recipes.presets import load_preset
from dreamy.training import export
from dreamy.training.exports import ExportError

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


def test_full_run_exports_a_diffusers_folder_a_single_file_and_a_card(tmp_path):
    from diffusers import StableDiffusionPipeline

    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "portrait", {"max_train_steps": 2, "validation_seeds": "1"})
    files = export(tmp_path / "m" / "portrait", formats=["diffusers", "single-file", "card"])
    out = tmp_path / "m" / "portrait" / "export" / "step-0002"
    assert files["diffusers"] == out / "diffusers" and files["single_file"] == out / "portrait.safetensors"
    assert list(files) == ["diffusers", "single_file", "card", "validation_grid"]  # every file it wrote
    assert files["validation_grid"] == out / "validation-grid.png"

    folder_pipe = StableDiffusionPipeline.from_pretrained(files["diffusers"], torch_dtype=torch.float32)
    assert folder_pipe.unet.dtype == torch.float32 and folder_pipe.safety_checker is None
    file_pipe = StableDiffusionPipeline.from_single_file(str(files["single_file"]), config=str(files["diffusers"]),
                                                         local_files_only=True, torch_dtype=torch.float32)
    from_folder, from_file = stock_images(folder_pipe)[0], stock_images(file_pipe)[0]
    assert np.array_equal(from_folder, from_file)  # the single file round-trips to the same pictures
    # ...which are what Dream paints from the checkpoint itself (the export rounds the VAE to fp16 too)
    assert np.abs(ours(load_model(str(tmp_path / "m" / "portrait" / "checkpoints" / "step-0002"), device="cpu"))
                  - from_folder).max() <= 3
    with safe_open(str(files["single_file"]), "pt") as f:
        assert f.metadata()["dreamy_step"] == "2"
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16

    card = files["card"].read_text()
    front = re.match(r"---\n(.*?)\n---\n", card, re.S).group(1)
    assert "license: creativeml-openrail-m" in front and "library_name: diffusers" in front
    assert 'instance_prompt: "a photo of sks person"' in front and "- dreambooth" in front
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
    assert "- lora" in files["card"].read_text()
    assert "validation_grid" not in files  # no validation seeds, no grid

    at_two = export(tmp_path / "m" / "adapter", tmp_path / "two", formats=["lora", "card"], step=2)  # a run + a step
    assert at_two["card"].read_text().count("# adapter — step 2") == 1
    with pytest.raises(ExportError, match="Run 'adapter' has no checkpoint at step 5"):
        export(tmp_path / "m" / "adapter", formats=["card"], step=5)
    with pytest.raises(ExportError, match="not a training run"):
        export(step, formats=["card"], step=2)


def test_pivotal_tokens_and_lora_load_in_stock_diffusers(tmp_path, tiny_dir):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    settings = {"mode": "pivotal", "optimizer": "prodigy", "learning_rate": 1.0, "text_encoder_lr": 1.0,
                "max_train_steps": 4, "ti_fraction": 0.5}
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "pivot", settings)
    step = tmp_path / "m" / "pivot" / "checkpoints" / "step-0004"
    files = export(step, tmp_path / "out", formats=["lora", "single-file", "card"])
    emb = load_file(str(files["embeddings"]))["clip_l"]
    assert emb.shape == (2, 32)
    prompt = "a photo of <s0><s1> person"
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(files["lora_diffusers"].parent), weight_name=files["lora_diffusers"].name)
    pipe.load_textual_inversion(emb, token=["<s0>", "<s1>"], text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    stock = stock_images(pipe, prompt)[0]
    model = load_model(str(step), device="cpu")
    assert model.tokenizer.convert_tokens_to_ids(["<s0>", "<s1>"]) == [514, 515]
    assert np.abs(ours(model, prompt) - stock).max() <= 3
    with safe_open(str(files["single_file"]), "pt") as f:  # CLIP's own vocabulary in the single file
        key = next(k for k in f.keys() if k.endswith("token_embedding.weight"))
        assert f.get_slice(key).get_shape()[0] == 514
    assert "<s0><s1>" in files["card"].read_text()
