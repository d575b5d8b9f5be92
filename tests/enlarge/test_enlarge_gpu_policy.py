"""GPU choices that change no method (dreamy/enlarging/gpu.py), the automatic tiling with its
out-of-memory retry, and the sampler step that reads no GPU scalars back — all checked on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dreamy.enlarging import gpu, pipeline
from dreamy.enlarging.pipeline import enlarge
from dreamy.enlarging.sampler import SamplerSettings, restore_step
from dreamy.errors import DreamyError
from dreamy.png.metadata import read_recipe

CUDA = torch.device("cuda")
GB = 2**30


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv(gpu.ENV, raising=False)


def test_cpu_keeps_pytorchs_attention():
    assert gpu.attention_order(torch.device("cpu")) is None
    with gpu.preferred_attention(torch.device("cpu")) as used:
        assert used == "default"


def test_hopper_prefers_cudnn_attention_unless_switched_off(hopper, monkeypatch):
    assert gpu.attention_order(CUDA) == ["cudnn", "flash", "efficient", "math"]
    monkeypatch.setenv(gpu.ENV, "default")
    assert gpu.attention_order(CUDA) is None
    monkeypatch.setenv(gpu.ENV, "auto")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert gpu.attention_order(CUDA) is None  # not measured before Hopper: PyTorch's choice stays


def test_the_attention_preference_is_scoped_and_recorded(hopper):
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    before = set(_cur_sdpa_kernel_backends())
    with gpu.preferred_attention(CUDA) as used:
        assert used == "cudnn>flash>efficient>math"
        assert SDPBackend.CUDNN_ATTENTION in _cur_sdpa_kernel_backends()
    assert set(_cur_sdpa_kernel_backends()) == before


def _memory(monkeypatch, free_gb: float, reserved_gb: float = 0.0, allocated_gb: float = 0.0):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gb * GB), int(80 * GB)))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: int(reserved_gb * GB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: int(allocated_gb * GB))


def test_untiled_where_it_fits(monkeypatch):
    cpu = torch.device("cpu")
    assert gpu.untiled_fits(cpu, (128, 128), 128)  # one tile: nothing to tile
    assert not gpu.untiled_fits(cpu, (256, 256), 128)  # off CUDA memory is not measured: tiles
    # 2048 px needs ~12 GB beyond the weights (9.6 measured, +25%)
    _memory(monkeypatch, free_gb=13)
    assert gpu.untiled_fits(CUDA, (256, 256), 128)
    _memory(monkeypatch, free_gb=8)
    assert not gpu.untiled_fits(CUDA, (256, 256), 128)
    _memory(monkeypatch, free_gb=8, reserved_gb=12, allocated_gb=7)  # the allocator's cache counts as free
    assert gpu.untiled_fits(CUDA, (256, 256), 128)
    _memory(monkeypatch, free_gb=70)
    assert not gpu.untiled_fits(CUDA, (320, 320), 128)  # past 2048 px tiles are the faster way too


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "keeper.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


QUICK = dict(supir="tiny", base="tiny", device="cpu", overrides={"upscale": 2.0, "steps": 2},
             unlock=["upscale", "steps"])


def _oom_when_untiled(monkeypatch) -> list[str]:
    calls = []

    def untiled(*args, **kwargs):
        calls.append("untiled")
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(pipeline, "restore_sample", untiled)
    monkeypatch.setattr(pipeline, "untiled_fits", lambda device, latent, tile: True)
    return calls


def test_automatic_untiled_run_that_runs_out_of_memory_is_redone_in_tiles(picture, tmp_path, monkeypatch):
    calls = _oom_when_untiled(monkeypatch)
    result = enlarge(picture, "biased-dreams", out_dir=tmp_path, seed=3, **QUICK)
    assert calls == ["untiled"]
    run = read_recipe(result.path).runtime
    assert run["tiled"] is True and run["attention"] == "default"
    assert any("tiled instead" in note for note in result.notes)
    assert [p.name for p in tmp_path.iterdir()] == [result.path.name]  # the failed try wrote nothing


def test_an_explicit_untiled_run_is_not_second_guessed(picture, tmp_path, monkeypatch):
    calls = _oom_when_untiled(monkeypatch)
    with pytest.raises(DreamyError, match="(?i)memory"):
        enlarge(picture, "biased-dreams", out_dir=tmp_path, seed=3, tiled=False, **QUICK)
    assert calls == ["untiled"] and not any(tmp_path.iterdir())


@pytest.mark.parametrize("restoration", [-1.0, 2.0])
def test_a_step_given_host_sigmas_computes_what_it_computes_reading_them_back(restoration):
    gen = torch.Generator().manual_seed(0)
    x, hint, noise = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    settings = SamplerSettings(steps=5, restoration_scale=restoration, control_scale_start=0.3)
    seen = []

    def model(sample, timestep, h, control_scale):
        seen.append(control_scale)
        return sample * 0.5, sample * 0.25 + h * 0.1

    sigma, next_sigma = torch.full((2,), 3.5), torch.full((2,), 1.25)
    read_back = restore_step(model, x, sigma, next_sigma, settings, hint, noise, hint * 0.9)
    given = restore_step(model, x, sigma, next_sigma, settings, hint, noise, hint * 0.9, (3.5, 1.25))
    assert torch.equal(read_back, given)
    assert seen[0] == seen[1] == settings.control_scale_at(3.5)
