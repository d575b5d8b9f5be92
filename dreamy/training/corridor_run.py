"""The corridor meter of a run: ``models/<run>/corridor.json``, one row per checkpoint (and step 0).

``measure_step`` measures one step with a loaded model (the live one during training, or a
checkpoint loaded from disk) and writes its row; ``measure_run`` measures every step that lacks a
row (an old run, a resumed one, a run trained before the meter existed); ``after_checkpoint`` is
the training loop's hook, which reports a failure instead of stopping the run.

Each row keeps the raw measurements (``raw``) it was derived from; the signals and the mark are
derived again whenever the file is written, so a row measured before step 0's gets its signals once
step 0 is measured, and changed thresholds re-mark every row without measuring anything.

The training photos are read once (from the photos a run trains on, or a folder checked against
run.json's record) and kept beside the rows as ``corridor-photos.safetensors`` (their latents,
features and captions: ~64 KB a photo at 512 px), so later measurements need no photo folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write, atomic_write_text
from ..errors import TrainError
from ..layout import checkpoints
from ..models.sources import SDModel
from . import corridor as sig
from .corridor_marks import Thresholds, mark, preset_thresholds
from .corridor_report import CORRIDOR_FILE, read_rows
from .data import TrainImage, prepare_images

PHOTOS_FILE = "corridor-photos.safetensors"
FORMAT = 1
_DREAM = re.compile(r"step(\d+)-seed(\d+)\.png")
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ photos


def _run_record(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise TrainError(f"'{run_dir}' has no readable run.json, so it is not a training run.") from None


def _settings(run_dir: Path) -> dict[str, Any]:
    return _run_record(run_dir).get("recipe", {}).get("settings", {})


def photo_set(model: SDModel, images: Sequence[TrainImage], resolution: int, trigger: str = "",
              tokens: Sequence[str] = ()) -> sig.PhotoSet:
    """The meter's view of training photos as ``data.prepare_images`` made them (pixels in [-1, 1],
    short side ``resolution``; a wider one is center-cropped here), the first ``MAX_IMAGES`` of them."""
    images = list(images)[: sig.MAX_IMAGES]
    px = []
    for im in images:
        p = im.pixels
        _, h, w = p.shape
        top, left = (h - resolution) // 2, (w - resolution) // 2
        px.append(p[:, top : top + resolution, left : left + resolution])
    pixels = torch.stack(px)
    latents = sig.encode(model, pixels)
    return sig.PhotoSet(latents, sig.features(pixels, latents).float(), [im.caption for im in images], trigger, list(tokens),
                        [hashlib.sha256(Path(im.path).read_bytes()).hexdigest() for im in images], resolution)


def save_photos(run_dir: Path, photos: sig.PhotoSet) -> Path:
    """Write ``corridor-photos.safetensors`` atomically (latents and features float32; the rest as JSON
    metadata). Raises OutputError when it cannot be written."""
    from safetensors.torch import save

    meta = {"captions": photos.captions, "trigger": photos.trigger, "tokens": photos.tokens,
            "sha256": photos.sha256, "resolution": photos.resolution, "format": FORMAT}
    data = save({"latents": photos.latents.contiguous(), "features": photos.features.contiguous()},
                metadata={"corridor": json.dumps(meta)})
    return atomic_write(Path(run_dir) / PHOTOS_FILE, lambda f: f.write(data))


def load_photos(run_dir: Path) -> sig.PhotoSet | None:
    """The photos kept by an earlier measurement, or None (none kept, or unreadable: measured again)."""
    from safetensors import safe_open

    path = Path(run_dir) / PHOTOS_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["corridor"])
            latents, feats = f.get_tensor("latents"), f.get_tensor("features")
        return sig.PhotoSet(latents, feats, list(meta["captions"]), meta["trigger"], list(meta["tokens"]),
                            list(meta["sha256"]), int(meta["resolution"]))
    except Exception as e:  # noqa: BLE001 - a damaged cache is rebuilt from the photos, never fatal
        log.warning("%s cannot be read (%s); the photos will be read again.", path, e)
        return None


def photos_from_folder(run_dir: Path, folder: str | os.PathLike, model: SDModel) -> sig.PhotoSet:
    """The run's photos from ``folder``, prepared with the run's settings; only files whose sha256
    run.json records are used (a run without that record uses them all). Raises TrainError when
    none of the folder's photos is one the run trained on, and TrainDataError (prepare_images) when
    the folder holds no usable image."""
    s = _settings(run_dir)
    data = prepare_images(folder, resolution=int(s.get("resolution", 512)), prompt=s.get("instance_prompt", ""),
                          trigger=s.get("trigger_word", ""), captions=s.get("captions", "prompt"), crop="center")
    recorded = {p.get("sha256") for p in _run_record(run_dir).get("photos") or []}
    images = [im for im in data.images if not recorded or hashlib.sha256(im.path.read_bytes()).hexdigest() in recorded]
    if not images:
        raise TrainError(f"None of the photos in {folder} is one run '{Path(run_dir).name}' trained on (run.json "
                         "records each photo's sha256); give the folder the run was trained from.")
    tokens = _run_tokens(run_dir)
    return photo_set(model, images, int(s.get("resolution", 512)), s.get("trigger_word", ""), tokens)


def _run_tokens(run_dir: Path) -> list[str]:
    """A pivotal run's new tokens, from its newest checkpoint's marker ([] for other runs)."""
    found = checkpoints(run_dir)
    if not found:
        return []
    try:
        meta = json.loads((found[-1][1] / "dreamy-checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return list(meta.get("tokens") or [])


def _photos(run_dir: Path, photos: sig.PhotoSet | Sequence[TrainImage] | str | os.PathLike | None,
            model: SDModel, tokens: Sequence[str] = ()) -> sig.PhotoSet:
    """A PhotoSet from what the caller has: one, the images train() prepared, a folder, or the kept one."""
    if isinstance(photos, sig.PhotoSet):
        return photos
    kept = load_photos(run_dir)
    if photos is None:
        if kept is None:
            raise TrainError(f"Run '{Path(run_dir).name}' has no corridor measurement yet, so its photos are not "
                             "known here; give the folder of photos it was trained on (--photos).")
        return kept
    if isinstance(photos, str | os.PathLike):
        made = photos_from_folder(run_dir, photos, model)
    else:
        images = list(photos)[: sig.MAX_IMAGES]
        if kept is not None and kept.captions == [im.caption for im in images] and kept.sha256 == [
                hashlib.sha256(Path(im.path).read_bytes()).hexdigest() for im in images]:
            return kept  # the loop's every checkpoint: the same photos, no VAE pass (~1.8 s a checkpoint on an H200)
        s = _settings(run_dir)
        made = photo_set(model, photos, int(s.get("resolution", 512)), s.get("trigger_word", ""), tokens)
    if kept is not None and kept.sha256 == made.sha256 and kept.captions == made.captions:
        return kept  # the same photos: keep the numbers every earlier row was measured against
    save_photos(run_dir, made)
    return made


# -------------------------------------------------------------------------------------- rows, file


def _ratio(a: Any, b: Any) -> float | None:
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (a, b)) or b <= 1e-12:
        return None
    return float(a) / float(b)


def derive(raw: dict[str, Any], base: dict[str, Any] | None) -> dict[str, float | None]:
    """A row's signals from its raw measurements and step 0's (``base``; None: not measured yet).

    drift = 1 - P / P0; gap = ln(L_held / L_train) - ln(L_held0 / L_train0); diversity = G / G0;
    retention = R / R0 (P, L, G, R: ``corridor.py``'s pull, losses, guess spread, steering); and,
    from the dreams of the same seeds at this step and step 0, dream_drift = 1 - D / D0 and
    dream_diversity = S / S0 (docs/corridor.md). A signal whose inputs are missing is None."""
    b = base or {}
    g_now, g_base = _ratio(raw.get("loss_held"), raw.get("loss_train")), _ratio(b.get("loss_held"), b.get("loss_train"))
    drift = _ratio(raw.get("pull"), b.get("pull"))
    dream = _ratio(raw.get("dream_distance"), raw.get("dream_distance_base"))
    return {"drift": None if drift is None else 1.0 - drift,
            "gap": None if not g_now or not g_base else math.log(g_now) - math.log(g_base),
            "diversity": _ratio(raw.get("guess_spread"), b.get("guess_spread")),
            "retention": _ratio(raw.get("steering"), b.get("steering")),
            "dream_drift": None if dream is None else 1.0 - dream,
            "dream_diversity": _ratio(raw.get("dream_spread"), raw.get("dream_spread_base"))}


def write_rows(run_dir: Path, rows: Sequence[dict[str, Any]], thresholds: Thresholds) -> list[dict[str, Any]]:
    """Derive each row's signals and mark, then write corridor.json atomically; returns the rows."""
    rows = sorted(rows, key=lambda r: r["step"])
    base = next((r.get("raw") for r in rows if r["step"] == 0), None)
    out = []
    for r in rows:
        r = {**r, **derive(r.get("raw", {}), base)}
        r["mark"], r["why"] = mark(r, thresholds)
        out.append(r)
    doc = {"format": FORMAT, "thresholds": thresholds.to_dict(), "rows": out}
    atomic_write_text(Path(run_dir) / CORRIDOR_FILE, json.dumps(doc, indent=2))
    return out


def run_thresholds(run_dir: Path) -> Thresholds:
    """The thresholds of the preset the run's recipe names (its ``[corridor]`` table, else the defaults)."""
    return preset_thresholds(_run_record(run_dir).get("recipe", {}).get("preset"))


def forget_after(run_dir: Path, step: int) -> None:
    """Drop the rows after ``step`` (a resumed run writes those checkpoints again)."""
    rows = read_rows(run_dir)
    if any(r["step"] > step for r in rows):
        write_rows(run_dir, [r for r in rows if r["step"] <= step], run_thresholds(run_dir))


# --------------------------------------------------------------------------------------- measuring


def dreams_of(run_dir: Path, step: int) -> dict[int, Path]:
    """The validation dreams of ``step`` on disk: seed -> validation/stepNNNNNN-seedNNNNNN.png."""
    out = {}
    for f in (Path(run_dir) / "validation").glob(f"step{step:06d}-seed*.png"):
        m = _DREAM.fullmatch(f.name)
        if m and int(m.group(1)) == step:
            out[int(m.group(2))] = f
    return dict(sorted(out.items()))


def _live_eval(model: SDModel) -> list[bool]:
    modules = (model.unet, model.text_encoder)
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    return was


@torch.no_grad()
def measure_raw(model: SDModel, photos: sig.PhotoSet, run_dir: Path, step: int) -> dict[str, Any]:
    """The raw measurements of one step with ``model`` (that step's weights), see ``corridor.py``:
    ``loss_train`` and ``steering`` always; with validation dreams of step 0 (the held-out pictures)
    ``loss_held``, ``pull`` and (two or more) ``guess_spread``; with dreams of this step and step 0 of
    the same seeds (``seeds``) ``dream_distance`` and ``dream_distance_base``, and (two seeds or more)
    ``dream_spread`` and ``dream_spread_base``. Modules are in eval mode while measuring."""
    was = _live_eval(model)
    try:
        captions = photos.captions_for(model)
        raw: dict[str, Any] = {"loss_train": sig.denoise_probe(model, photos.latents, captions).loss,
                               "steering": sig.steering(model, photos.latents)}
        now, base = dreams_of(run_dir, step), dreams_of(run_dir, 0)
        held = list(base.values())[: sig.MAX_IMAGES]
        if held:
            held_dn = sig.denoise_probe(model, sig.encode(model, sig.load_dreams(held, photos.resolution)), captions)
            raw["loss_held"] = held_dn.loss
            raw["pull"] = sig.pull(held_dn, photos.latents)
            raw["guess_spread"] = sig.guess_spread(held_dn)
        seeds = [s for s in now if s in base][: sig.MAX_IMAGES]
        raw["seeds"] = seeds
        if seeds:  # the dreams as the grid shows them: informational (see corridor.py)
            px_now = sig.load_dreams([now[s] for s in seeds], photos.resolution)
            px_base = sig.load_dreams([base[s] for s in seeds], photos.resolution)
            raw["dream_distance"] = sig.distance_to_set(sig.features(px_now, sig.encode(model, px_now)), photos.features)
            raw["dream_distance_base"] = sig.distance_to_set(sig.features(px_base, sig.encode(model, px_base)),
                                                             photos.features)
            if len(seeds) >= 2:
                raw["dream_spread"], raw["dream_spread_base"] = sig.spread(px_now), sig.spread(px_base)
        return raw
    finally:
        for m, t in zip((model.unet, model.text_encoder), was, strict=True):
            m.train(t)


def measure_step(model: SDModel, run_dir: Path, step: int,
                 photos: sig.PhotoSet | Sequence[TrainImage] | str | os.PathLike | None = None,
                 tokens: Sequence[str] = (), thresholds: Thresholds | None = None,
                 fresh: bool = False) -> dict[str, Any]:
    """Measure ``step`` with ``model`` (its weights: the base for step 0) and write its row into
    corridor.json; ``fresh`` starts the file over (a new run's step 0). ``photos``: a PhotoSet, the
    images train() prepared (with ``tokens``, a pivotal run's new tokens), a folder, or None for the
    ones kept by an earlier measurement. Returns the row (signals and mark included).

    Raises TrainError (no run.json; photos unknown or not the run's), TrainDataError (a photo folder
    without a usable image), OutputError (corridor.json cannot be written)."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    ps = _photos(run_dir, photos, model, tokens)
    row = {"step": step, "raw": measure_raw(model, ps, run_dir, step), "seconds": 0.0}
    row["seconds"] = round(time.perf_counter() - t0, 3)
    rows = [] if fresh else [r for r in read_rows(run_dir) if r["step"] != step]
    written = write_rows(run_dir, [*rows, row], thresholds or run_thresholds(run_dir))
    return next(r for r in written if r["step"] == step)


def _load(run_dir: Path, step: int, path: Path | None, device: torch.device | str | None) -> SDModel:
    from ..models.sources import load_model

    if path is not None:
        return load_model(str(path), device=device, precision="fp16")
    base = _run_record(run_dir).get("base", {})
    model = load_model(str(base.get("source", "")), device=device, precision="fp16")
    if base.get("sha256") and model.ref.sha256 != base["sha256"]:
        raise TrainError(f"The base model of run '{Path(run_dir).name}' ({base.get('source')}) has changed since "
                         "the run was trained, so step 0 cannot be measured.")
    return model


def missing_steps(run_dir: str | os.PathLike, upto: int | None = None) -> list[tuple[int, Path | None]]:
    """(step, checkpoint folder; None for step 0's base model) of step 0 and each kept checkpoint (up to
    ``upto``) that has no row yet, oldest first."""
    have = {r["step"] for r in read_rows(run_dir)}
    kept = [(0, None), *((s, p) for s, p in checkpoints(run_dir) if upto is None or s <= upto)]
    return [(s, p) for s, p in kept if s not in have]


def measure_run(run_dir: str | os.PathLike, device: str | torch.device | None = None,
                photos: sig.PhotoSet | Sequence[TrainImage] | str | os.PathLike | None = None,
                tokens: Sequence[str] = (), thresholds: Thresholds | None = None,
                on_step=None, upto: int | None = None) -> list[dict[str, Any]]:
    """Measure step 0 (the base model) and every checkpoint of the run (up to step ``upto``) that has no
    row yet, loading each from disk on ``device`` (None: the best here; fp16 on an accelerator); then
    re-mark every row with ``thresholds`` (default: the run's preset's). ``photos`` as for
    :func:`measure_step`; needed only when a step is missing and none are kept. ``on_step(step)`` is
    called before each measurement. Returns all rows, by step. Raises as :func:`measure_step`, and
    SourceError when a checkpoint or the base cannot be loaded."""
    from ..models.devices import pick_device

    run_dir = Path(run_dir)
    th = thresholds or run_thresholds(run_dir)
    todo = missing_steps(run_dir, upto)
    dev = device if isinstance(device, torch.device) else pick_device(device)
    for step, path in todo:
        if on_step is not None:
            on_step(step)
        model = _load(run_dir, step, path, dev)
        if not isinstance(photos, sig.PhotoSet):  # once: the VAE never trains, so any step's reads them alike
            photos = _photos(run_dir, photos, model, tokens)
        measure_step(model, run_dir, step, photos, thresholds=th)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return write_rows(run_dir, read_rows(run_dir), th)


def _why(e: Exception) -> str:
    """A meter failure in a few words, for the hooks' one sentence."""
    if isinstance(e, torch.OutOfMemoryError):
        return "out of memory"
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


def after_checkpoint(model: SDModel, run_dir: Path, step: int, images: Sequence[TrainImage],
                     tokens: Sequence[str] = (), fresh: bool = False) -> str | None:
    """The training loop's hook, after a step's validation renders: measure it with the live weights
    (``fresh``: a new run's step 0, which starts corridor.json over). Returns None, or one sentence
    when the meter failed (the run goes on; the step can be measured later with ``python -m dreamy
    corridor``). An SDXL run is not measured: the meter's signals and marks are SD 1.5's."""
    if model.arch != "sd15":
        return None
    try:
        measure_step(model, run_dir, step, images, tokens, fresh=fresh)
    except Exception as e:  # noqa: BLE001 - an optional meter never stops a training run
        log.warning("corridor meter failed at step %d", step, exc_info=True)
        why = _why(e)
        return (f"The corridor meter could not measure step {step} ({why}); training goes on: measure it later "
                f"with python -m dreamy corridor {run_dir}.")
    return None


def after_resume(run_dir: Path, step: int, device: torch.device | str | None, images: Sequence[TrainImage],
                 tokens: Sequence[str] = ()) -> str | None:
    """The training loop's hook when a run resumes at ``step``: drop the rows after it (those steps are
    trained again) and measure step 0 and every kept checkpoint that lacks a row, loading each from
    disk. Returns None, or one sentence when the meter failed (the run goes on). Not for an SDXL run."""
    try:
        if (_run_record(run_dir).get("base") or {}).get("arch", "sd15") != "sd15":
            return None
    except TrainError:
        pass
    try:
        forget_after(run_dir, step)
        measure_run(run_dir, device, images, tokens, upto=step)
    except Exception as e:  # noqa: BLE001 - an optional meter never stops a training run
        log.warning("corridor meter failed on resume at step %d", step, exc_info=True)
        why = _why(e)
        return (f"The corridor meter could not measure the earlier checkpoints ({why}); training goes on: measure "
                f"them later with python -m dreamy corridor {run_dir}.")
    return None
