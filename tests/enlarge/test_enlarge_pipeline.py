"""``enlarge()`` end to end on the tiny demo (CPU): PNG with recipe, locks, seeds, cancel, bad input, sources."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dreamy.enlarging.backbone import apply_backbone
from dreamy.enlarging.models import load_enlarge_models
from dreamy.enlarging.pipeline import enlarge
from dreamy.enlarging.resize import target_size
from dreamy.enlarging.sources import load_base, locate_base, locate_supir
from dreamy.enlarging.tiny import ensure_tiny_enlarge
from dreamy.errors import Cancelled, DreamyError, LockedFieldError, SourceError
from dreamy.events import CancelToken
from dreamy.images import ImageError
from dreamy.png.metadata import read_recipe

TINY = dict(supir="tiny", base="tiny", device="cpu")
QUICK = dict(overrides={"upscale": 2.0, "steps": 3}, unlock=["upscale", "steps"])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core CPU run several times faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "keeper.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_the_locked_recipe_enlarges_64_to_256_with_its_recipe_in_the_png(picture, tmp_path):
    events = []
    result = enlarge(picture, "biased-dreams", out_dir=tmp_path, on_progress=events.append, seed=7, **TINY)
    assert result.path.parent == tmp_path and result.path.is_file()
    with Image.open(result.path) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), np.asarray(result.image))
    assert result.upscaled.size == result.stage1.size == (256, 256)
    recipe = read_recipe(result.path)
    assert recipe.job == "enlarge" and recipe.seed == 7 and recipe.unlocked == {}
    assert recipe.settings.upscale == 4.0 and recipe.settings.steps == 30
    assert recipe.model.kind == "tiny" and len(recipe.model.sha256) == 64
    run = recipe.runtime
    assert run["base_model"]["kind"] == "tiny" and len(run["base_model"]["sha256"]) == 64
    assert run["input"]["sha256"] == hashlib.sha256(picture.read_bytes()).hexdigest()
    assert run["output_size"] == [256, 256] and run["tiled"] is True and "demo" in run
    steps = [e for e in events if e.message.startswith("step")]
    assert any("tiles 1-9 of 9" in e.message for e in steps)
    assert events[-1].fraction == 1.0 and events[-1].message.startswith("saved")


def test_same_seed_same_picture_other_seed_other_picture(picture, tmp_path):
    first = enlarge(picture, out_dir=tmp_path / "a", seed=1, **QUICK, **TINY)
    again = enlarge(picture, out_dir=tmp_path / "b", seed=1, **QUICK, **TINY)
    other = enlarge(picture, out_dir=tmp_path / "c", seed=2, **QUICK, **TINY)
    assert first.image.size == (128, 128)
    assert first.path.read_bytes() == again.path.read_bytes()
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))
    assert read_recipe(first.path).unlocked == {"upscale": {"preset": 4.0, "value": 2.0},
                                                "steps": {"preset": 30, "value": 3}}


def test_tiled_and_untiled_both_run(picture, tmp_path):
    kwargs = dict(overrides={"steps": 2}, unlock=["steps"], **TINY)
    tiled = enlarge(picture, out_dir=tmp_path, tiled=True, **kwargs)
    untiled = enlarge(picture, out_dir=tmp_path / "u", tiled=False, **kwargs)
    assert read_recipe(tiled.path).runtime["sampling_tiles"]["size"] == 16
    assert read_recipe(untiled.path).runtime["tiled"] is False
    assert tiled.image.size == untiled.image.size == (256, 256)


def test_a_locked_setting_is_refused_before_any_work(picture, tmp_path):
    with pytest.raises(LockedFieldError, match="'upscale' is locked"):
        enlarge(picture, overrides={"upscale": 2.0}, out_dir=tmp_path / "out", **TINY)
    assert not (tmp_path / "out").exists()


def test_stop_raises_cancelled_and_writes_nothing(picture, tmp_path):
    token = CancelToken()

    def on_progress(event):
        if event.step >= 1:
            token.cancel()

    with pytest.raises(Cancelled):
        enlarge(picture, out_dir=tmp_path / "out", on_progress=on_progress, cancel=token, **QUICK, **TINY)
    assert not (tmp_path / "out").exists()


def test_bad_inputs_get_one_sentence(picture, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    with pytest.raises(ImageError, match="not an image"):
        enlarge(fake, out_dir=tmp_path, **TINY)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 64)).save(small)
    with pytest.raises(ImageError, match="at least 64 px"):
        enlarge(small, out_dir=tmp_path, **TINY)
    big = tmp_path / "big.png"
    Image.new("RGB", (2100, 2100)).save(big)
    with pytest.raises(DreamyError, match="megapixel limit"):
        enlarge(big, out_dir=tmp_path, **TINY)
    with pytest.raises(DreamyError, match="seed"):
        enlarge(picture, out_dir=tmp_path, seed=-1, **TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "fake.png", "small.png"]


def test_greyscale_with_alpha_is_converted_and_noted(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("LA", (64, 64), (128, 200)).save(path)
    result = enlarge(path, out_dir=tmp_path, **QUICK, **TINY)
    assert result.image.mode == "RGB" and result.notes
    assert read_recipe(result.path).runtime["input"]["notes"] == result.notes
    clear = enlarge(Image.new("RGBA", (64, 64), (10, 20, 30, 0)), out_dir=tmp_path, **QUICK, **TINY)
    assert clear.path.name == "picture-x2-seed000000.png" and np.asarray(clear.upscaled).min() == 255
    assert read_recipe(clear.path).runtime["input"]["hash_of"] == "pixels"


def test_output_size_follows_supir():
    assert target_size(512, 512, 4) == (2048, 2048)
    assert target_size(500, 300, 4) == (1984, 1216)  # sides rounded half to even onto multiples of 32
    assert target_size(100, 50, 2) == (2048, 1024)  # the short side raised to 1024
    assert target_size(64, 64, 2, min_side=64) == (128, 128)


def test_cli_enlarges_and_refuses_locks(picture, tmp_path, capsys):
    from dreamy.cli.main import main

    args = ["enlarge", str(picture), "--out", str(tmp_path), "--supir", "tiny", "--base", "tiny", "--device", "cpu"]
    assert main([*args, "--scale", "2"]) == 2
    assert "--unlock upscale" in capsys.readouterr().err
    assert main([*args, "--scale", "2", "--set", "steps=2", "--unlock", "upscale,steps", "--seed", "5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.endswith("keeper-x2-seed000005.png") and read_recipe(out).seed == 5


def test_sources_refuse_what_does_not_fit(tmp_path, tiny_dir):
    _, supir_file = ensure_tiny_enlarge()
    with pytest.raises(SourceError, match="tiny demo"):
        load_enlarge_models("tiny", str(tiny_dir), device="cpu")
    with pytest.raises(SourceError, match="Stable Diffusion 1.x"):
        load_base(locate_base(str(tiny_dir)), torch.float32)
    with pytest.raises(SourceError, match="No model file"):
        locate_supir(str(tmp_path / "missing.safetensors"))
    with pytest.raises(SourceError, match="not in the local Hugging Face cache"):
        locate_supir("SUPIR-v0Q")
    renamed = tmp_path / "SUPIR-v0F-copy.safetensors"
    shutil.copy(supir_file, renamed)
    with pytest.raises(SourceError, match="is a SUPIR-v0F checkpoint but the recipe asks for SUPIR-v0Q"):
        load_enlarge_models(str(renamed), "tiny", device="cpu")


def test_sdxl_weights_inside_a_supir_file_replace_the_base(tmp_path):
    base = load_base(locate_base("tiny"), torch.float32)
    unet, vae, te, te2 = base["unet"], base["vae"], base["text_encoder"], base["text_encoder_2"]
    q = te2.state_dict()
    key = next(k for k in q if k.endswith("layers.0.self_attn.q_proj.weight"))
    fused = torch.cat([torch.full_like(q[key], v) for v in (1.0, 2.0, 3.0)])
    conv = torch.full_like(unet.conv_in.weight, 0.5)
    attn = torch.full_like(vae.encoder.mid_block.attentions[0].to_q.weight, 0.25)[:, :, None, None]
    backbone = {
        "model.diffusion_model.input_blocks.0.0.weight": conv,
        "first_stage_model.encoder.mid.attn_1.q.weight": attn,
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": fused,
    }
    assert apply_backbone(backbone, unet, vae, te, te2) == 3
    assert torch.equal(unet.conv_in.weight, conv)
    assert torch.equal(vae.encoder.mid_block.attentions[0].to_q.weight, attn[:, :, 0, 0])
    layer = te2.state_dict()
    assert [float(layer[key.replace("q_proj", p)].mean()) for p in ("q_proj", "k_proj", "v_proj")] == [1.0, 2.0, 3.0]
    with pytest.raises(SourceError, match="does not have"):
        apply_backbone({"model.diffusion_model.nonsense.weight": conv}, unet, vae, te, te2)


def test_a_model_that_paints_nan_is_refused_and_nothing_is_saved(picture, tmp_path):
    """Damaged weights (one NaN in the VAE's last convolution) must not become a saved picture."""
    from dreamy.errors import NonFiniteOutput

    models = load_enlarge_models("tiny", "tiny", device="cpu")
    with torch.no_grad():
        models.vae.decoder.conv_out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteOutput, match="NaN"):
        enlarge(picture, "biased-dreams", out_dir=tmp_path / "out", models=models, **QUICK)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
