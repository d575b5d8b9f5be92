"""Training images: load, report, resize and crop; captions; a data order that resume can replay.

Every random choice of the loop (which images, which crop, noise, timesteps, latent samples) comes
from a generator seeded by (run seed, micro-step, purpose), so any step can be replayed exactly
without saving generator states: resume is bit-identical by construction, even within an epoch.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import TrainDataError, TrainSetupError
from ..images import ImageScan, load_images

TRIGGER_MARK = "[trigger]"
log = logging.getLogger(__name__)

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(raw: bytes) -> str:
    """A user's text file as text: UTF-8, or UTF-8/UTF-16/UTF-32 with a byte-order mark (Windows
    Notepad's "Unicode"); raises UnicodeDecodeError for anything else."""
    for bom, codec in _BOMS:  # UTF-32 LE before UTF-16 LE: its BOM starts with UTF-16's
        if raw.startswith(bom):
            return raw.decode(codec)
    return raw.decode("utf-8")


@dataclass
class TrainImage:
    path: Path
    pixels: torch.Tensor  # [3, H, W] in [-1, 1], short side == resolution (square when center-cropped)
    caption: str
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)  # (height, width) as loaded, before resizing: SDXL's size conditioning
    crop_top_left: tuple[int, int] = (0, 0)  # (top, left) of the center crop in the resized image: SDXL's crop ids


@dataclass
class TrainingSet:
    images: list[TrainImage]
    report: list[str]  # one line per file: what was done to it, or why it was skipped or refused

    def __len__(self) -> int:
        return len(self.images)


def apply_trigger(caption: str, trigger: str) -> str:
    """Put the trigger word into a caption: at ``[trigger]`` if marked, kept if present, else prepended."""
    caption = " ".join(caption.split())
    if not trigger:
        return " ".join(caption.replace(TRIGGER_MARK, "").split())
    if TRIGGER_MARK in caption:
        return caption.replace(TRIGGER_MARK, trigger)
    if re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def check_caption(tokenizer: Any, caption: str, trigger: str = "") -> str:
    """Refuse (TrainSetupError, before training starts) a caption whose trigger word falls past what the
    text encoder reads; return the words it cuts otherwise ("" when it fits, logged as a warning)."""
    from ..models.tokens import dropped_text, survives, token_budget

    dropped = dropped_text(tokenizer, caption)
    if not dropped:
        return ""
    if trigger and not survives(tokenizer, caption, trigger):
        raise TrainSetupError(
            f"The trigger word '{trigger}' falls past the {token_budget(tokenizer)} tokens the text encoder reads in "
            f"the caption \"{caption[:120]}{'...' if len(caption) > 120 else ''}\"; shorten the caption or "
            "instance prompt, or put the trigger word (or [trigger]) at its start.")
    return dropped  # loss.tokenize logs it


def _caption_for(path: Path, prompt: str, use_files: bool, notes: list[str]) -> str:
    if not use_files:
        return prompt
    txt = path.with_suffix(".txt")
    if not txt.is_file():
        notes.append("no caption file: instance prompt used")
        return prompt
    try:
        text = " ".join(decode_text(txt.read_bytes()).split())
    except (OSError, UnicodeDecodeError) as e:
        why = "not UTF-8 or UTF-16 text" if isinstance(e, UnicodeDecodeError) else type(e).__name__
        notes.append(f"{txt.name} unreadable ({why}): instance prompt used")
        return prompt
    if not text:
        notes.append(f"{txt.name} is empty: instance prompt used")
        return prompt
    notes.append(f"caption from {txt.name}")
    return text


def fit_short_side(image: Image.Image, resolution: int, crop: str, notes: list[str],
                   offset: list[int] | None = None) -> Image.Image:
    """Resize so the short side is ``resolution``; center-crop to a square unless cropping per step.
    ``offset``: set to the center crop's [top, left] in the resized image (SDXL's crop conditioning)."""
    w, h = image.size
    scale = resolution / min(w, h)
    if scale != 1:
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
        notes.append(f"{'upscaled' if scale > 1 else 'resized'} to {size[0]}x{size[1]}"
                     + (f" (x{scale:.1f}: will look soft)" if scale > 1.5 else ""))
    if crop == "center" and image.width != image.height:
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        if offset is not None:
            offset[:] = [top, left]
        notes.append(f"center-cropped to {resolution}x{resolution}")
    elif crop == "random" and image.width != image.height:
        notes.append(f"random {resolution}x{resolution} crop each step")
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def prepare_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    resolution: int,
    prompt: str,
    trigger: str = "",
    captions: str = "prompt",
    crop: str = "center",
    what: str = "training",
) -> TrainingSet:
    """Load a folder or list of images for training; refuses (one sentence) when none is usable."""
    scan: ImageScan = load_images(source)
    images = []
    for li in scan.images:
        notes = list(li.notes)
        caption = apply_trigger(_caption_for(li.path, prompt, captions == "files", notes), trigger)
        offset = [0, 0]
        fitted = fit_short_side(li.image, resolution, crop, notes, offset)
        images.append(TrainImage(li.path, to_tensor(fitted), caption, notes, (li.image.height, li.image.width),
                                 (offset[0], offset[1])))
    report = [f"{t.path.name}: {t.caption!r}" + (f" ({'; '.join(t.notes)})" if t.notes else "") for t in images]
    report += [f"skipped {s}" for s in scan.skipped] + [f"refused {f}" for f in scan.failed]
    if not images:
        where = source if isinstance(source, str | os.PathLike) else f"the {len(list(source))} files given"
        first = (scan.failed or scan.skipped or [""])[0].rstrip(".")
        why = f" ({first})" if first else ""
        raise TrainDataError(f"No usable {what} image in {where}{why}; give at least one readable photo "
                             "of 64 px or more.")
    return TrainingSet(images, report)


# ------------------------------------------------------------------------------------ determinism


def derived_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed from the run seed and a purpose, independent of Python's hash randomisation."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *parts: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(seed, *parts))


def epoch_order(seed: int, epoch: int, n: int, salt: str = "order") -> list[int]:
    """The shuffled image order of one epoch: a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=generator(seed, salt, epoch)).tolist()


def batch_indices(seed: int, micro_step: int, n: int, batch_size: int, salt: str = "order") -> list[int]:
    """Which images micro-step ``micro_step`` trains on (epochs of ceil(n / batch) batches)."""
    per_epoch = -(-n // batch_size)
    epoch, j = divmod(micro_step, per_epoch)
    return epoch_order(seed, epoch, n, salt)[j * batch_size : (j + 1) * batch_size]


def random_crop(pixels: torch.Tensor, resolution: int, gen: torch.Generator) -> torch.Tensor:
    _, h, w = pixels.shape
    top = int(torch.randint(0, h - resolution + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - resolution + 1, (1,), generator=gen))
    return pixels[:, top : top + resolution, left : left + resolution]
