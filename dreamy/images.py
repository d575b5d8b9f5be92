"""Safe image loading for every entry point (training photos, class images, Enlarge inputs).

A photo from a user's folder is untrusted input: it may be rotated only in its EXIF tag, carry an
alpha channel, be CMYK or 16-bit, be truncated, empty, a few pixels wide, or a "decompression bomb"
whose header claims billions of pixels. ``load_image`` returns an upright 8-bit RGB picture and the
list of what was done to it, or raises ``ImageError`` with one sentence naming the file and the
problem. The pixel count is checked from the header before anything is decoded, and only common
photo formats are decoded at all (never PostScript/PDF, which Pillow would hand to Ghostscript).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# Suffix -> Pillow format; only these decoders are ever used.
_FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".mpo": "JPEG",
    ".png": "PNG", ".apng": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".dib": "BMP",
    ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF", ".tga": "TGA", ".qoi": "QOI",
    ".ppm": "PPM", ".pgm": "PPM", ".pbm": "PPM", ".pnm": "PPM", ".avif": "AVIF",
    ".heic": "HEIF", ".heif": "HEIF", ".hif": "HEIF",  # iPhone photos, through pillow-heif
}


def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF (iPhone photos) through pillow-heif, when it is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


_HEIF = _register_heif()
IMAGE_SUFFIXES = frozenset(_FORMATS)


def _decoders() -> tuple[str, ...]:
    """The allowed formats this Pillow build can open (AVIF, for one, is optional)."""
    Image.init()
    return tuple(sorted(f for f in set(_FORMATS.values()) if f in Image.OPEN))


# Any of these may hold a mislabelled file (a PNG saved as .jpg is common), so all are tried.
_DECODERS = _decoders()
MIN_SIDE = 64
_EXIF_ORIENTATION = 0x0112
_ROTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "transposed", 6: "rotated 90°",
              7: "transversed", 8: "rotated 270°"}


@dataclass
class LoadedImage:
    path: Path
    image: Image.Image  # upright, 8-bit RGB, fully decoded
    original_size: tuple[int, int]  # as stored, before the EXIF rotation
    format: str
    notes: list[str] = field(default_factory=list)


def max_pixels() -> int:
    """Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, 89.5 MP unless changed)."""
    return int(Image.MAX_IMAGE_PIXELS or 1 << 40)


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"qoif", "QOI"))
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def sniff(path: str | os.PathLike) -> str | None:
    """The picture format a file's first bytes announce (Pillow's format name), whatever its suffix;
    None when they announce none (or the file cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_image(
    path: str | os.PathLike,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    min_side: int = MIN_SIDE,
    pixel_limit: int | None = None,
) -> LoadedImage:
    """Open, check and normalise one image; ``ImageError`` with a one-sentence reason otherwise.

    Transparency is flattened onto ``background`` (white unless told otherwise).
    """
    p = Path(path)
    name = p.name
    limit = pixel_limit or max_pixels()
    if not p.is_file():
        raise ImageError(f"{name}: no such file.")
    if p.stat().st_size == 0:
        raise ImageError(f"{name}: the file is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p, formats=_DECODERS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: the image is absurdly large (a possible decompression bomb); "
                         f"downscale it below {limit / 1e6:.0f} megapixels.") from None
    except UnidentifiedImageError:
        kind = sniff(p)
        if kind is not None and kind not in _DECODERS:
            raise ImageError(f"{name}: a {kind} picture, which this installation cannot decode"
                             + (" (pip install pillow-heif)." if kind == "HEIF" else "; convert it to PNG or JPEG.")) from None
        raise ImageError(f"{name}: not an image in a supported format ({', '.join(_DECODERS)}), "
                         "or the file is corrupt.") from None
    except OSError as e:
        raise ImageError(f"{name}: cannot be read ({e.strerror or e}).") from None
    with im:
        w, h = im.size
        if w * h > limit:
            raise ImageError(f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the "
                             f"{limit / 1e6:.0f}-megapixel limit (a possible decompression bomb); downscale it.")
        notes: list[str] = []
        if getattr(im, "n_frames", 1) > 1:
            notes.append(f"first of {im.n_frames} frames used")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            what = "truncated" if "truncated" in str(e) else "corrupt"
            raise ImageError(f"{name}: the image data is {what} ({e!s:.60}); re-export or re-copy the file.") from None
        fmt = im.format or "?"
        im = _upright(im, notes)
        im = _to_rgb(im, background, notes)
    if min(im.size) < min_side:
        raise ImageError(f"{name}: only {im.width}x{im.height} pixels; images must be at least "
                         f"{min_side} px on each side.")
    return LoadedImage(p, im, (w, h), fmt, notes)


def _upright(im: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation, as every photo viewer does, so the model sees what the user sees."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the picture
        notes.append("EXIF unreadable; orientation left as stored")
        return im
    if orientation not in _ROTATIONS:
        return im
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001
        notes.append("EXIF orientation could not be applied; left as stored")
        return im
    notes.append(f"EXIF orientation applied ({_ROTATIONS[orientation]})")
    return out


def _to_rgb(im: Image.Image, background: tuple[int, int, int], notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" and "transparency" in im.info or mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: convert("RGB") would clip it
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        notes.append("16-bit greyscale scaled to 8 bits")
        return Image.fromarray((arr / top * 255).round().clip(0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        notes.append("floating-point greyscale scaled to 8 bits")
        return Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8)).convert("RGB")
    if im.mode == "RGBA":
        alpha = im.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append(f"transparency flattened onto rgb{background}")
        flat = Image.new("RGB", im.size, background)
        flat.paste(im.convert("RGB"), mask=alpha)
        return flat
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        notes.append(f"converted from {mode}")
    elif mode in ("L", "1"):
        notes.append("greyscale")
    return im.convert("RGB")


# ------------------------------------------------------------------------------------- collections


@dataclass
class ImageScan:
    """The outcome of reading a folder or a list: usable images, skipped files, refused files."""

    images: list[LoadedImage]
    skipped: list[str]  # "name: why" for files that are not images at all
    failed: list[str]  # one sentence per image file that could not be used

    def report(self) -> list[str]:
        lines = [f"{li.path.name}: {li.image.width}x{li.image.height} {li.format}"
                 + (f" ({'; '.join(li.notes)})" if li.notes else "") for li in self.images]
        lines += [f"skipped {s}" for s in self.skipped]
        lines += [f"refused {f}" for f in self.failed]
        return lines


def image_files(source: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The image files of a folder (sorted, not recursive) or a list, plus notes on what was skipped.

    ``.txt`` files beside an image of the same name are captions and are not reported as skipped.
    """
    if isinstance(source, str | os.PathLike):
        folder = Path(source)
        if not folder.exists():
            raise ImageError(f"No folder or file at '{folder}'.")
        paths = sorted(p for p in folder.iterdir()) if folder.is_dir() else [folder]
    else:
        paths = [Path(p) for p in source]
    stems = {p.stem for p in paths if is_image_name(p)}
    files, skipped = [], []
    for p in paths:
        if p.is_dir():
            skipped.append(f"{p.name}/: a folder (folders are not searched)")
        elif p.name.startswith("."):
            skipped.append(f"{p.name}: a hidden file")  # .DS_Store, ._photo.jpg (macOS), editor swap files
        elif is_image_name(p):
            files.append(p)
        elif p.suffix.lower() == ".txt":
            if p.stem not in stems:
                skipped.append(f"{p.name}: a caption with no image of the same name")
        elif (kind := sniff(p)) is not None:  # a picture under another name: say what it is
            if kind in _DECODERS:
                files.append(p)
            else:
                skipped.append(f"{p.name}: a {kind} picture this installation cannot decode"
                               + (" (pip install pillow-heif)" if kind == "HEIF" else ""))
        else:
            skipped.append(f"{p.name}: not an image file")
    return files, skipped


def load_images(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    min_side: int = MIN_SIDE,
) -> ImageScan:
    """Load every image of a folder or list; bad files are reported, not fatal (the caller decides)."""
    files, skipped = image_files(source)
    images, failed = [], []
    for f in files:
        try:
            images.append(load_image(f, background=background, min_side=min_side))
        except ImageError as e:
            failed.append(str(e))
    return ImageScan(images, skipped, failed)
