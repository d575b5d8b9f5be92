"""Weights that arrive by themselves: online-first defaults, offline fallbacks, one sentence per failure.

The Hugging Face Hub is simulated at huggingface_hub's boundary: ``snapshot_download`` is replaced by
a fake that knows the real file lists of the repos Dreamy uses (with their sizes as the hub lists
them) and writes small files into a private cache laid out as huggingface_hub lays it out, so
``try_to_load_from_cache`` and the rest of the library see a real cache. Nothing reaches the network.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# stable-diffusion-v1-5/stable-diffusion-v1-5 as the hub lists it (path -> bytes, rounded as shown there)
SD15_REPO = {
    ".gitattributes": 1_550, "README.md": 14_500, "feature_extractor/preprocessor_config.json": 342,
    "model_index.json": 541, "safety_checker/config.json": 4_720,
    "safety_checker/model.fp16.safetensors": 608_000_000, "safety_checker/model.safetensors": 1_220_000_000,
    "safety_checker/pytorch_model.bin": 1_220_000_000, "safety_checker/pytorch_model.fp16.bin": 608_000_000,
    "scheduler/scheduler_config.json": 308, "text_encoder/config.json": 617,
    "text_encoder/model.fp16.safetensors": 246_000_000, "text_encoder/model.safetensors": 492_000_000,
    "text_encoder/pytorch_model.bin": 492_000_000, "text_encoder/pytorch_model.fp16.bin": 246_000_000,
    "tokenizer/merges.txt": 525_000, "tokenizer/special_tokens_map.json": 472,
    "tokenizer/tokenizer_config.json": 806, "tokenizer/vocab.json": 1_060_000, "unet/config.json": 743,
    "unet/diffusion_pytorch_model.bin": 3_440_000_000, "unet/diffusion_pytorch_model.fp16.bin": 1_720_000_000,
    "unet/diffusion_pytorch_model.fp16.safetensors": 1_720_000_000,
    "unet/diffusion_pytorch_model.non_ema.bin": 3_440_000_000,
    "unet/diffusion_pytorch_model.non_ema.safetensors": 3_440_000_000,
    "unet/diffusion_pytorch_model.safetensors": 3_440_000_000, "v1-5-pruned-emaonly.ckpt": 4_270_000_000,
    "v1-5-pruned-emaonly.safetensors": 4_270_000_000, "v1-5-pruned.ckpt": 7_700_000_000,
    "v1-5-pruned.safetensors": 7_700_000_000, "v1-inference.yaml": 1_870, "vae/config.json": 547,
    "vae/diffusion_pytorch_model.bin": 335_000_000, "vae/diffusion_pytorch_model.fp16.bin": 167_000_000,
    "vae/diffusion_pytorch_model.fp16.safetensors": 167_000_000,
    "vae/diffusion_pytorch_model.safetensors": 335_000_000,
}
HUB = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": SD15_REPO,
    "Kijai/SUPIR_pruned": {".gitattributes": 1_520, "SUPIR-v0F_fp16.safetensors": 2_660_000_000,
                           "SUPIR-v0Q_fp16.safetensors": 2_660_000_000},
    "RunDiffusion/Juggernaut-XL-v9": {".gitattributes": 1_520, "README.md": 3_000,
                                      "Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors": 7_105_348_188},
}


class FakeHub:
    """``snapshot_download`` over HUB: records each call; ``fail`` makes the next calls raise it."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.calls: list[tuple[str, list[str] | None]] = []
        self.fail: BaseException | None = None

    def fill(self, repo_id: str, files) -> Path:
        """Lay ``files`` out as huggingface_hub caches them (refs/main -> snapshots/<commit>/...)."""
        repo = self.cache / ("models--" + repo_id.replace("/", "--"))
        folder = repo / "snapshots" / COMMIT
        for name in files:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(f"{repo_id}/{name}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        return folder

    def snapshot_download(self, repo_id, *, allow_patterns=None, ignore_patterns=None, tqdm_class=None, **kwargs):
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append((repo_id, None if allow_patterns is None else list(allow_patterns)))
        if constants.HF_HUB_OFFLINE:
            raise LocalEntryNotFoundError("outgoing traffic has been disabled")
        if self.fail is not None:
            raise self.fail
        files = list(filter_repo_objects(HUB[repo_id], allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        if tqdm_class is not None:  # the bar snapshot_download counts every file's bytes on
            total = sum(HUB[repo_id][f] for f in files)
            with tqdm_class(total=total, name="huggingface_hub.snapshot_download", unit="B") as bar:
                for f in files:
                    bar.update(HUB[repo_id][f])
        return str(self.fill(repo_id, files))


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants as hc

    from dreamy.models import hub

    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(fake.cache))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)

    def no_network(*args, **kwargs):
        raise AssertionError("hf_hub_download must not be called here")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(hub, "_turned_off", [])
    for name in ("DREAMY_MODEL", "DREAMY_SUPIR", "DREAMY_SDXL"):
        monkeypatch.delenv(name, raising=False)
    return fake


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)


def _unreachable():
    """What snapshot_download raises when the hub cannot be reached and nothing is cached."""
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
        except httpx2.ConnectError as e:
            raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub") from e
    except LocalEntryNotFoundError as e:
        return e


def _http_error(cls, status: int):
    import httpx2

    return cls(f"{status} error", response=httpx2.Response(status, request=httpx2.Request("GET", "https://hf.co/x")))


def _one_sentence(text: str) -> bool:
    return text.endswith(".") and not re.search(r"\.\s+[A-Z]", text) and "\n" not in text


# ---- Stable Diffusion 1.5 -------------------------------------------------------------------------

def test_sd15_downloads_exactly_what_dreamy_loads_from_the_real_repo():
    """The explicit list (a Space's preload_from_hub) and the patterns any hub id uses agree on the
    real repo: fp32 safetensors of unet, text encoder and VAE plus configs and tokenizer, ~4.3 GB."""
    from huggingface_hub.utils import filter_repo_objects

    from dreamy.models.sources import _HUB_IGNORE, _HUB_PATTERNS, SD15

    picked = set(filter_repo_objects(SD15_REPO, allow_patterns=_HUB_PATTERNS, ignore_patterns=_HUB_IGNORE))
    assert picked == set(SD15.files)
    assert not any(".fp16." in f or f.endswith((".bin", ".ckpt")) or "safety_checker" in f for f in picked)
    assert round(sum(SD15_REPO[f] for f in SD15.files) / 1e9, 1) == SD15.size_gb == 4.3
    assert SD15.summary == "~4.3 GB, CreativeML OpenRAIL-M"


def test_online_a_new_user_starts_on_sd15_downloaded_once(fake_hub, online):
    from dreamy.models.sources import (
        DEFAULT_MODEL,
        SD15,
        _hub_snapshot,
        default_model,
        on_this_machine,
        starting_model,
    )

    assert default_model() == DEFAULT_MODEL  # online-first, before anything is downloaded
    notes: list[str] = []
    assert starting_model(notes.append) == DEFAULT_MODEL
    assert fake_hub.calls == [(DEFAULT_MODEL, list(SD15.files))]
    assert len(notes) == 1 and "~4.3 GB" in notes[0] and "CreativeML OpenRAIL-M" in notes[0]
    assert on_this_machine(DEFAULT_MODEL)
    # the cache is filled: starting again, and loading, ask the hub nothing
    assert starting_model(notes.append) == DEFAULT_MODEL and len(notes) == 1
    folder = _hub_snapshot(DEFAULT_MODEL)
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert len(fake_hub.calls) == 1


def test_a_filled_cache_starts_on_sd15_without_a_download_even_offline(fake_hub):
    from dreamy.models.sources import DEFAULT_MODEL, SD15, default_model, download_model, starting_model

    folder = fake_hub.fill(DEFAULT_MODEL, SD15.files)
    notes: list[str] = []
    assert default_model() == starting_model(notes.append) == DEFAULT_MODEL  # HF_HUB_OFFLINE is set (conftest)
    assert download_model(DEFAULT_MODEL) == folder
    assert fake_hub.calls == [] and notes == []


def test_a_download_cut_short_is_not_on_this_machine(fake_hub, online):
    from dreamy.models.sources import DEFAULT_MODEL, SD15, on_this_machine, starting_model

    fake_hub.fill(DEFAULT_MODEL, ["model_index.json", "unet/diffusion_pytorch_model.safetensors"])
    assert not on_this_machine(DEFAULT_MODEL)
    assert starting_model() == DEFAULT_MODEL and fake_hub.calls == [(DEFAULT_MODEL, list(SD15.files))]


def test_offline_starts_on_the_tiny_demo_with_one_sentence(fake_hub):
    from dreamy.models.sources import default_model, starting_model

    notes: list[str] = []
    assert default_model() == starting_model(notes.append) == "tiny"  # HF_HUB_OFFLINE=1 (conftest)
    assert fake_hub.calls == []
    assert notes == ["Stable Diffusion 1.5 is not on this machine and downloads are off (HF_HUB_OFFLINE): starting "
                     "on the tiny demo, which paints noise."]


def test_no_connection_starts_on_the_tiny_demo_with_one_sentence(fake_hub, online):
    from dreamy.errors import HubUnreachable
    from dreamy.models.sources import DEFAULT_MODEL, download_model, starting_model

    fake_hub.fail = _unreachable()
    notes: list[str] = []
    assert starting_model(notes.append) == "tiny"
    assert "could not be reached (ConnectError)" in notes[-1] and "tiny demo" in notes[-1]
    assert _one_sentence(notes[-1])
    with pytest.raises(HubUnreachable) as e:
        download_model(DEFAULT_MODEL)
    assert _one_sentence(str(e.value))


@pytest.mark.parametrize("kind, status, says", [
    ("GatedRepoError", 403, r"is gated on the Hugging Face Hub: accept its licence on https://huggingface.co/"),
    ("HfHubHTTPError", 403, r"The Hugging Face Hub refused Stable Diffusion 1.5 \(HTTP 403\): check its licence"),
    ("HfHubHTTPError", 401, r"refused Stable Diffusion 1.5 \(HTTP 401\).*`hf auth login`"),
])
def test_gated_or_refused_downloads_are_one_sentence(fake_hub, online, kind, status, says):
    import huggingface_hub.errors as errors

    from dreamy.errors import HubUnreachable, SourceError
    from dreamy.models.sources import DEFAULT_MODEL, download_model, starting_model

    fake_hub.fail = _http_error(getattr(errors, kind), status)
    with pytest.raises(SourceError, match=says) as e:
        download_model(DEFAULT_MODEL)
    assert not isinstance(e.value, HubUnreachable) and _one_sentence(str(e.value))
    notes: list[str] = []
    assert starting_model(notes.append) == "tiny" and re.search(says, notes[-1])


def test_a_full_disk_is_one_sentence(fake_hub, online):
    import errno

    from dreamy.errors import SourceError
    from dreamy.models.sources import DEFAULT_MODEL, download_model

    fake_hub.fail = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(SourceError, match=r"The disk is full: Stable Diffusion 1.5 \(~4.3 GB\) does not fit") as e:
        download_model(DEFAULT_MODEL)
    assert _one_sentence(str(e.value))


def test_the_studio_download_reports_its_bytes(fake_hub, online):
    from dreamy.models.sources import DEFAULT_MODEL, download_model

    seen = []
    download_model(DEFAULT_MODEL, on_progress=seen.append)
    assert seen and {p.job for p in seen} == {"download"}
    assert seen[-1].fraction == 1.0 and "downloading Stable Diffusion 1.5: 4.27 of 4.27 GB" in seen[-1].message


def test_a_shared_studio_downloads_nothing(fake_hub, online):
    from dreamy.errors import HubUnreachable
    from dreamy.models import hub
    from dreamy.models.sources import DEFAULT_MODEL, default_model, download_model

    hub.turn_off_downloads("a shared studio")
    assert default_model() == "tiny"
    with pytest.raises(HubUnreachable, match=r"downloads are off \(a shared studio\)"):
        download_model(DEFAULT_MODEL)
    assert fake_hub.calls == []


# ---- the command line and the studio's start ----------------------------------------------------

def test_cli_dream_without_model_says_why_it_dreams_on_the_demo(fake_hub, monkeypatch, capsys, tmp_path):
    cli = importlib.import_module("dreamy.cli.main")  # dreamy.cli.main is also a function's name

    seen = []
    monkeypatch.setattr(cli, "cmd_dream", lambda args: seen.append(args.model) or 0)
    assert cli.main(["dream", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert seen == ["tiny"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "downloads are off (HF_HUB_OFFLINE): starting on the tiny demo" in err


def test_cli_dream_without_model_online_downloads_sd15_first(fake_hub, online, monkeypatch, capsys, tmp_path):
    cli = importlib.import_module("dreamy.cli.main")  # dreamy.cli.main is also a function's name
    from dreamy.models.sources import DEFAULT_MODEL

    seen = []
    monkeypatch.setattr(cli, "cmd_dream", lambda args: seen.append(args.model) or 0)
    assert cli.main(["dream", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert seen == [DEFAULT_MODEL] and [c[0] for c in fake_hub.calls] == [DEFAULT_MODEL]
    assert "Downloading Stable Diffusion 1.5 once into the Hugging Face cache (~4.3 GB" in capsys.readouterr().err


def test_cli_train_downloads_sd15_for_a_new_run_but_a_resume_keeps_its_base(fake_hub, online, monkeypatch,
                                                                            tmp_path):
    import json

    import dreamy.training as training
    from dreamy.cli.train import cmd_train
    from dreamy.models.sources import DEFAULT_MODEL, SD15

    bases = []

    def fake_train(images, *, base, **kwargs):
        bases.append(base)
        return iter(())

    monkeypatch.setattr(training, "train", fake_train)
    cli = importlib.import_module("dreamy.cli.main")
    args = ["train", "--images", str(tmp_path), "--name", "run", "--models-dir", str(tmp_path / "models")]
    (tmp_path / "models" / "run").mkdir(parents=True)
    (tmp_path / "models" / "run" / "run.json").write_text(json.dumps({"base": {"source": "tiny"}}))
    for extra in (["--resume"], []):
        parsed = cli.build_parser().parse_args([*args, *extra])
        assert cmd_train(parsed) == 1  # the fake trains nothing
    assert bases == ["tiny", DEFAULT_MODEL]  # no download for the resume of a tiny run
    assert fake_hub.calls == [(DEFAULT_MODEL, list(SD15.files))]


@pytest.mark.parametrize("space", [False, True])
def test_the_studio_starts_on_sd15_online_and_a_shared_one_then_downloads_nothing(fake_hub, online, monkeypatch,
                                                                                  capsys, tmp_path, space):
    import app
    from dreamy.models import hub
    from dreamy.models.sources import DEFAULT_MODEL

    started = []
    monkeypatch.setattr(app, "build", lambda studio: None)
    monkeypatch.setattr(app, "launch", lambda demo, studio, **kw: started.append(studio))
    monkeypatch.setattr(app, "preload", lambda: None)
    monkeypatch.setenv("DREAMY_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("DREAMY_MODELS", str(tmp_path / "models"))
    if space:
        monkeypatch.setenv("SPACE_ID", "someone/dreamy")
    else:
        monkeypatch.delenv("SPACE_ID", raising=False)
    app.main([])
    assert started[0].default_model == DEFAULT_MODEL and len(fake_hub.calls) == 1
    assert "dreamy: Downloading Stable Diffusion 1.5 once" in capsys.readouterr().out
    assert hub.downloads_off() == ("a shared studio" if space else None)


# ---- Enlarge's models -----------------------------------------------------------------------------

def test_enlarge_fetches_supir_and_juggernaut_on_first_use_with_size_and_licence(fake_hub, online, caplog):
    from dreamy.enlarging.sources import BASE_WEIGHTS, SUPIR_WEIGHTS, locate_pair

    seen = []
    with caplog.at_level(logging.WARNING, logger="dreamy.enlarging.sources"):
        supir, base, fell_back = locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9", seen.append)
    assert not fell_back and supir.kind == base.kind == "hub"
    assert fake_hub.calls == [("Kijai/SUPIR_pruned", ["SUPIR-v0Q_fp16.safetensors"]),
                              ("RunDiffusion/Juggernaut-XL-v9", ["Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors"])]
    assert supir.path.name == "SUPIR-v0Q_fp16.safetensors" and supir.path.is_file() and base.path.is_file()
    said = caplog.text
    assert "SUPIR-v0Q once into the Hugging Face cache (~2.7 GB, SUPIR licence: non-commercial use only" in said
    assert "Juggernaut XL v9 once into the Hugging Face cache (~7.1 GB, CreativeML OpenRAIL-M" in said
    assert {p.job for p in seen} == {"download"} and "SUPIR licence: non-commercial use only" in seen[0].message
    assert SUPIR_WEIGHTS["SUPIR-v0Q"].licence.endswith("non-commercial use only")
    assert round(HUB["RunDiffusion/Juggernaut-XL-v9"][BASE_WEIGHTS["Juggernaut XL v9"].files[0]] / 1e9, 2) == 7.11
    caplog.clear()
    again = locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9")  # cached: nothing asked, nothing said
    assert again == (supir, base, False) and len(fake_hub.calls) == 2 and "Downloading" not in caplog.text


def test_enlarge_offline_uses_the_demo_and_says_so(fake_hub):
    from dreamy.enlarging.sources import locate_pair

    supir, base, fell_back = locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9")
    assert fell_back and supir.kind == base.kind == "tiny" and fake_hub.calls == []


def test_enlarge_without_connection_uses_the_demo_with_one_sentence(fake_hub, online, caplog):
    from dreamy.enlarging.sources import locate_pair

    fake_hub.fail = _unreachable()
    with caplog.at_level(logging.WARNING, logger="dreamy.enlarging.sources"):
        supir, base, fell_back = locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9")
    assert fell_back and supir.kind == "tiny"
    warning = caplog.records[-1].getMessage()
    assert warning.startswith("Enlarging with the offline tiny demo, which paints noise: SUPIR-v0Q is not in the local")
    assert "could not be reached (ConnectError)" in warning


def test_enlarge_sources_given_by_name_never_fall_back(fake_hub, online, monkeypatch):
    from dreamy.enlarging.sources import locate_pair
    from dreamy.errors import HubUnreachable, SourceError

    fake_hub.fail = _unreachable()
    with pytest.raises(HubUnreachable):
        locate_pair("SUPIR-v0Q", "Juggernaut XL v9", "SUPIR-v0Q", "Juggernaut XL v9")
    monkeypatch.setenv("DREAMY_SUPIR", "SUPIR-v0Q")
    with pytest.raises(HubUnreachable):
        locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9")
    monkeypatch.delenv("DREAMY_SUPIR")
    import huggingface_hub.errors as errors

    fake_hub.fail = _http_error(errors.GatedRepoError, 403)  # not a connection problem: said, not hidden
    with pytest.raises(SourceError, match="SUPIR-v0Q is gated on the Hugging Face Hub"):
        locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9")


def test_a_shared_studio_enlarges_on_the_demo_rather_than_download(fake_hub, online):
    from dreamy.enlarging.sources import locate_pair
    from dreamy.models import hub

    hub.turn_off_downloads("a shared studio")
    assert locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9")[2] is True and fake_hub.calls == []


# ---- a Hugging Face Space ---------------------------------------------------------------------------

def _front_matter() -> dict:
    import yaml

    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_the_space_preloads_exactly_what_dreamy_fetches():
    from dreamy.enlarging.sources import BASE_WEIGHTS, SUPIR_WEIGHTS
    from dreamy.models.sources import SD15

    meta = _front_matter()
    wanted = [SD15.preload(), SUPIR_WEIGHTS["SUPIR-v0Q"].preload(), BASE_WEIGHTS["Juggernaut XL v9"].preload()]
    assert meta["preload_from_hub"] == wanted
    import yaml

    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Downloads\n", 1)[1].split("\n## ", 1)[0]
    shown = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(shown)["preload_from_hub"] == wanted  # the README shows what the Space uses
    assert {w.split()[0] for w in wanted} <= set(meta["models"])


def test_a_space_built_with_its_preload_starts_on_sd15_and_enlarges_for_real(fake_hub):
    """The build fills the cache with the front matter's files; at run time nothing is downloaded
    (here: HF_HUB_OFFLINE, so any call would fail) and nothing falls back to the demo."""
    from dreamy.enlarging.sources import locate_pair
    from dreamy.models.sources import DEFAULT_MODEL, starting_model

    for entry in _front_matter()["preload_from_hub"]:
        repo_id, files = entry.split()
        fake_hub.fill(repo_id, files.split(","))
    assert starting_model() == DEFAULT_MODEL
    supir, base, fell_back = locate_pair(None, None, "SUPIR-v0Q", "Juggernaut XL v9")
    assert not fell_back and supir.kind == base.kind == "hub" and fake_hub.calls == []
