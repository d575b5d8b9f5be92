"""What users bring to a run: damaged checkpoints, changed photos, a loss that turns NaN (issue 14).

- Every file of a checkpoint records its size and sha256 in the marker; a damaged newest checkpoint
  (truncated, empty, same size but wrong bytes, missing) is named in one Notice, moved aside, and the
  run resumes bit-identically from the one before (the two newest keep their resume states); Dream
  refuses a damaged checkpoint in one sentence.
- run.json records the photos; resuming on others is refused with the differences, or allowed with
  ``allow_changed_photos`` / ``--allow-changed-photos`` and recorded with its step.
- A NaN/inf in the loss, the gradients or the weights stops the run with a TrainError naming the step;
  no checkpoint with non-finite weights is ever written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_train_loop import photos, run

from conftest import REPO
from dreamy.errors import SourceError
from dreamy.models.checkpoints import damage
from dreamy.models.sources import load_model
from dreamy.training import Finished, Notice, StepDone, TrainError
from dreamy.training.checkpoints import list_checkpoints

FULL_FILES = ["unet/diffusion_pytorch_model.safetensors", "unet/config.json", "text_encoder/model.safetensors",
              "text_encoder/config.json", "resume/masters.safetensors", "resume/state.pt", "dreamy-checkpoint.json"]
LORA_FILES = ["lora_unet.safetensors", "lora_text_encoder.safetensors"]
PIVOTAL_FILES = ["embeddings.safetensors"]
KINDS = ["truncated", "empty", "wrong-bytes", "missing"]
RUNS = {"full": {"mode": "full"},
        "lora": {"mode": "lora", "lora_text_encoder": True, "optimizer": "adamw"},
        "pivotal": {"mode": "pivotal", "optimizer": "adamw", "ti_fraction": 1.0}}


def spoil(path, kind):
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "wrong-bytes":  # same size, other bytes (a bad sector, a copy gone wrong)
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 16]) + data[mid + 16 :])
    else:
        path.unlink()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One 4-step run per mode, checkpoints at 2 and 4 (both keep their resume state)."""
    tmp = tmp_path_factory.mktemp("pristine")
    images = photos(tmp / "photos", n=2)
    for name, settings in RUNS.items():
        run(images, tmp / "m", name, settings)
    return tmp


def _copy(pristine, tmp_path, name):
    shutil.copytree(pristine / "m" / name, tmp_path / "m" / name)
    return tmp_path / "m" / name


CASES = ([("full", f, k) for f in FULL_FILES for k in KINDS] + [("lora", f, k) for f in LORA_FILES for k in KINDS]
         + [("pivotal", f, k) for f in PIVOTAL_FILES for k in KINDS])


@pytest.mark.parametrize(("name", "rel", "kind"), CASES, ids=[f"{n}-{r}-{k}" for n, r, k in CASES])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(pristine, tmp_path, name, rel, kind):
    run_dir = _copy(pristine, tmp_path, name)
    newest = run_dir / "checkpoints" / "step-0004"
    original = {k: v.clone() for k, v in load_file(str(newest / "resume" / "masters.safetensors")).items()}  # not mmapped
    spoil(newest / rel, kind)
    assert damage(newest) is not None
    events = run(pristine / "photos", tmp_path / "m", name, {**RUNS[name]}, resume=True)
    notes = [e.message for e in events if isinstance(e, Notice)]
    assert events[0].resumed_from == 2
    assert any(n.startswith("Checkpoint step-0004 is damaged (") and "resuming from step-0002" in n
               and "damaged-step-0004" in n for n in notes), notes
    assert [e.step for e in events if isinstance(e, StepDone)] == [3, 4]
    assert (run_dir / "checkpoints" / "damaged-step-0004").is_dir()  # kept for the user, out of the way
    redone = run_dir / "checkpoints" / "step-0004"
    assert damage(redone) is None
    again = load_file(str(redone / "resume" / "masters.safetensors"))
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)


@pytest.mark.parametrize("rel", [f for f in FULL_FILES if not f.startswith("resume/")])
@pytest.mark.parametrize("kind", KINDS)
def test_dream_refuses_a_damaged_checkpoint_in_one_sentence(pristine, tmp_path, rel, kind):
    run_dir = _copy(pristine, tmp_path, "full")
    step = run_dir / "checkpoints" / "step-0004"
    spoil(step / rel, kind)
    said = r"(?s)^Checkpoint '.*step-0004' is damaged \(.*\); load another checkpoint"
    if rel == "dreamy-checkpoint.json" and kind == "missing":  # without its marker it is no checkpoint at all
        said = r"^'.*step-0004' has no vae/, tokenizer/ folder; it is not a complete Stable Diffusion model\.$"
    with pytest.raises(SourceError, match=said):
        load_model(str(step), device="cpu")


@pytest.mark.parametrize("rel", LORA_FILES + ["resume/masters.safetensors"])
def test_dream_names_damaged_lora_files_and_ignores_the_resume_state(pristine, tmp_path, rel):
    run_dir = _copy(pristine, tmp_path, "lora")
    step = run_dir / "checkpoints" / "step-0004"
    spoil(step / rel, "wrong-bytes")
    if rel.startswith("resume/"):  # Dream does not read the resume state
        assert load_model(str(step), device="cpu").ref.checkpoint_step == 4
    else:
        with pytest.raises(SourceError, match=rf"is damaged \({rel} does not hold the bytes that were written"):
            load_model(str(step), device="cpu")


def test_every_file_is_recorded_and_two_resume_states_are_kept(pristine):
    step = pristine / "m" / "full" / "checkpoints" / "step-0004"
    files = json.loads((step / "dreamy-checkpoint.json").read_text())["files"]
    assert sorted(files) == sorted(f for f in FULL_FILES if f != "dreamy-checkpoint.json")
    assert files["resume/state.pt"]["size"] == (step / "resume" / "state.pt").stat().st_size
    assert all((p / "resume" / "state.pt").is_file() for _, p in list_checkpoints(pristine / "m" / "full"))


def test_no_intact_resume_state_is_one_sentence(pristine, tmp_path):
    run_dir = _copy(pristine, tmp_path, "full")
    for step in ("step-0002", "step-0004"):
        spoil(run_dir / "checkpoints" / step / "resume" / "masters.safetensors", "truncated")
    with pytest.raises(TrainError, match=r"^Run 'full' cannot resume: checkpoint step-0004 is damaged "
                       r"\(resume/masters.safetensors has \d+ bytes, \d+ were written\) and no earlier checkpoint"):
        run(pristine / "photos", tmp_path / "m", "full", RUNS["full"], resume=True)
    assert not (run_dir / "checkpoints" / "damaged-step-0004").exists()  # nothing moved when nothing resumes


def test_a_newest_step_folder_without_its_marker_is_passed_over(pristine, tmp_path):
    run_dir = _copy(pristine, tmp_path, "lora")  # a LoRA checkpoint without its marker is not even listed
    (run_dir / "checkpoints" / "step-0004" / "dreamy-checkpoint.json").unlink()
    events = run(pristine / "photos", tmp_path / "m", "lora", RUNS["lora"], resume=True)
    assert events[0].resumed_from == 2
    assert any("step-0004 is damaged (dreamy-checkpoint.json is missing)" in e.message
               for e in events if isinstance(e, Notice))


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dreamy", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow  # three CLI processes
def test_cli_the_issue_examples(tmp_path):
    """A: half a masters file, then --resume --steps 6. B: a photo replaced and one added, then --resume."""
    images = photos(tmp_path / "photos", n=2)
    common = ["train", "--base", "tiny", "--images", str(images), "--name", "cli", "--models-dir",
              str(tmp_path / "models"), "--resolution", "64", "--validation-seeds", "", "--unlock", "all"]
    p = _cli(*common, "--steps", "4", "--checkpoint-every", "2")
    assert p.returncode == 0, p.stderr
    spoil(tmp_path / "models" / "cli" / "checkpoints" / "step-0004" / "resume" / "masters.safetensors", "truncated")
    p = _cli(*common, "--steps", "6", "--checkpoint-every", "2", "--resume")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "note: Checkpoint step-0004 is damaged (resume/masters.safetensors" in p.stderr
    assert "6/6" in p.stderr
    Image.new("RGB", (96, 64), (1, 2, 3)).save(images / "photo1.png")
    Image.new("RGB", (96, 64), (9, 9, 9)).save(images / "photo2.png")
    p = _cli(*common, "--steps", "8", "--checkpoint-every", "2", "--resume")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "was trained on other photos (added: photo2.png; changed: photo1.png)" in p.stderr
    p = _cli(*common, "--steps", "8", "--checkpoint-every", "2", "--resume", "--allow-changed-photos")
    assert p.returncode == 0, p.stderr
    record = json.loads((tmp_path / "models" / "cli" / "run.json").read_text())
    assert record["photo_changes"] == [{"step": 6, "added": ["photo2.png"], "removed": [], "changed": ["photo1.png"]}]


# ---------------------------------------------------------------------------------------------- B


def test_run_json_records_the_photos_and_refuses_other_ones(tmp_path):
    images = photos(tmp_path / "photos", n=2)
    run(images, tmp_path / "m", "p", {"max_train_steps": 2})
    record = json.loads((tmp_path / "m" / "p" / "run.json").read_text())
    assert [(r["name"], len(r["sha256"])) for r in record["photos"]] == [("photo0.png", 64), ("photo1.png", 64)]
    Image.new("RGB", (96, 64), (1, 2, 3)).save(images / "photo1.png")  # replaced
    Image.new("RGB", (96, 64), (9, 9, 9)).save(images / "photo2.png")  # added
    with pytest.raises(TrainError, match=r"^Run 'p' was trained on other photos \(added: photo2.png; changed: "
                       r"photo1.png\); resume it with the same photos, or allow the change \(--allow-changed-photos"):
        run(images, tmp_path / "m", "p", {"max_train_steps": 4}, resume=True)
    (images / "photo0.png").unlink()
    with pytest.raises(TrainError, match=r"added: photo2.png; removed: photo0.png; changed: photo1.png"):
        run(images, tmp_path / "m", "p", {"max_train_steps": 4}, resume=True)
    events = run(images, tmp_path / "m", "p", {"max_train_steps": 4}, resume=True, allow_changed_photos=True)
    assert isinstance(events[-1], Finished) and events[-1].step == 4
    assert any("photos changed since step 2" in e.message for e in events if isinstance(e, Notice))
    record = json.loads((tmp_path / "m" / "p" / "run.json").read_text())
    assert record["photo_changes"] == [{"step": 2, "added": ["photo2.png"], "removed": ["photo0.png"],
                                        "changed": ["photo1.png"]}]
    assert [r["name"] for r in record["photos"]] == ["photo1.png", "photo2.png"]
    run(images, tmp_path / "m", "p", {"max_train_steps": 5}, resume=True)  # the recorded set is the new one


def test_a_changed_caption_file_is_a_changed_photo(tmp_path):
    images = photos(tmp_path / "photos", n=2)
    (images / "photo0.txt").write_text("a photo of sks person smiling")
    run(images, tmp_path / "m", "c", {"max_train_steps": 2, "captions": "files"})
    (images / "photo0.txt").write_text("a photo of sks person frowning")
    with pytest.raises(TrainError, match=r"\(changed: photo0.png\)"):
        run(images, tmp_path / "m", "c", {"max_train_steps": 4, "captions": "files"}, resume=True)


def test_a_run_from_before_photos_were_recorded_resumes_and_records_them(tmp_path):
    images = photos(tmp_path / "photos", n=2)
    run(images, tmp_path / "m", "old", {"max_train_steps": 2})
    path = tmp_path / "m" / "old" / "run.json"
    record = json.loads(path.read_text())
    del record["photos"]
    path.write_text(json.dumps(record))
    run(images, tmp_path / "m", "old", {"max_train_steps": 3}, resume=True)
    record = json.loads(path.read_text())
    assert len(record["photos"]) == 2 and "photo_changes" not in record


# ---------------------------------------------------------------------------------------------- C


def _poison_loss(monkeypatch, at_micro, how):
    from dreamy.training.loss import MicroLoss

    real = MicroLoss.__call__

    def poisoned(self, micro):
        loss = real(self, micro)
        if micro < at_micro:
            return loss
        if how == "loss":
            return loss * float("nan")
        p = next(iter(self.tr.params.values()))  # finite loss, NaN gradients: d sqrt(x)/dx at 0 is inf, x 0
        z = p.sum() - p.sum()
        return loss + 0.0 * torch.sqrt(z)

    monkeypatch.setattr(MicroLoss, "__call__", poisoned)


def _kept_checkpoints_are_finite(run_dir, steps):
    assert [s for s, _ in list_checkpoints(run_dir)] == steps
    for _, path in list_checkpoints(run_dir):
        assert damage(path) is None
        masters = load_file(str(path / "resume" / "masters.safetensors"))
        assert all(torch.isfinite(t).all() for t in masters.values())


@pytest.mark.parametrize(("how", "clip", "said"), [
    ("loss", 1.0, "the loss became nan"),
    ("grads", 0.0, "the gradients became NaN or infinite"),
    ("grads", 1.0, "the gradients became NaN or infinite"),
])
def test_a_nan_stops_the_run_at_its_step_and_keeps_the_good_checkpoints(tmp_path, monkeypatch, how, clip, said):
    images = photos(tmp_path / "photos", n=2)
    _poison_loss(monkeypatch, at_micro=2, how=how)  # step 3
    with pytest.raises(TrainError, match=rf"^Training stopped at step 3: {said}, so the run diverged; the "
                       "checkpoints already saved are kept"):
        run(images, tmp_path / "m", "nan", {"max_train_steps": 4, "checkpointing_steps": 1, "max_grad_norm": clip,
                                           "optimizer": "adamw"})
    _kept_checkpoints_are_finite(tmp_path / "m" / "nan", [1, 2])
    rows = (tmp_path / "m" / "nan" / "logs" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2]


def test_weights_that_turn_infinite_stop_the_run_before_a_checkpoint(tmp_path, monkeypatch):
    from dreamy.training.modes import Trainables

    real = Trainables.after_step
    calls = []

    def blow_up(self):
        real(self)
        calls.append(1)
        if len(calls) == 2:  # step 2's update overflowed
            with torch.no_grad():
                next(iter(self.params.values())).view(-1)[0] = float("inf")

    monkeypatch.setattr(Trainables, "after_step", blow_up)
    images = photos(tmp_path / "photos", n=2)
    with pytest.raises(TrainError, match=r"^Training stopped at step 2: the trained weights became NaN or infinite"):
        run(images, tmp_path / "m", "inf", {"max_train_steps": 4, "checkpointing_steps": 1})
    _kept_checkpoints_are_finite(tmp_path / "m" / "inf", [1])


def test_nan_in_the_base_weights_stops_at_step_1_with_no_checkpoint(tmp_path, monkeypatch):
    import dreamy.training.run_setup as loop

    real = loop.load_model

    def nan_base(*a, **k):
        model = real(*a, **k)
        with torch.no_grad():
            next(model.unet.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(loop, "load_model", nan_base)
    images = photos(tmp_path / "photos", n=2)
    with pytest.raises(TrainError, match=r"^Training stopped at step 1: the loss became nan"):
        run(images, tmp_path / "m", "base", {"max_train_steps": 2, "checkpointing_steps": 1})
    assert list_checkpoints(tmp_path / "m" / "base") == []


def test_save_checkpoint_refuses_non_finite_weights(tmp_path, monkeypatch):
    """The last guard: even a stop request never writes a checkpoint of non-finite weights."""
    from dreamy.training import checkpoints as ckpt

    real = ckpt.save_checkpoint

    def poisoned(run_dir, step, trainables, *a):
        with torch.no_grad():
            next(iter(trainables.params.values())).view(-1)[0] = float("nan")
        return real(run_dir, step, trainables, *a)

    monkeypatch.setattr(ckpt, "save_checkpoint", poisoned)
    images = photos(tmp_path / "photos", n=2)
    with pytest.raises(TrainError, match=r"^The trained weights became NaN or infinite by step 1 .*this step was not saved"):
        run(images, tmp_path / "m", "guard", {"max_train_steps": 2, "checkpointing_steps": 1}, cancel_at=1)
    folder = tmp_path / "m" / "guard" / "checkpoints"
    assert not folder.exists() or list(folder.iterdir()) == []  # not even a temporary folder is left


def test_prune_keeps_the_resume_states_of_the_two_newest(tmp_path):
    from dreamy.training.checkpoints import prune

    for step in (1, 2, 3):
        folder = tmp_path / "checkpoints" / f"step-{step:04d}"
        (folder / "resume").mkdir(parents=True)
        (folder / "dreamy-checkpoint.json").write_text("{}")
    prune(tmp_path, 0, "last")
    assert [(tmp_path / "checkpoints" / f"step-{s:04d}" / "resume").is_dir() for s in (1, 2, 3)] == [False, True, True]
    prune(tmp_path, 2, "last")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_export_refuses_a_damaged_checkpoint(pristine, tmp_path):
    from dreamy.training.exports import ExportError, export

    run_dir = _copy(pristine, tmp_path, "lora")
    spoil(run_dir / "checkpoints" / "step-0004" / "lora_unet.safetensors", "truncated")
    with pytest.raises(ExportError, match=r"^Checkpoint '.*step-0004' is damaged \(lora_unet.safetensors has"):
        export(run_dir, formats=["lora"], out_dir=tmp_path / "out")


def test_a_marker_edited_into_other_valid_json_is_damaged(pristine, tmp_path):
    run_dir = _copy(pristine, tmp_path, "full")
    marker = run_dir / "checkpoints" / "step-0004" / "dreamy-checkpoint.json"
    marker.write_text(marker.read_text().replace('"mode": "full"', '"mode": "fuLL"'))
    assert damage(marker.parent) == "dreamy-checkpoint.json cannot be read or does not hold what was written"
    with pytest.raises(SourceError, match=r"is damaged \(dreamy-checkpoint.json does not hold what was written\)"):
        load_model(str(marker.parent), device="cpu")
