"""Data-parallel training under ``accelerate launch``: 2 CPU processes train like 1 with the global batch.

Why a tolerance and not bit equality with the one-process run: each process computes its own rows,
so the weight gradients are two per-rank sums added by the all-reduce instead of one sum over the
batch of 2: the same numbers in another order, off by float rounding (~1e-7 relative). The losses,
whose forward passes are row by row the same, agree to ~1e-7. Adam divides by sqrt(v), which lifts
the rounding of near-zero gradients to a small fraction of the learning rate, so after 3 steps the
weights agree to within 0.2 x lr per element while training moved them by several lr. Resume with 2
processes is bit-identical (the all-reduce is deterministic), as it is with one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import final_state, photos, run, same

from conftest import REPO
from dreamy.layout import checkpoints as list_checkpoints
from dreamy.models.checkpoints import read_meta
from dreamy.models.sources import load_model
from dreamy.training import TrainError
from dreamy.training.checkpoints import read_masters

LR = 1e-4
# 3 images, global batch 2, 2 micro-steps per step: every other micro-step is the short batch of an
# epoch's end (1 image), so the second process pads its row with a weight-0 repeat.
SETTINGS = {"max_train_steps": 3, "checkpointing_steps": 1, "learning_rate": LR, "crop": "random",
            "gradient_accumulation_steps": 2, "keep_resume_state": "all"}  # 8-bit AdamW, clip 1.0: the preset's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(images, models, name, *extra):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "dreamy", "train", "--preset", "sweet-spot", "--base", "tiny", "--images", str(images),
           "--name", name, "--models-dir", str(models), "--device", "cpu", "--unlock", "--steps", "3",
           "--checkpoint-every", "1", "--resolution", "64", "--lr", str(LR), "--set", 'crop="random"',
           "--set", "gradient_accumulation_steps=2", "--set", 'keep_resume_state="all"',
           "--validation-seeds", "5", "--validation-size", "64", "--validation-steps", "2", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "logs" / "loss.jsonl").open())]


@pytest.mark.slow  # two launches of 2 CPU processes plus a one-process run (~40 s on 2 cores, mostly imports)
def test_two_processes_train_like_one_with_the_global_batch_and_resume_exactly(tmp_path, tiny_dir):
    # tiny_dir: the tiny model is generated once here, not by two processes at once
    images = photos(tmp_path / "photos", n=3)
    models = tmp_path / "models"
    p = _launch(images, models, "two")
    par = models / "two"

    # one set of files, written once by the main process
    assert p.stdout.count("checkpoint: ") == 1 and p.stderr.count("Data-parallel over 2 processes") == 1
    assert [s for s, _ in list_checkpoints(par)] == [1, 2, 3]
    assert not [f for f in par.rglob(".*")]  # no temporary or trash folder left
    assert [s for s, _ in _losses(par)] == [1, 2, 3]
    assert sorted(f.name for f in (par / "validation").glob("step*.png")) == [
        f"step{s:06d}-seed000005.png" for s in range(4)]
    assert json.loads((par / "run.json").read_text())["processes"] == 2
    for _, path in list_checkpoints(par):
        assert read_meta(path)["processes"] == 2
        unet = load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))
        masters = read_masters(path)  # exact fp32 masters (stored as residuals over the fp16 parts)
        assert all(torch.equal(v, masters[f"unet.{k}"].half()) for k, v in unet.items())

    # the same training in one process with batch 2 (train_batch_size x processes)
    run(images, models, "one", {**SETTINGS, "train_batch_size": 2})
    (w2, _), (w1, _) = final_state(par), final_state(models / "one")
    tiny = load_model("tiny", device="cpu", precision="fp32")
    w0 = {f"unet.{k}": v for k, v in tiny.unet.state_dict().items()}
    w0 |= {f"text_encoder.{k}": v for k, v in tiny.text_encoder.state_dict().items()}
    assert w1.keys() == w2.keys() and len(w1) > 10
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    apart = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 2 * LR and apart < 0.2 * LR, (moved, apart)
    for (s1, l1), (s2, l2) in zip(_losses(models / "one"), _losses(par), strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5)

    # resume with 2 processes from step 2 (a copy of the run, as if stopped there): bit-identical
    shutil.copytree(par, models / "split")
    shutil.rmtree(models / "split" / "checkpoints" / "step-0003")
    _launch(images, models, "split", "--resume")
    (w3, s3), (w2, s2) = final_state(models / "split"), final_state(par)
    assert all(torch.equal(w3[k], w2[k]) for k in w2) and same(s3["optimizer"], s2["optimizer"])
    assert _losses(models / "split") == _losses(par)

    # the global batch depends on the number of processes, so resuming with another is refused
    with pytest.raises(TrainError, match=r"trained by 2 process\(es\).*resume it with 2"):
        run(images, models, "split", {**SETTINGS, "max_train_steps": 4}, resume=True)
