"""SDXL training on tiny-sdxl (issue #19): pivotal tuning with per-image captions trains new tokens in both
text encoders until the pivot and a UNet LoRA throughout, resumes bit-identically, renders its
validation prompts at each checkpoint as Dream renders the checkpoint, and exports files that diffusers
loads and Dream dreams with (kohya LoRA, diffusers LoRA, clip_l/clip_g embeddings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train_loop import final_state, same

from dreamy.errors import TrainSetupError
from dreamy.events import CancelToken
from dreamy.png.metadata import read_recipe
from dreamy.training import StepDone, ValidationDone, train
from dreamy.training.checkpoints import list_checkpoints

SMALL = {"width": 64, "height": 64, "steps": 2}
QUICK = {"resolution": 64, "max_train_steps": 4, "checkpointing_steps": 2, "validation_seeds": "0-1",
         "ti_fraction": 0.5, "keep_resume_state": "all", "validation_prompts": "prtkl, figure dancing\nprtkl, a cat"}


def captioned(folder, sizes=((96, 64), (64, 80), (64, 64))):
    """Photos of three shapes (two cropped), each with its caption file (its prompt, no trigger)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"a figure number {i} dancing", encoding="utf-8")
    return folder


def run(images, models, name, overrides=None, cancel_at=None, **kwargs):
    token = CancelToken()
    events = []
    for ev in train(images, name=name, preset="word-style", base="tiny-sdxl", models_dir=models,
                    overrides={**QUICK, **(overrides or {})}, unlock=True, validation=SMALL, cancel=token,
                    device="cpu", **kwargs):
        events.append(ev)
        if cancel_at is not None and isinstance(ev, StepDone) and ev.step == cancel_at:
            token.cancel()
    return events


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One pivotal run of 4 steps (pivot at 2), checkpoints at 2 and 4."""
    root = tmp_path_factory.mktemp("sdxl")
    images = captioned(root / "photos")
    events = run(images, root / "m", "prtkl")
    return root, images, events


@pytest.mark.slow
def test_pivotal_run_trains_both_encoders_tokens_until_the_pivot_and_the_lora_throughout(straight):
    from dreamy.models.sources import load_model

    root, _, events = straight
    run_dir = root / "m" / "prtkl"
    assert [e.step for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4]
    assert all(np.isfinite(e.loss) for e in events if isinstance(e, StepDone))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["base"]["arch"] == "sdxl"
    assert [p["caption"] for p in record["photos"]] == [f"prtkl, a figure number {i} dancing" for i in range(3)]
    ckpts = dict(list_checkpoints(run_dir))
    assert sorted(ckpts) == [2, 4]
    meta = json.loads((ckpts[4] / "dreamy-checkpoint.json").read_text())
    assert meta["arch"] == "sdxl" and meta["tokens"] == ["<s0>", "<s1>"]
    assert meta["parts"] == ["embeddings", "lora_unet"]
    base = load_model("tiny-sdxl", device="cpu", expected_arch=None)
    masters = {s: load_file(str(p / "resume" / "masters.safetensors")) for s, p in ckpts.items()}
    for key, enc in (("text_encoder.token_embedding", base.text_encoder),
                     ("text_encoder_2.token_embedding", base.text_encoder_2)):
        vocab = enc.get_input_embeddings().weight
        for m in masters.values():  # the base vocabulary never moves, in either encoder
            assert m[key].shape == (vocab.shape[0] + 2, vocab.shape[1]) and torch.equal(m[key][:-2], vocab)
        assert torch.equal(masters[2][key][-2:], masters[4][key][-2:])  # frozen after the pivot (step 2)
        assert not torch.equal(masters[2][key][-2:], torch.zeros(2, vocab.shape[1]))
    emb = load_file(str(ckpts[4] / "embeddings.safetensors"))
    assert emb["clip_l"].shape == (2, 16) and emb["clip_g"].shape == (2, 32)  # tiny-sdxl's widths
    lora = [load_file(str(ckpts[s] / "lora_unet.safetensors")) for s in (2, 4)]
    assert any(not torch.equal(lora[0][k], lora[1][k]) for k in lora[0])  # the UNet LoRA trains on


@pytest.mark.slow
def test_the_tokens_learn_before_the_pivot(tmp_path):
    """With the pivot after step 1 of 2, the new rows differ between the two checkpoints' inputs and step 1."""
    from dreamy.models.sources import load_model

    images = captioned(tmp_path / "photos", sizes=((64, 64),))
    run(images, tmp_path / "m", "early", {"max_train_steps": 2, "checkpointing_steps": 1, "validation_seeds": "",
                                          "ti_fraction": 1.0, "text_encoder_lr": 1e-1})
    ckpts = dict(list_checkpoints(tmp_path / "m" / "early"))
    e1, e2 = (load_file(str(ckpts[s] / "embeddings.safetensors")) for s in (1, 2))
    assert not torch.equal(e1["clip_l"], e2["clip_l"]) and not torch.equal(e1["clip_g"], e2["clip_g"])
    assert load_model("tiny-sdxl", device="cpu", expected_arch=None).arch == "sdxl"


@pytest.mark.slow
def test_resume_is_bit_identical(straight, tmp_path):
    root, images, events = straight
    run(images, tmp_path / "m", "prtkl", cancel_at=3)  # past the pivot, between checkpoints
    resumed = run(images, tmp_path / "m", "prtkl", resume=True)
    assert [e.step for e in resumed if isinstance(e, StepDone)] == [4]
    a_masters, a_state = final_state(root / "m" / "prtkl")
    b_masters, b_state = final_state(tmp_path / "m" / "prtkl")
    assert same(a_masters, b_masters) and same(a_state["optimizer"], b_state["optimizer"])
    losses = [[json.loads(line)["loss"] for line in (d / "logs" / "loss.jsonl").read_text().splitlines()]
              for d in (root / "m" / "prtkl", tmp_path / "m" / "prtkl")]
    assert losses[0] == losses[1]
    for sub in ("", "prompt-2/"):
        a = np.asarray(Image.open(root / "m" / "prtkl" / "validation" / f"{sub}step000004-seed000001.png"))
        b = np.asarray(Image.open(tmp_path / "m" / "prtkl" / "validation" / f"{sub}step000004-seed000001.png"))
        assert np.array_equal(a, b)


@pytest.mark.slow
def test_validation_renders_each_prompt_at_each_checkpoint_as_dream_renders_the_checkpoint(straight):
    from dreamy.dreaming.dreams import dream, recall

    root, _, events = straight
    val = root / "m" / "prtkl" / "validation"
    done = [e for e in events if isinstance(e, ValidationDone)]
    assert [e.step for e in done] == [0, 2, 4]
    for step in (0, 2, 4):
        # the trigger word becomes the learned tokens, as in the captions
        for sub, prompt in (("", "<s0><s1>, figure dancing"), ("prompt-2/", "<s0><s1>, a cat")):
            for seed in (0, 1):
                r = read_recipe(val / f"{sub}step{step:06d}-seed{seed:06d}.png")
                assert r.settings.prompt == prompt and r.settings.guidance == 5.0 and r.seed == seed
                assert r.runtime["validation_of_train_step"] == step and "sdxl" in r.runtime
    assert (val / "grid.png").is_file() and (val / "prompt-2" / "grid.png").is_file()
    ckpt = dict(list_checkpoints(root / "m" / "prtkl"))[4]
    r = read_recipe(val / "step000004-seed000001.png")
    assert r.model.kind == "checkpoint" and r.model.arch == "sdxl"
    # what Dream gives for that checkpoint and seed, bit for bit
    again = dream(str(ckpt), preset="word-style", seeds=[1], device="cpu", unlock=True,
                  overrides={**SMALL, "prompt": "<s0><s1>, figure dancing"})
    assert np.array_equal(np.asarray(again[0].image), np.asarray(Image.open(val / "step000004-seed000001.png")))
    recalled = recall(val / "prompt-2" / "step000002-seed000000.png")  # from the PNG's recipe alone
    assert np.array_equal(np.asarray(recalled.image), np.asarray(Image.open(val / "prompt-2" / "step000002-seed000000.png")))


@pytest.mark.slow
def test_exports_load_in_diffusers_and_dream_dreams_with_them(straight, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from dreamy.dreaming.dreams import dream
    from dreamy.models.sources import load_model
    from dreamy.models.tiny import ensure_tiny_sdxl
    from dreamy.training.exports import export

    root, _, _ = straight
    ckpt = dict(list_checkpoints(root / "m" / "prtkl"))[4]
    files = export(root / "m" / "prtkl", out_dir=tmp_path / "out")
    assert set(files) == {"lora_kohya", "lora_diffusers", "embeddings", "card", "validation_grid"}
    kohya = load_file(str(files["lora_kohya"]))
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)  # pivotal: no text-encoder LoRA
    assert any("input_blocks_4_1_transformer_blocks_0_attn1_to_q" in k for k in kohya)
    assert all(kohya[k].item() == 16.0 for k in kohya if k.endswith(".alpha"))
    emb = load_file(str(files["embeddings"]))
    assert sorted(emb) == ["clip_g", "clip_l"] and files["embeddings"].name == "prtkl_emb.safetensors"
    card = files["card"].read_text()
    assert "prtkl_emb, figure dancing" in card and "lora_te1_" in card and "text_encoder_2" in card

    # diffusers: both embeddings into both text encoders, the LoRA through load_lora_weights' key check
    pipe = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_sdxl())
    pipe.load_textual_inversion(emb["clip_l"], token="prtkl_emb", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(emb["clip_g"], token="prtkl_emb", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    for tok, enc, clip in ((pipe.tokenizer, pipe.text_encoder, "clip_l"), (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        ids = tok.convert_tokens_to_ids(["prtkl_emb", "prtkl_emb_1"])
        assert torch.equal(enc.get_input_embeddings().weight[ids].half(), emb[clip])
    _diffusers_lora_loads(files["lora_diffusers"], files["lora_kohya"])

    # Dream with the exported files over the base == Dream on the checkpoint (LoRA merged, same tokens' vectors)
    s = {**SMALL, "prompt": "prtkl_emb, figure dancing"}
    via_files = dream(load_model("tiny-sdxl", device="cpu", expected_arch=None, loras=[str(files["lora_kohya"])],
                                 embeddings=[str(files["embeddings"])]),
                      preset="word-style", overrides=s, unlock=True, seeds=[0])
    r = via_files[0].recipe
    assert {a.kind for a in r.model.adapters} == {"lora", "embedding"}
    direct = dream(load_model(str(ckpt), device="cpu", expected_arch=None), preset="word-style",
                   overrides={**s, "prompt": "<s0><s1>, figure dancing"}, unlock=True, seeds=[0])
    diff = np.abs(np.asarray(via_files[0].image, dtype=int) - np.asarray(direct[0].image, dtype=int))
    assert diff.max() <= 2  # the same weights: the fp16 kohya file vs the fp16 checkpoint parts, merged alike
    via_diffusers_lora = dream(load_model("tiny-sdxl", device="cpu", expected_arch=None,
                                          loras=[str(files["lora_diffusers"])], embeddings=[str(files["embeddings"])]),
                               preset="word-style", overrides=s, unlock=True, seeds=[0])
    assert np.abs(np.asarray(via_diffusers_lora[0].image, dtype=int) - np.asarray(via_files[0].image, dtype=int)).max() <= 2


def _diffusers_lora_loads(diffusers_file, kohya_file, text: bool = False) -> None:
    """diffusers' ``load_lora_weights`` reads both LoRA files (the kohya one through diffusers' own
    converter) and, fused, both give the weights Dreamy's merge gives (dreamy.models.sdxl_adapters)."""
    from diffusers import StableDiffusionXLPipeline

    from dreamy.models.sources import load_model
    from dreamy.models.tiny import ensure_tiny_sdxl

    parts = ("unet", "text_encoder", "text_encoder_2") if text else ("unet",)
    fused = []
    for f in (diffusers_file, kohya_file):
        p = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_sdxl())
        p.load_lora_weights(str(f.parent), weight_name=f.name)
        assert sorted(p.get_list_adapters()) == sorted(parts)
        p.fuse_lora(components=list(parts))
        p.unload_lora_weights()
        fused.append({part: getattr(p, part).state_dict() for part in parts})
    model = load_model("tiny-sdxl", device="cpu", precision="fp32", expected_arch=None, loras=[str(diffusers_file)])
    for part in parts:
        ours = getattr(model, part).state_dict()
        keys = [k for k in ours if k.endswith((".attn1.to_q.weight", ".attn2.to_out.0.weight", "q_proj.weight"))]
        assert keys
        for k in keys:
            assert torch.allclose(fused[0][part][k], ours[k], atol=1e-6), (part, k)
            assert torch.allclose(fused[1][part][k], ours[k], atol=1e-3), (part, k)


def test_sdxl_refuses_full_fine_tunes_and_prior_preservation(tmp_path):
    images = captioned(tmp_path / "photos", sizes=((64, 64),))
    with pytest.raises(TrainSetupError, match="SDXL trains in LoRA or pivotal mode"):
        run(images, tmp_path / "m", "full", {"mode": "full"})
    with pytest.raises(TrainSetupError, match="Prior preservation is not available for SDXL"):
        run(images, tmp_path / "m", "prior", {"mode": "lora", "prior_preservation": True, "class_prompt": "a cat"})


@pytest.mark.slow
def test_plain_lora_with_text_encoder_loras_exports_te1_and_te2(tmp_path):
    """Plain LoRA (the maker's first try) with text-encoder LoRAs on both encoders: kohya's lora_te1_/lora_te2_
    keys, diffusers' text_encoder./text_encoder_2. keys; Dream merges the file as the checkpoint merges."""
    from dreamy.dreaming.dreams import dream
    from dreamy.models.sources import load_model
    from dreamy.training.exports import export

    images = captioned(tmp_path / "photos", sizes=((64, 64), (80, 64)))
    run(images, tmp_path / "m", "plain", {"mode": "lora", "lora_text_encoder": True, "max_train_steps": 2,
                                          "checkpointing_steps": 2, "validation_seeds": "", "optimizer": "prodigy",
                                          "learning_rate": 1.0, "text_encoder_lr": 1.0, "validation_prompts": ""})
    ckpt = list_checkpoints(tmp_path / "m" / "plain")[-1][1]
    meta = json.loads((ckpt / "dreamy-checkpoint.json").read_text())
    assert meta["parts"] == ["lora_text_encoder", "lora_text_encoder_2", "lora_unet"] and meta["tokens"] == []
    files = export(tmp_path / "m" / "plain", out_dir=tmp_path / "out", formats=["lora"])
    assert "embeddings" not in files
    kohya = load_file(str(files["lora_kohya"]))
    for prefix in ("lora_unet_", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                   "lora_te2_text_model_encoder_layers_1_self_attn_out_proj"):
        assert any(k.startswith(prefix) for k in kohya), prefix
    peft = load_file(str(files["lora_diffusers"]))
    assert any(k.startswith("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A") for k in peft)
    assert any(k.startswith("text_encoder_2.text_model.encoder.layers.") for k in peft)
    _diffusers_lora_loads(files["lora_diffusers"], files["lora_kohya"], text=True)  # with the locked peft too
    s = {**SMALL, "prompt": "prtkl, a figure dancing"}
    with_file = dream(load_model("tiny-sdxl", device="cpu", expected_arch=None, loras=[str(files["lora_kohya"])]),
                      preset="word-style", overrides=s, unlock=True, seeds=[0])
    on_ckpt = dream(load_model(str(ckpt), device="cpu", expected_arch=None), preset="word-style", overrides=s,
                    unlock=True, seeds=[0])
    assert np.abs(np.asarray(with_file[0].image, dtype=int) - np.asarray(on_ckpt[0].image, dtype=int)).max() <= 2
    with pytest.raises(Exception, match="SDXL adapters"):
        export(tmp_path / "m" / "plain", out_dir=tmp_path / "out2", formats=["single-file"])


@pytest.mark.parametrize("crop", ["center", "random"])
def test_size_and_crop_conditioning_is_what_the_data_pipeline_did(tmp_path, monkeypatch, crop):
    """time_ids = original size (as loaded) + the crop's top-left in the resized photo + target size, per image."""
    from dreamy.training import sdxl_setup

    seen = []
    real = sdxl_setup.sdxl_trainables

    def hooked(*args, **kwargs):
        tr = real(*args, **kwargs)
        tr.unet.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"].tolist()), with_kwargs=True)
        return tr

    monkeypatch.setattr(sdxl_setup, "sdxl_trainables", hooked)
    images = captioned(tmp_path / "photos", sizes=((96, 64),))  # 96 wide, 64 high: the crop moves sideways
    run(images, tmp_path / "m", "ids", {"max_train_steps": 3, "checkpointing_steps": 3, "validation_seeds": "",
                                        "crop": crop, "mode": "lora"})
    assert len(seen) == 3
    for (row,) in seen:
        h, w, top, left, th, tw = row
        assert (h, w, top, th, tw) == (64, 96, 0, 64, 64)
        assert left == 16 if crop == "center" else 0 <= left <= 32
    if crop == "random":
        assert len({row[0][3] for row in seen}) > 1  # each step's own crop, recorded


def test_the_gpu_bench_runs_tiny_on_the_cpu(tmp_path):
    """``python -m bench.train --arch sdxl --preset word-style`` at tiny size: the recipe trains, losses finite."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from bench.train_sdxl import main, write_full_vocab_tokenizer

    out = tmp_path / "b.json"
    result = main(["--tiny", "--steps", "3", "--warmup", "1", "--out", str(out)])
    assert json.loads(out.read_text())["ours"]["finite_loss"] and result["ours"]["steps_total"] == 3
    assert result["recipe"]["mode"] == "pivotal" and result["recipe"]["lora_rank"] == 16
    # the full-size model's tokenizers keep CLIP's 49408 ids, so pivotal tuning appends at 49408
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_full_vocab_tokenizer(tmp_path / "tok", "!"))
    assert len(tok) == 49408 and tok.pad_token == "!" and max(tok("a figure dancing").input_ids) == 49407
    tok.add_tokens(["<s0>", "<s1>"], special_tokens=True)
    assert tok.convert_tokens_to_ids(["<s0>", "<s1>"]) == [49408, 49409]
