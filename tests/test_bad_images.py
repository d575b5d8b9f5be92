"""The odd images of issue 7 that the general image tests do not already cover."""

import pytest
from PIL import Image

from dreamy.images import ImageError, load_image, load_images


def test_animated_gif_and_webp_use_the_first_frame_and_say_so(tmp_path):
    frames = [Image.new("RGB", (96, 96), c) for c in ("red", "green", "blue")]
    for name in ("anim.gif", "anim.webp"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0)
        li = load_image(tmp_path / name)
        assert "first of 3 frames used" in li.notes
        r, g, b = li.image.getpixel((48, 48))
        assert r > 200 and g < 60 and b < 60  # the first frame, red


def test_a_one_pixel_image_is_refused(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ImageError, match="dot.png: only 1x1 pixels"):
        load_image(tmp_path / "dot.png")


def test_a_20000_square_header_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)  # 20000x20000 RGB, 400 megapixels
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(data)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "huge.png")


def test_a_png_named_jpg_and_greyscale_16_bit_load(tmp_path):
    Image.new("RGB", (80, 80), "white").save(tmp_path / "really-a-png.jpg", format="PNG")
    assert load_image(tmp_path / "really-a-png.jpg").image.size == (80, 80)
    Image.new("I;16", (80, 80), 40000).save(tmp_path / "deep.png")
    li = load_image(tmp_path / "deep.png")
    assert li.image.mode == "RGB" and li.image.getpixel((0, 0))[0] > 100


def test_captions_without_images_and_images_without_captions(tmp_path):
    from dreamy.training.data import prepare_images

    for name in ("a", "b"):
        Image.new("RGB", (96, 96), "gray").save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a castle in fog")
    (tmp_path / "orphan.txt").write_text("a caption whose picture is missing")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    scan = load_images(tmp_path)
    assert [li.path.name for li in scan.images] == ["a.png", "b.png"]
    assert scan.skipped == [".hidden.png: a hidden file", "orphan.txt: a caption with no image of the same name"]
    assert scan.failed == []
    prepared = prepare_images(tmp_path, prompt="a photo of sks person", trigger="sks", captions="files", resolution=64)
    by_name = {t.path.name: t for t in prepared.images}
    assert by_name["a.png"].caption == "sks, a castle in fog"
    assert by_name["b.png"].caption == "a photo of sks person" and "no caption file: instance prompt used" in by_name["b.png"].notes
