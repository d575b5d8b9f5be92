"""Safe image loading: what is done to odd but valid photos, and one sentence for each bad file."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dreamy.images import ImageError, image_files, load_image, load_images


def _png_with_size(path, width: int, height: int) -> None:
    """A tiny valid PNG whose header claims ``width`` x ``height`` (a decompression bomb's trick)."""
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (120, 80), (200, 0, 0))
    im.paste((0, 0, 200), (0, 0, 60, 80))  # left half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    li = load_image(tmp_path / "phone.jpg")
    assert li.image.size == (80, 120) and li.original_size == (120, 80)
    assert li.notes == ["EXIF orientation applied (rotated 90°)"]
    top = np.asarray(li.image)[:40].mean(axis=(0, 1))
    assert top[2] > 150 > top[0]  # the stored left edge is now at the top


def test_alpha_is_flattened_on_the_stated_background(tmp_path):
    im = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    im.paste((0, 255, 0, 255), (0, 0, 32, 64))
    im.save(tmp_path / "cut-out.png")
    li = load_image(tmp_path / "cut-out.png", background=(0, 0, 0))
    arr = np.asarray(li.image)
    assert li.image.mode == "RGB"
    assert tuple(arr[10, 10]) == (0, 255, 0) and tuple(arr[10, 50]) == (0, 0, 0)
    assert li.notes == ["transparency flattened onto rgb(0, 0, 0)"]
    Image.new("RGBA", (64, 64), (9, 9, 9, 255)).save(tmp_path / "opaque.png")
    assert load_image(tmp_path / "opaque.png").notes == []  # an unused alpha channel is not news


@pytest.mark.parametrize(
    ("mode", "note"),
    [("CMYK", "converted from CMYK"), ("L", "greyscale"), ("I;16", "16-bit greyscale scaled to 8 bits")],
)
def test_other_modes_become_8bit_rgb(tmp_path, mode, note):
    if mode == "I;16":
        im = Image.fromarray(np.full((64, 64), 65535 // 2, dtype=np.uint16))
        path = tmp_path / "deep.png"
    else:
        im = Image.new(mode, (64, 64), 128 if mode == "L" else (0, 0, 0, 0))
        path = tmp_path / f"{mode}.jpg"
    im.save(path)
    li = load_image(path)
    assert li.image.mode == "RGB" and li.notes == [note]
    if mode == "I;16":
        assert abs(int(np.asarray(li.image)[0, 0, 0]) - 128) <= 1  # scaled, not clipped to white


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (64, 64), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, 32, 64))
    im.save(tmp_path / "logo.gif", transparency=0)
    arr = np.asarray(load_image(tmp_path / "logo.gif").image)
    assert tuple(arr[5, 5]) == (0, 0, 255) and tuple(arr[5, 60]) == (255, 255, 255)


def test_bad_files_each_get_one_clear_sentence(tmp_path):
    Image.new("RGB", (256, 256), (5, 5, 5)).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is not a picture")
    Image.new("RGB", (40, 300)).save(tmp_path / "sliver.png")
    _png_with_size(tmp_path / "bomb.png", 40000, 40000)
    expected = {
        "truncated.jpg": "truncated",
        "empty.png": "empty (0 bytes)",
        "notes.jpg": "not an image in a supported format",
        "sliver.png": "only 40x300 pixels; images must be at least 64 px",
        "bomb.png": "decompression bomb",
    }
    for name, words in expected.items():
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"{name}: ") and words in msg, msg
        assert msg.count(". ") == 0 and msg.endswith("."), msg  # one sentence


def test_postscript_is_never_handed_to_ghostscript(tmp_path):
    (tmp_path / "trap.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n")
    with pytest.raises(ImageError, match="not an image in a supported format"):
        load_image(tmp_path / "trap.jpg")


def test_folder_scan_reports_every_file(tmp_path):
    for i in range(2):
        Image.new("RGB", (80, 64), (i, i, i)).save(tmp_path / f"p{i}.png")
    (tmp_path / "p0.txt").write_text("a caption")  # a caption is not "skipped"
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    scan = load_images(tmp_path)
    assert [li.path.name for li in scan.images] == ["p0.png", "p1.png"]
    assert scan.skipped == [".DS_Store: a hidden file", "sub/: a folder (folders are not searched)"]
    assert len(scan.failed) == 1 and scan.failed[0].startswith("broken.png: ")
    report = scan.report()
    assert report[0] == "p0.png: 80x64 PNG" and any(line.startswith("refused broken.png") for line in report)
    files, _ = image_files([tmp_path / "p1.png", tmp_path / "p0.txt"])  # a list works too
    assert files == [tmp_path / "p1.png"]
    with pytest.raises(ImageError, match="No folder or file"):
        image_files(tmp_path / "missing")
