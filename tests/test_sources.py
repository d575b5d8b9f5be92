"""Model sources: tiny, hub cache, folders, and one clear sentence for every failure."""

import json
import shutil

import pytest
import torch

from dreamy.errors import DreamyError, SourceError
from dreamy.models.sources import classify, folder_sha256, load_model


def test_tiny_model_is_generated_deterministically(tmp_path):
    from dreamy.models.tiny import TINY_LABEL, save_tiny_model

    a, b = save_tiny_model(tmp_path / "a"), save_tiny_model(tmp_path / "b")
    assert folder_sha256(a) == folder_sha256(b)
    m = load_model("tiny", device="cpu")
    assert m.is_demo and m.ref.label == TINY_LABEL and "noise-like" in TINY_LABEL
    assert m.dtype == torch.float32  # the CPU computes in fp32 whatever the preset's precision
    assert m.ref.sha256 == folder_sha256(a)


def test_local_folder_loads_through_from_pretrained(tiny_dir, tmp_path):
    run = tmp_path / "my-run" / "checkpoint-250"
    shutil.copytree(tiny_dir, run)
    m = load_model(str(run), device="cpu")
    assert m.ref.kind == "folder" and m.ref.checkpoint_step == 250 and m.ref.label == "checkpoint-250"
    tiny = load_model("tiny", device="cpu")
    assert m.ref.sha256 == tiny.ref.sha256
    for a, b in zip(m.unet.state_dict().values(), tiny.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _fake_hub_cache(hf_home, repo_id, src):
    """Lay out a model as huggingface_hub caches it (refs/main -> snapshots/<commit>/...)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_loads_offline_from_the_cache(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path, "someone/tiny-sd", tiny_dir)
    m = load_model("someone/tiny-sd", device="cpu")
    assert m.ref.kind == "hub" and m.ref.label == "someone/tiny-sd"
    assert m.ref.sha256 == folder_sha256(tiny_dir)


def test_hub_id_not_cached_and_offline_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SourceError, match=r"'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the local "
                       r"Hugging Face cache and the hub could not be reached.*--model tiny"):
        load_model("stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("./no/such/folder", "No model file or folder at './no/such/folder'"),
        ("missing.safetensors", "No model file or folder at 'missing.safetensors'"),
        ("hello world", "is not a model source"),
        ("", "is not a model source"),
    ],
)
def test_bad_sources_get_one_clear_sentence(spec, message):
    with pytest.raises(SourceError, match=message):
        classify(spec)


def test_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(SourceError, match="is a folder but not a diffusers Stable Diffusion model"):
        load_model(str(tmp_path / "photos"), device="cpu")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="a model file must be"):
        load_model(str(tmp_path / "notes.txt"), device="cpu")


def test_an_sdxl_folder_is_refused_where_sd15_is_needed(tmp_path):
    # Dream takes SDXL (expected_arch=None, tests/test_sdxl_dream.py); the default, Train's, is SD 1.x
    (tmp_path / "xl" / "unet").mkdir(parents=True)
    (tmp_path / "xl" / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": "text_time"}))
    with pytest.raises(SourceError, match="is an SDXL model; this needs a Stable Diffusion 1.x model"):
        load_model(str(tmp_path / "xl"), device="cpu")


def test_corrupt_weights_in_a_folder(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(SourceError, match=r"Could not load the unet of .*re-download or re-export it"):
        load_model(str(broken), device="cpu")
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(SourceError, match="has no tokenizer/ folder"):
        load_model(str(broken), device="cpu")


def test_device_policy_errors():
    from dreamy.models.devices import pick_device, pick_dtype

    assert pick_dtype("fp16", torch.device("cpu")) == torch.float32
    assert pick_dtype("fp16", torch.device("cuda")) == torch.float16
    with pytest.raises(DreamyError, match="not a device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DreamyError, match="sees no CUDA GPU; use --device cpu"):
            pick_device("cuda")


def test_single_file_model_dreams_like_its_folder(tiny_model, tiny_dir, tmp_path):
    """The tiny model exported as one A1111-layout .safetensors loads offline and dreams the same bits."""
    import hashlib

    import numpy as np

    from conftest import FAST
    from dreamy.dreaming.dreams import dream
    from dreamy.models.single_file import save_single_file

    path = save_single_file(tmp_path / "tiny.safetensors", unet=tiny_model.unet, vae=tiny_model.vae,
                            text_encoder=tiny_model.text_encoder, dtype=torch.float32)
    m = load_model(str(path), device="cpu", config_dir=tiny_dir)
    assert m.ref.kind == "file" and m.ref.label == "tiny"
    assert m.ref.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # A1111's model hash is its prefix
    a = dream(tiny_model, seeds=4, overrides=FAST, unlock=True)[0]
    b = dream(m, seeds=4, overrides=FAST, unlock=True)[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert b.recipe.model.short_hash == m.ref.sha256[:10]
