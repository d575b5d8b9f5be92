"""One model, one "Model hash": a training step dreamed from its checkpoint, its diffusers export or its
single-file export records A1111's hash of that single file (issue 16, item 6)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load, save
from test_train_loop import photos, run

from dreamy.dreaming.dreams import dream_iter
from dreamy.models import a1111_hash, safetensors_file, sources
from dreamy.models.checkpoints import checkpoint_sha256, damage, read_meta
from dreamy.png.metadata import parse_a1111, read_recipe
from dreamy.training import export

QUICK_DREAM = {"width": 64, "height": 64, "steps": 2}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_hash(source, out, **kw) -> str | None:
    """The "Model hash" of a picture dreamed from ``source`` (None when it has none), via the PNG itself."""
    model = sources.load_model(str(source), device="cpu", **kw)
    png = next(dream_iter(model, seeds=[3], overrides=QUICK_DREAM, unlock=True, out_dir=out)).path
    with Image.open(png) as im:
        fields = parse_a1111(im.text["parameters"])
    assert read_recipe(png).model.a1111_hash == fields.get("Model hash")
    return fields.get("Model hash")


# ---- the writer: the same tensors and metadata, the same bytes ----

TENSORS = {"b": torch.randn(3, 5), "a": torch.randn(2).half(), "c": torch.arange(4), "flag": torch.tensor(True),
           "bf": torch.randn(3).bfloat16(), "empty": torch.empty(0, 4), "i": torch.arange(3, dtype=torch.int32),
           "scalar": torch.tensor(2.0), "d": torch.randn(2, dtype=torch.float64), "ü": torch.ones(1)}


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"note": 'quote " backslash \\ line\nbreak ü'}])
def test_the_writer_lays_files_out_as_the_library_does(metadata):
    mine = b"".join(bytes(p) for p in safetensors_file.chunks(TENSORS, metadata))
    assert mine == save(TENSORS, metadata=metadata)  # one metadata key: byte for byte the library's file


def test_the_writer_is_deterministic_where_the_library_is_not(tmp_path):
    meta = {"dreamy_step": "2", "dreamy_recipe": "{}", "format": "pt"}
    path = tmp_path / "x.safetensors"
    sha = safetensors_file.write(path, TENSORS, meta)
    assert sha == _sha(path) == safetensors_file.sha256(TENSORS, dict(reversed(meta.items())))
    back = load(path.read_bytes())
    assert all(torch.equal(back[k], TENSORS[k]) for k in TENSORS)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata() == meta
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary file left


# ---- one training step, three forms, one hash ----

@pytest.mark.parametrize("settings", [
    {"max_train_steps": 2},  # a full fine-tune: the trained UNet replaces the base's
    {"mode": "pivotal", "optimizer": "prodigy", "learning_rate": 1.0, "text_encoder_lr": 1.0, "max_train_steps": 2,
     "ti_fraction": 0.5},  # LoRA merged into the base (rounding matters) and new tokens cut from the file
], ids=["full", "pivotal"])
def test_a_step_has_one_model_hash_from_its_checkpoint_and_both_exports(tmp_path, tiny_dir, settings):
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "one", settings)
    step = tmp_path / "m" / "one" / "checkpoints" / "step-0002"
    meta = read_meta(step)
    content = checkpoint_sha256(step, meta["base"]["sha256"])

    first = _model_hash(step, tmp_path / "d1")  # before any export: computed, then kept beside the marker
    record = json.loads((step / a1111_hash.RECORD_FILE).read_text())
    assert record["folder_sha256"] == content and record["single_file_sha256"][:10] == first
    assert checkpoint_sha256(step, meta["base"]["sha256"]) == content and damage(step, resume=True) is None

    files = export(step, tmp_path / "out", formats=["diffusers", "single-file"])
    file_hash = _sha(files["single_file"])[:10]
    assert first == file_hash  # what A1111 and Civitai show for the exported .safetensors
    assert _model_hash(files["diffusers"], tmp_path / "d2") == file_hash
    assert _model_hash(files["single_file"], tmp_path / "d3", config_dir=tiny_dir) == file_hash
    assert _model_hash(step, tmp_path / "d4") == file_hash  # now from the record

    card = export(step, tmp_path / "card", formats=["single-file", "card"])["card"].read_text()
    assert f"Model hash (as A1111, Forge and Civitai show it): `{file_hash}`" in card

    again = export(step, tmp_path / "again", formats=["single-file"])  # an export is byte-deterministic
    assert again["single_file"].read_bytes() == files["single_file"].read_bytes()

    # a folder only Dreamy's export wrote the record for: diffusers-only exports get one too
    only = export(step, tmp_path / "only", formats=["diffusers"])
    assert _model_hash(only["diffusers"], tmp_path / "d5") == file_hash


def test_a_checkpoint_loaded_on_another_device_or_dtype_still_gets_the_cpu_fp32_hash(tmp_path):
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "lora", {"mode": "lora", "lora_rank": 4, "max_train_steps": 2,
                                                                     "learning_rate": 3e-2, "optimizer": "adamw"})
    step = tmp_path / "m" / "lora" / "checkpoints" / "step-0002"
    expected = sources.load_model(str(step), device="cpu").ref.single_file_sha256
    model = sources.load_model(str(step), device="cpu")
    (step / a1111_hash.RECORD_FILE).unlink()
    model.dtype = torch.float16  # as on a GPU: the weights in hand are not the export's, so it loads them again
    calls = []
    real = sources.load_model

    def spy(spec, **kw):
        calls.append(kw)
        return real(spec, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "load_model", spy)
        got = sources._with_a1111_hash(model, step, str(step), read_meta(step)).ref.single_file_sha256
    assert got == expected and calls[0] == {"device": "cpu", "precision": "fp32"}  # then its base, inside
    files = export(step, tmp_path / "out", formats=["single-file"])
    assert _sha(files["single_file"]) == expected


def test_folders_without_a_record_claim_no_a1111_hash(tmp_path, tiny_dir):
    assert _model_hash(tiny_dir, tmp_path / "a") is None  # a plain diffusers folder: no single file known
    png = next((tmp_path / "a").glob("seed*.png"))
    assert len(read_recipe(png).model.sha256) == 64  # Dreamy's own content hash stays in the recipe
    with Image.open(png) as im:
        assert "Model hash" not in im.text["parameters"] and "Model: " in im.text["parameters"]

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    record = {"format": 1, "folder_sha256": sources.folder_sha256(copy), "single_file_sha256": "ab" * 32}
    (copy / a1111_hash.RECORD_FILE).write_text(json.dumps(record))
    assert sources.load_model(str(copy), device="cpu").ref.a1111_hash == "abababababab"[:10]
    weights = next((copy / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # the weights changed after the record
    assert sources.load_model(str(copy), device="cpu").ref.single_file_sha256 is None
