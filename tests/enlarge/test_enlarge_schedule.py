"""Our sigma grid, sampler sigmas, quantisation and CFG ramp equal sgm's.

They were bit-identical on the machine that made the fixtures. Elsewhere the float32 ``** 0.5`` can
round differently (another SIMD path: 174 of the 1000 grid sigmas were one ulp apart on an AVX-512
host), for sgm as for us, so values are compared to a few ulp and timesteps exactly.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dreamy.enlarging.sampler import SamplerSettings
from dreamy.enlarging.schedule import (
    ddpm_sigmas,
    linear_cfg_scale,
    quantize_sigma,
    sampling_sigmas,
    sampling_timesteps,
)

from .supir_synthetic import FIXTURES


@pytest.fixture(scope="module")
def oracle() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "small.safetensors"))


ULP = dict(rtol=1e-6, atol=0)


def test_ddpm_grid_matches(oracle):
    torch.testing.assert_close(ddpm_sigmas(), oracle["ddpm_sigmas"], **ULP)


@pytest.mark.parametrize("steps", [1, 4, 30, 50, 100])
def test_sampler_sigmas_quantisation_and_cfg_match(steps, oracle):
    sigmas = sampling_sigmas(steps)
    torch.testing.assert_close(sigmas, oracle[f"sigmas.{steps}"], **ULP)
    sigma_hat = sigmas[:-1] * (SamplerSettings(steps=steps).gamma + 1.0)
    torch.testing.assert_close(sigma_hat, oracle[f"sigma_hat.{steps}"], **ULP)
    timestep, sigma_q = quantize_sigma(sigma_hat)
    assert torch.equal(timestep, oracle[f"timestep.{steps}"])
    torch.testing.assert_close(sigma_q, oracle[f"sigma_q.{steps}"], **ULP)
    torch.testing.assert_close(linear_cfg_scale(sigma_hat, 4.0, 3.0), oracle[f"cfg_4_to_3.{steps}"], **ULP)


def test_thirty_step_run_as_documented():
    """The numbers in the reference notes (supir-notes.md section 2.3) for SUPIR's 30-step default."""
    assert list(sampling_timesteps(30)[:3]) == [999, 965, 932]
    assert list(sampling_timesteps(30)[-2:]) == [66, 33]
    settings = SamplerSettings()
    assert settings.gamma == pytest.approx(1 / 6)
    sigma_hat = sampling_sigmas(30)[:-1] * (settings.gamma + 1.0)
    timestep, _ = quantize_sigma(sigma_hat)
    assert list(timestep[:5]) == [999, 991, 959, 928, 895]
    assert list(timestep[-2:]) == [85, 44]
    cfg = settings.cfg_at(sigma_hat)
    assert float(cfg[0]) == pytest.approx(4.167, abs=1e-3)
    assert float(cfg[29]) == pytest.approx(3.014, abs=1e-3)


def test_constant_cfg_when_linear_cfg_is_off():
    settings = SamplerSettings(linear_cfg=False, cfg_scale=7.5)
    assert torch.equal(settings.cfg_at(sampling_sigmas(30)), torch.full((31,), 7.5))


def test_linear_control_scale():
    assert SamplerSettings(control_scale=0.9).control_scale_at(14.6146) == 0.9
    ramp = SamplerSettings(control_scale=0.9, control_scale_start=0.0)
    assert ramp.control_scale_at(14.6146) == pytest.approx(0.0)
    assert ramp.control_scale_at(0.0) == pytest.approx(0.9)
