"""Dreamy's exports in the transformers-4.x world (kohya sd-scripts pins transformers 4.54 and diffusers
0.32; A1111 and many tools pin 4.x): stock diffusers there loads the diffusers folder with default
arguments and its fp16 variant, and the single file with the embedding, and dreams Dreamy's picture.

That world runs in an isolated environment (``bash .ci/interop-venv DIR``; requirements-interop.txt),
named by ``DREAMY_INTEROP_PYTHON=DIR/bin/python``, through tests/interop/dream_stock.py. Without it the
test is skipped, saying how to make it; .ci/run always makes it, and in CI (``CI=true``) a missing or
broken environment fails instead.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from test_train_export import ours
from test_train_loop import photos, run

from conftest import REPO
from dreamy.models.sources import load_model
from dreamy.recipes.presets import load_preset
from dreamy.training import export

ENV = "DREAMY_INTEROP_PYTHON"
SCRIPT = REPO / "tests" / "interop" / "dream_stock.py"
SIZE, STEPS, SEED, GUIDANCE = 64, 4, 11, 3.0  # test_train_export's ours(): the same picture settings


def _fail_or_skip(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI must run this test: .ci/run makes the environment)")
    pytest.skip(f"{why}: make it with `bash .ci/interop-venv DIR` and set {ENV}=DIR/bin/python")


def _clean_env() -> dict[str, str]:
    """This process's environment without what would leak Dreamy's packages into the other interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def interop_python() -> str:
    """The isolated environment's interpreter, checked to import transformers 4.x and diffusers 0.3x."""
    python = os.environ.get(ENV, "").strip()
    if not python:
        _fail_or_skip(f"{ENV} is not set, so there is no transformers-4.x environment")
    probe = [python, "-c", "import diffusers, torch, transformers; print(transformers.__version__, diffusers.__version__)"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=300, env=_clean_env())
    except OSError as e:
        pytest.fail(f"{ENV}={python} cannot be run ({e}); re-make it with `bash .ci/interop-venv DIR`.")
    if done.returncode != 0:
        pytest.fail(f"{ENV}={python} does not import torch, transformers and diffusers: {done.stderr[-600:]}")
    tf, df = done.stdout.split()[-2:]
    assert tf.startswith("4.") and df.startswith("0.3"), f"{ENV} has transformers {tf} and diffusers {df}"
    return python


def test_exports_dream_the_same_picture_with_transformers_4_and_diffusers_0_32(tmp_path, tiny_dir, interop_python):
    settings = {"mode": "pivotal", "optimizer": "prodigy", "learning_rate": 1.0, "text_encoder_lr": 1.0,
                "max_train_steps": 2, "ti_fraction": 0.5}
    run(photos(tmp_path / "photos", n=2), tmp_path / "m", "Pivot", settings)  # new tokens, LoRA, text encoder
    step = tmp_path / "m" / "Pivot" / "checkpoints" / "step-0002"
    files = export(step, tmp_path / "out", formats=["diffusers", "single-file", "lora"])
    prompt, named = "a photo of <s0><s1> person", "a photo of pivot_emb person"
    request = {
        "folder": str(files["diffusers"]), "prompt": prompt, "seed": SEED, "steps": STEPS, "guidance": GUIDANCE,
        "size": SIZE, "scheduler": load_preset("biased-dreams").dream.scheduler,
        "loads": [
            {"how": "folder", "prompt": prompt},
            {"how": "fp16", "prompt": prompt},
            # the single file keeps CLIP's vocabulary: its configs and tokenizer come from the plain base
            # folder and the trigger from the embedding, as the model card says for diffusers
            {"how": "single_file", "file": str(files["single_file"]), "config": str(tiny_dir),
             "embedding": str(files["embeddings"]), "token": files["embeddings"].stem, "prompt": named},
        ],
    }
    (tmp_path / "request.json").write_text(json.dumps(request), encoding="utf-8")
    done = subprocess.run([interop_python, str(SCRIPT), str(tmp_path / "request.json"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=600, env=_clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    assert got["versions"][1].startswith("4.") and got["versions"][2].startswith("0.3")

    # the text encoder's keys all used, none invented; the slow tokenizer splits as Dreamy's does
    assert got["te_missing"].size == 0 and got["te_unexpected"].size == 0
    model = load_model(str(step), device="cpu")
    assert got["token_ids"].tolist() == model.tokenizer(prompt).input_ids
    assert [str(d) for d in got["dtypes_folder"]] == ["torch.float32"] * 3  # default arguments: fp32
    assert [str(d) for d in got["dtypes_fp16"]] == ["torch.float16"] * 3

    mine = ours(model, prompt).astype(np.int16)
    # The folder holds the checkpoint's fp32 weights and the same torch runs the same arithmetic: the
    # same picture, bit for bit (measured: 0 levels apart).
    assert np.array_equal(got["image_folder"].astype(np.int16), mine)
    # fp16 weights (the variant computing in fp16, the single file in fp32) round each weight to 11
    # bits: measured at most 1 level of 255 apart; 2 leaves room for another CPU's fp16 kernels.
    for how in ("fp16", "single_file"):
        assert np.abs(got[f"image_{how}"].astype(np.int16) - mine).max() <= 2, how
