"""Test set-up: no network, a private Dreamy cache per session, one tiny model shared by the tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: tests never touch the network or the user's caches.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="dreamy-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf")
os.environ.setdefault("DREAMY_CACHE", str(_SESSION_DIR / "dreamy-cache"))
os.environ.pop("DREAMY_MODEL", None)
os.environ.pop("DREAMY_PRESETS", None)

REPO = Path(__file__).resolve().parent.parent

# Small settings for fast CPU dreams; they change locked fields, so tests unlock them explicitly.
FAST = {"width": 128, "height": 128, "steps": 8}


@pytest.fixture(scope="session")
def tiny_model():
    from dreamy.models.sources import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_dir():
    from dreamy.models.tiny import ensure_tiny_model

    return ensure_tiny_model()
