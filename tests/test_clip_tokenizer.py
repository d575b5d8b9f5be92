"""The offline CLIP tokenizer: built from open_clip's BPE list or reused from the hub cache."""

from __future__ import annotations

import shutil

import pytest

from dreamy.errors import SourceError
from dreamy.models import clip_tokenizer
from dreamy.models.clip_tokenizer import clip_tokenizer_dir, find_bpe_file

BOS, EOS = 49406, 49407

# Token ids of CLIP ViT-L/14's tokenizer, as published by independent CLIP tokenizer ports and
# tests (e.g. "a photo of a cat" is the canonical example in CLIP exports; the rest appear as
# reference fixtures in open-source CLIP tokenizers).
KNOWN = {
    "a photo of a cat": [BOS, 320, 1125, 539, 320, 2368, EOS],
    "a photo of a dog": [BOS, 320, 1125, 539, 320, 1929, EOS],
    "a photo of a tree": [BOS, 320, 1125, 539, 320, 2677, EOS],
    "A Photo of a TREE!": [BOS, 320, 1125, 539, 320, 2677, 256, EOS],
    "it's a cat's toy, running   fast": [BOS, 585, 568, 320, 2368, 568, 5988, 267, 2761, 1953, EOS],
    "2 dogs and 3 cats": [BOS, 273, 3255, 537, 274, 3989, EOS],
    "a diagram": [BOS, 320, 22697, EOS],
    "a photo of a waterfall": [BOS, 320, 1125, 539, 320, 16403, EOS],
    "dog on a beach": [BOS, 1929, 525, 320, 2117, EOS],
}

needs_bpe = pytest.mark.skipif(find_bpe_file() is None, reason="no package ships bpe_simple_vocab_16e6.txt.gz")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty Dreamy cache and an empty hub cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("DREAMY_CACHE", str(tmp_path / "dreamy"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def _load(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


@needs_bpe
def test_built_tokenizer_matches_clip_ids(isolated):
    folder = clip_tokenizer_dir()
    assert folder.is_relative_to(isolated / "dreamy" / "tokenizers")
    tok = _load(folder)
    assert len(tok) == 49408 and tok.vocab_size == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, EOS)
    for text, ids in KNOWN.items():
        assert tok(text).input_ids == ids, text
    padded = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert padded == KNOWN["a photo of a cat"] + [EOS] * 70
    long = tok("dog " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[0] == BOS and long[-1] == EOS


@needs_bpe
def test_sdxl_second_tokenizer_pads_with_exclamation_mark(isolated):
    folder = clip_tokenizer_dir("!")
    assert folder != clip_tokenizer_dir()
    tok = _load(folder)
    assert tok.pad_token == "!" and tok.pad_token_id == 0
    padded = tok("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert padded == KNOWN["a photo of a cat"] + [0] * 70


@needs_bpe
def test_built_once_then_reused(isolated, monkeypatch):
    folder = clip_tokenizer_dir()
    stamp = (folder / "vocab.json").stat().st_mtime_ns
    monkeypatch.setattr(clip_tokenizer, "find_bpe_file", lambda: pytest.fail("rebuilt"))
    assert clip_tokenizer_dir() == folder
    assert (folder / "vocab.json").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tok-")]


def _fake_hub_snapshot(root, repo_id, sub, source):
    """Lay out ``source``'s tokenizer files the way huggingface_hub caches a repo."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    folder = repo / "snapshots" / "0123abc" / sub
    shutil.copytree(source, folder)
    return folder


@needs_bpe
def test_hub_cache_is_used_first(isolated, monkeypatch):
    built = clip_tokenizer_dir()  # a real tokenizer to plant in the fake hub cache
    snapshot = _fake_hub_snapshot(isolated / "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer", built)
    monkeypatch.setattr(clip_tokenizer, "find_bpe_file", lambda: None)
    assert clip_tokenizer_dir() == snapshot
    # SDXL's second tokenizer is not cached: its folder is made from the cached vocabulary.
    second = clip_tokenizer_dir("!")
    assert second != snapshot and second.is_relative_to(isolated / "dreamy")
    tok = _load(second)
    assert tok.pad_token_id == 0 and tok("a photo of a dog").input_ids == KNOWN["a photo of a dog"]


def test_nothing_available_says_how_to_fix(isolated, monkeypatch):
    monkeypatch.setattr(clip_tokenizer, "find_bpe_file", lambda: None)
    with pytest.raises(SourceError, match=r"^The CLIP tokenizer is not on this computer: .*pip install --no-deps open-clip-torch") as err:
        clip_tokenizer_dir()
    assert "connect to the internet once" in str(err.value)
