"""The corridor meter (issue #20): its signals move the right way on a run pulled hard toward its
photos, rows are measured once per checkpoint, and the marks follow a preset's thresholds.

The behavioural run: the tiny demo's UNet and text encoder with a small VAE first taught flat
colours (as tests/test_train_behaviour.py builds it, but trained as a VAE - decoding sampled latents
with a small KL term - so that nearby latents decode to nearby colours), fine-tuned at lr 1e-3 on
eight flat red photos, with checkpoints at steps 20, 40 and 60 and four validation seeds.

Measured on six random bases (tiny seeds 1234, 7, 42, 3, 11, 5; red, blue or green photos; torch
2.11, diffusers 0.42.1), from step 0 to step 60: drift 0 -> 0.59-0.76, gap 0 -> 0.44-0.76, diversity
1 -> 0.27-0.30, retention 1 -> 0.05-0.38; seed 1234 on torch 2.13 (this test): 0.71, 0.27, 0.28,
0.04. Drift and diversity moved one way at every checkpoint on every base; gap rose at all but two
(it dipped at step 60 on seed 5, and on seed 1234 under torch 2.13); retention fell most of the way by
step 20 and then wavered (seed 5: 1.16 at step 20, 0.38 at step 60). Every base was past the default
thresholds from step 20 on (diversity 0.44-0.50, and retention on all but seed 5). The
dream signals did not move steadily (dream drift -0.95 to +0.76 between checkpoints, dream diversity
0.72-1.31 at step 60: the tiny model's dreams wander in colour as it trains), which is why they
inform and do not mark. The assertions keep wide margins: drift > 0.35, gap > 0.1, diversity < 0.6,
retention < 0.5; without training every signal stays at its step-0 value (0, 0, 1, 1) and each
assertion fails.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from dreamy.errors import PresetError, TrainError
from dreamy.training import Finished, train
from dreamy.training import corridor_run as cr
from dreamy.training.corridor_marks import Thresholds, mark, preset_thresholds, thresholds_from_table
from dreamy.training.corridor_report import card_section, curve_rows, read_rows, table_lines

RED = (220, 40, 40)
SMALL = {"width": 64, "height": 64, "steps": 10}
ORDER = {"before": 0, "inside": 1, "past": 2}


def colour_vae_base(folder, seed: int):
    """The tiny demo model (``seed``) with a 2-block VAE taught to encode and decode flat colours."""
    from diffusers import AutoencoderKL

    from dreamy.models.tiny import save_tiny_model

    save_tiny_model(folder, seed=seed)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4,
                        latent_channels=4, scaling_factor=0.3, sample_size=64)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = (torch.rand(8, 3, 1, 1, generator=g) * 2 - 1).expand(8, 3, 16, 16)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        loss = (vae.decode(z).sample - x).square().mean() + 1e-3 * dist.kl().mean() / z[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # as SD's own: latents of unit variance (over 256 random colours) once scaled
        x = (torch.rand(256, 3, 1, 1, generator=g) * 2 - 1).expand(256, 3, 16, 16)
        vae.register_to_config(scaling_factor=float(1 / vae.encode(x).latent_dist.mean.std()))
    shutil.rmtree(folder / "vae")
    vae.save_pretrained(folder / "vae")
    return folder


def flat_photos(folder, colour, n: int = 8):
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def pulled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corridor")
    base = colour_vae_base(root / "base", seed=1234)
    photos = flat_photos(root / "red", RED)
    events = list(train(photos, name="red", base=str(base), models_dir=root / "models", unlock=True, device="cpu",
                        overrides={"resolution": 64, "max_train_steps": 60, "checkpointing_steps": 20,
                                   "learning_rate": 1e-3, "optimizer": "adamw", "validation_seeds": "0-3"},
                        validation=SMALL))
    assert isinstance(events[-1], Finished)
    return root / "models" / "red", photos


@pytest.mark.slow  # ~40-90 s on 2 cores (load-dependent): a VAE taught colours, a 60-step run with 4 validation rows, 4 measurements
def test_signals_move_through_the_corridor_as_the_run_is_pulled(pulled_run):
    run, photos = pulled_run
    rows = cr.measure_run(run, device="cpu", photos=photos)
    assert [r["step"] for r in rows] == [0, 20, 40, 60]
    first, last = rows[0], rows[-1]
    assert (first["drift"], first["gap"], first["diversity"], first["retention"]) == (0.0, 0.0, 1.0, 1.0)
    assert last["drift"] > 0.35, rows  # the model's guesses have come most of the way to the photos
    assert last["gap"] > 0.1, rows  # it denoises its photos better than pictures it never saw
    assert last["diversity"] < 0.6, rows  # different noise, more and more the same guess
    assert last["retention"] < 0.5, rows  # prompts hardly move it any more
    marks = [r["mark"] for r in rows]
    assert marks[0] == "before" and marks[-1] == "past", marks
    assert [ORDER[m] for m in marks] == sorted(ORDER[m] for m in marks), marks  # never back toward before
    assert all(r["dream_drift"] is not None and r["dream_diversity"] is not None for r in rows)
    table = "\n".join(table_lines(rows))
    print(table)  # shown with -s, and on a failure
    assert "past" in table and "retention" in table
    assert {c["signal"] for c in curve_rows(run)} == {"drift", "gap", "diversity", "retention"}
    card = "\n".join(card_section(run / "checkpoints" / "step-0060"))
    assert "marked **past**" in card and "| **60** |" in card


# ------------------------------------------------------------------------------- rows, once each


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The tiny demo trained 4 steps (checkpoints at 2 and 4, two validation seeds): quick, not pulled."""
    root = tmp_path_factory.mktemp("corridor-small")
    photos = flat_photos(root / "photos", RED, n=2)
    events = list(train(photos, name="small", base="tiny", models_dir=root / "models", unlock=True, device="cpu",
                        overrides={"resolution": 64, "max_train_steps": 4, "checkpointing_steps": 2,
                                   "optimizer": "adamw", "validation_seeds": "0-1"},
                        validation={"width": 64, "height": 64, "steps": 2}))
    assert isinstance(events[-1], Finished)
    return root / "models" / "small", photos


def test_measure_run_measures_only_the_steps_without_a_row(small_run, monkeypatch, capsys):
    run, photos = small_run
    in_loop = read_rows(run)  # the training loop measured step 0 and every checkpoint as it went
    assert [r["step"] for r in in_loop] == [0, 2, 4] and all(r.get("mark") for r in in_loop)
    (run / cr.PHOTOS_FILE).unlink()  # as a run trained before the meter: no rows, no photos kept
    (run / "corridor.json").unlink()
    with pytest.raises(TrainError, match="give the folder of photos"):  # nothing kept yet, no photos given
        cr.measure_run(run, device="cpu")
    rows = cr.measure_run(run, device="cpu", photos=photos)
    assert [r["step"] for r in rows] == [0, 2, 4] and (run / cr.PHOTOS_FILE).is_file()
    assert cr.missing_steps(run) == []

    doc = json.loads((run / "corridor.json").read_text())
    doc["rows"] = [r for r in doc["rows"] if r["step"] == 4]  # as if steps 0 and 2 had never been measured
    (run / "corridor.json").write_text(json.dumps(doc))
    assert [s for s, _ in cr.missing_steps(run)] == [0, 2]
    measured = []
    real = cr.measure_raw
    monkeypatch.setattr(cr, "measure_raw", lambda model, ps, run_dir, step: measured.append(step) or real(model, ps, run_dir, step))
    again = cr.measure_run(run, device="cpu")  # the photos kept by the first measurement
    assert measured == [0, 2]  # step 4's row stays as it was
    assert [r["step"] for r in again] == [0, 2, 4]
    for old, new in zip(rows, again, strict=True):
        assert new["raw"].keys() == old["raw"].keys()
        for k, v in old["raw"].items():  # deterministic: the same numbers measured again
            assert new["raw"][k] == pytest.approx(v, rel=1e-5), (new["step"], k)
    assert cr.measure_run(run, device="cpu") and measured == [0, 2]  # nothing left to measure

    cr.forget_after(run, 2)  # a resume from step 2: later rows go
    assert [r["step"] for r in read_rows(run)] == [0, 2]

    from dreamy.cli.main import main

    assert main(["corridor", str(run)]) == 0
    assert measured == [0, 2, 4]  # the CLI measured the missing step 4 and printed the table
    out = capsys.readouterr().out
    assert "drift" in out and "before" in out and len(out.strip().splitlines()) == 5


def test_the_training_loop_hook_reports_a_failure_instead_of_raising(tmp_path, tiny_model):
    note = cr.after_checkpoint(tiny_model, tmp_path / "not-a-run", 20, [])
    assert note is not None and "step 20" in note and "python -m dreamy corridor" in note


# ------------------------------------------------------------------------------------------ marks


def test_marks_follow_the_thresholds():
    th = Thresholds()
    assert mark({"drift": 0.0, "gap": 0.0, "diversity": 1.0, "retention": 1.0}, th) == ("before", "")
    assert mark({"drift": 0.3, "gap": 0.0, "diversity": 0.9, "retention": 0.9}, th)[0] == "inside"
    assert mark({"drift": 0.0, "gap": 0.2, "diversity": None, "retention": 0.9}, th)[0] == "inside"
    got, why = mark({"drift": 0.3, "gap": 0.0, "diversity": 0.4, "retention": 0.9}, th)
    assert got == "past" and why == "diversity 0.40 <= 0.5"
    assert mark({"retention": 0.49}, th)[0] == "past"
    assert mark({}, th) == ("before", "")
    assert mark({"drift": 0.1}, Thresholds(inside_drift=0.05))[0] == "inside"


def test_thresholds_come_from_the_presets_corridor_table(tmp_path, monkeypatch):
    assert preset_thresholds("sweet-spot") == Thresholds()  # no table: the documented defaults
    assert preset_thresholds("no-such-preset") == Thresholds()
    (tmp_path / "mine.toml").write_text('name = "mine"\nextends = "sweet-spot"\n\n[corridor]\npast_retention = 0.3\n')
    (tmp_path / "child.toml").write_text('name = "child"\nextends = "mine"\n\n[corridor]\ninside_drift = 0.1\n')
    monkeypatch.setenv("DREAMY_PRESETS", str(tmp_path))
    assert preset_thresholds("child") == Thresholds(inside_drift=0.1, past_retention=0.3)
    with pytest.raises(PresetError, match="unknown corridor threshold 'drift'"):
        thresholds_from_table({"drift": 0.2})
    with pytest.raises(PresetError, match="'past_gap' must be a number"):
        thresholds_from_table({"past_gap": "high"})
