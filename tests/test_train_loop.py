"""The Train engine on the tiny model: exact resume, cooperative stop, checkpoints, validation, logs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dreamy.errors import LockedFieldError
from dreamy.events import CancelToken
from dreamy.png.metadata import read_recipe
from dreamy.training import CheckpointSaved, Finished, StepDone, TrainError, ValidationDone, train
from dreamy.training.checkpoints import list_checkpoints, read_masters
from dreamy.training.data import TrainDataError

# Tiny, fast runs: 64 px, a few steps; validation renders at 64 px with 4 DDIM steps.
QUICK = {"resolution": 64, "max_train_steps": 4, "checkpointing_steps": 2, "validation_seeds": "",
         "learning_rate": 1e-4}
VALIDATION = {"width": 64, "height": 64, "steps": 4}


def photos(folder, n=3, size=(96, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", size, (40 * i + 30, 120, 200 - 50 * i))
        im.paste((250, 250, 20), (10 * i, 5, 10 * i + 30, 40))
        im.save(folder / f"photo{i}.png")
    return folder


def run(images, models, name, overrides, cancel_at=None, **kwargs):
    token = CancelToken()
    events = []
    for ev in train(images, name=name, base="tiny", models_dir=models, overrides={**QUICK, **overrides},
                    unlock=True, validation=VALIDATION, cancel=token, **kwargs):
        events.append(ev)
        if cancel_at is not None and isinstance(ev, StepDone) and ev.step == cancel_at:
            token.cancel()
    return events


def same(a, b) -> bool:
    """Deep, exact equality of nested optimizer states (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def final_state(run_dir):
    last = list_checkpoints(run_dir)[-1][1]
    state = torch.load(last / "resume" / "state.pt", weights_only=True)
    return read_masters(last), state


@pytest.mark.parametrize("mode", ["full", "fused", "lora"])
def test_resume_is_bit_identical_even_within_an_epoch(tmp_path, mode):
    """5 steps straight == 2 steps, stop, resume, 3 steps: weights, optimizer state and losses.

    3 images, batch 1, 2 micro-steps per step: the stop at step 2 falls on micro-step 4, in the
    middle of the second epoch. Random crops and per-step VAE encoding make the replayed data
    order and randomness visible in the result. Full mode uses bitsandbytes' AdamW8bit.
    """
    images = photos(tmp_path / "photos")
    settings = {"mode": mode, "max_train_steps": 5, "gradient_accumulation_steps": 2, "crop": "random",
                "checkpointing_steps": 10, "lr_scheduler": "linear", "lr_warmup_steps": 1}
    if mode == "lora":
        settings.update(lora_text_encoder=True, optimizer="adamw")
    if mode == "fused":
        settings.update(mode="full", fused_params=True)
    run(images, tmp_path / "m", "straight", settings)
    stopped = run(images, tmp_path / "m", "split", settings, cancel_at=2)
    assert isinstance(stopped[-1], Finished) and stopped[-1].stopped and stopped[-1].step == 2
    assert [e.step for e in stopped if isinstance(e, CheckpointSaved)] == [2]
    resumed = run(images, tmp_path / "m", "split", settings, resume=True)
    assert resumed[0].resumed_from == 2 and [e.step for e in resumed if isinstance(e, StepDone)] == [3, 4, 5]

    (w1, s1), (w2, s2) = final_state(tmp_path / "m" / "straight"), final_state(tmp_path / "m" / "split")
    assert w1.keys() == w2.keys() and len(w1) > 10
    assert all(torch.equal(w1[k], w2[k]) for k in w1), [k for k in w1 if not torch.equal(w1[k], w2[k])][:3]
    assert same(s1["optimizer"], s2["optimizer"]) and s1["optimizer"]["state"]
    log = [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (tmp_path / "m" / "straight" / "logs" / "loss.jsonl").open())]
    log2 = [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, (tmp_path / "m" / "split" / "logs" / "loss.jsonl").open())]
    assert log == log2 and [s for s, _, _ in log] == [1, 2, 3, 4, 5]


def test_fused_params_train_exactly_like_separate_ones(tmp_path):
    """One flat buffer for all weights changes the kernels, not the arithmetic (torch AdamW, no clip)."""
    images = photos(tmp_path / "photos", n=2)
    common = {"optimizer": "adamw", "max_grad_norm": 0.0, "max_train_steps": 3, "checkpointing_steps": 3}
    run(images, tmp_path / "m", "separate", common)
    run(images, tmp_path / "m", "fused", {**common, "fused_params": True})
    (w1, _), (w2, _) = final_state(tmp_path / "m" / "separate"), final_state(tmp_path / "m" / "fused")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_checkpoints_validation_grid_and_loss_plot(tmp_path, tiny_model):
    images = photos(tmp_path / "photos", n=2)
    events = run(images, tmp_path / "m", "corridor", {"validation_seeds": "3,7", "checkpoints_total_limit": 2,
                                                      "checkpointing_steps": 1, "max_train_steps": 3})
    run_dir = tmp_path / "m" / "corridor"
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [1, 2, 3]
    # the total limit pruned step 1, only after step 3 was complete; the two newest keep a resume state
    # (the one before is the fallback should the newest be damaged)
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 3]
    assert (run_dir / "checkpoints" / "step-0002" / "resume" / "state.pt").is_file()
    assert (run_dir / "checkpoints" / "step-0003" / "resume" / "state.pt").is_file()
    assert not any(p.name.startswith(".") for p in (run_dir / "checkpoints").iterdir())

    vals = [e for e in events if isinstance(e, ValidationDone)]
    assert [v.step for v in vals] == [0, 1, 2, 3]  # step 0 is the base model's baseline
    names = sorted(p.name for p in (run_dir / "validation").glob("step*.png"))
    assert names == [f"step{s:06d}-seed{seed:06d}.png" for s in range(4) for seed in (3, 7)]
    with Image.open(vals[-1].grid) as grid:
        assert grid.size[1] > grid.size[0]  # 4 rows x 2 seeds
        assert json.loads(grid.text["dreamy_grid"]) == {"steps": [0, 1, 2, 3], "seeds": [3, 7]}
    r = read_recipe(run_dir / "validation" / "step000002-seed000007.png")
    assert (r.job, r.seed, r.model.checkpoint_step, r.settings.prompt) == (
        "dream", 7, 2, "monumental, dramatic, atmospheric, transcendent")
    assert set(r.unlocked) == {"width", "height", "steps"}  # the smaller validation renders are on record
    assert r.model.source == str((run_dir / "checkpoints" / "step-0002").resolve())
    base = read_recipe(run_dir / "validation" / "step000000-seed000003.png")
    assert base.model.kind == "tiny" and base.model.sha256 == tiny_model.ref.sha256
    fin = events[-1]
    assert isinstance(fin, Finished) and not fin.stopped and fin.checkpoint.name == "step-0003"
    assert fin.files["plot"].is_file() and fin.files["grid"].is_file()
    rows = [json.loads(line) for line in fin.files["log"].read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3] and all(row["lr"] == 1e-4 for row in rows)
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["base"]["sha256"] == tiny_model.ref.sha256 and len(run_json["images"]) == 2


def test_refusals_have_one_sentence(tmp_path):
    images = photos(tmp_path / "photos", n=1)
    with pytest.raises(LockedFieldError, match="'learning_rate' is locked by preset 'sweet-spot'"):
        next(train(images, name="x", overrides={"learning_rate": 1e-3}, models_dir=tmp_path))
    with pytest.raises(TrainError, match="not a usable run name"):
        next(train(images, name="../escape", models_dir=tmp_path))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(TrainDataError, match=r"No usable training image in .*empty \(notes.txt: a caption with no image of the same name\)"):
        next(train(tmp_path / "empty", name="x", models_dir=tmp_path))
    run(images, tmp_path / "m", "once", {"max_train_steps": 1})
    with pytest.raises(TrainError, match="already exists with 1 checkpoint"):
        run(images, tmp_path / "m", "once", {"max_train_steps": 1})
    with pytest.raises(TrainError, match="cannot resume with a different 'learning_rate'"):
        run(images, tmp_path / "m", "once", {"max_train_steps": 2, "learning_rate": 5e-5}, resume=True)
    with pytest.raises(TrainError, match="no checkpoint with a resume state"):
        run(images, tmp_path / "m", "never", {}, resume=True)
