"""Training data: captions and trigger words, resizing and cropping, and a replayable data order."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dreamy.training.data import TrainDataError, apply_trigger, batch_indices, epoch_order, prepare_images


@pytest.mark.parametrize(
    ("caption", "trigger", "expected"),
    [
        ("a photo of sks person", "sks", "a photo of sks person"),  # already there: unchanged
        ("a woman on a  beach", "sks", "sks, a woman on a beach"),  # absent: prepended
        ("a [trigger] on a beach", "sks", "a sks on a beach"),  # marked: substituted
        ("asks nothing", "sks", "sks, asks nothing"),  # whole words only
        ("a [trigger] dog", "", "a dog"),  # no trigger word: the mark goes
        ("", "sks", "sks"),
    ],
)
def test_trigger_word(caption, trigger, expected):
    assert apply_trigger(caption, trigger) == expected


def test_captions_resize_crop_and_report(tmp_path):
    Image.new("RGB", (300, 150), (255, 0, 0)).save(tmp_path / "wide.png")
    Image.new("RGB", (40, 80), (0, 0, 255)).save(tmp_path / "tiny.png")  # refused: under 64 px
    Image.new("RGB", (64, 96), (0, 255, 0)).save(tmp_path / "tall.jpg")
    (tmp_path / "wide.txt").write_text("a red  barn\n")
    (tmp_path / "tall.txt").write_text("   ")
    (tmp_path / "Thumbs.db").write_bytes(b"\0")
    data = prepare_images(tmp_path, resolution=128, prompt="a photo of sks person", trigger="sks", captions="files")
    by_name = {im.path.name: im for im in data.images}
    assert by_name["wide.png"].caption == "sks, a red barn"
    assert by_name["tall.jpg"].caption == "a photo of sks person"
    assert by_name["wide.png"].pixels.shape == (3, 128, 128)
    assert by_name["wide.png"].pixels[0].min() == 1.0  # pure red, in [-1, 1]
    assert data.report == [
        "tall.jpg: 'a photo of sks person' (tall.txt is empty: instance prompt used; upscaled to 128x192 "
        "(x2.0: will look soft); center-cropped to 128x128)",
        "wide.png: 'sks, a red barn' (caption from wide.txt; resized to 256x128; center-cropped to 128x128)",
        "skipped Thumbs.db: not an image file",
        "refused tiny.png: only 40x80 pixels; images must be at least 64 px on each side.",
    ]
    kept = prepare_images(tmp_path, resolution=128, prompt="p", crop="random")
    assert {im.path.name: tuple(im.pixels.shape) for im in kept.images} == {
        "wide.png": (3, 128, 256), "tall.jpg": (3, 192, 128)}  # cropped per step instead
    with pytest.raises(TrainDataError, match="only 40x80 pixels"):
        prepare_images([tmp_path / "tiny.png"], resolution=64, prompt="p")


def test_data_order_is_a_function_of_seed_and_step():
    # each epoch visits every image once, in a seeded order that differs between epochs
    n, batch = 5, 2
    epoch0 = [i for m in range(3) for i in batch_indices(7, m, n, batch)]
    epoch1 = [i for m in range(3, 6) for i in batch_indices(7, m, n, batch)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1 and epoch0 == epoch_order(7, 0, n)
    assert batch_indices(7, 4, n, batch) == batch_indices(7, 4, n, batch)  # replayable: no hidden state
    assert epoch_order(8, 0, 50) != epoch_order(7, 0, 50)
    assert torch.equal(torch.tensor(epoch_order(7, 3, 50)), torch.tensor(epoch_order(7, 3, 50)))
