"""Parity of our sampler loop with SUPIR's RestoreEDMSampler (+ DiscreteDenoiserWithControl, LinearCFG).

The oracle ran the official sampler on the reduced model with ``torch.randn_like`` drawing from a seeded
CPU generator, in the order ours draws (initial noise, then one tensor per churned step), so the same
seed replays the same noise here. See tests/fixtures/supir/README.md.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dreamy.enlarging.conditioning import TextConditioning
from dreamy.enlarging.epsilon import SupirEpsilon
from dreamy.enlarging.sampler import SamplerSettings, restore_sample

from .supir_synthetic import FIXTURES

TOL = 1e-5

RUNS = {
    # Restoration off, churn clamped at sqrt(2)-1, CFG falling 4 -> 3, constant control scale.
    "a": (SamplerSettings(steps=4, churn=5.0, cfg_scale_start=4.0, cfg_scale=3.0, control_scale=0.9), 123),
    # Restoration guidance 2.0, churn 1/6 as in a 30-step run, CFG rising 1 -> 4, linear control scale.
    "b": (
        SamplerSettings(
            steps=3,
            churn=0.5,
            cfg_scale_start=1.0,
            cfg_scale=4.0,
            restoration_scale=2.0,
            control_scale=0.9,
            control_scale_start=0.3,
        ),
        321,
    ),
}


@pytest.fixture(scope="module")
def oracle() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "sampler.safetensors"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("run", sorted(RUNS))
def test_sampler_matches_official(run, reduced_supir, oracle):
    settings, seed = RUNS[run]
    model = SupirEpsilon(
        reduced_supir.control,
        reduced_supir.unet,
        cond=TextConditioning(oracle["cond.context"], oracle["cond.vector"]),
        uncond=TextConditioning(oracle["uncond.context"], oracle["uncond.vector"]),
    )
    steps: list[torch.Tensor] = []
    generator = torch.Generator().manual_seed(seed)
    replay = torch.randn(oracle["hint"].shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(replay, oracle[f"{run}.initial_noise"]), "torch's CPU generator no longer replays the oracle"

    def record(done: int, total: int, x: torch.Tensor) -> None:
        assert (done, total) == (len(steps) + 1, settings.steps)
        steps.append(x)

    final = restore_sample(model, oracle["hint"], settings, generator, x_center=oracle["x_center"], on_step=record)
    errors = [_rel(x, oracle[f"{run}.step{i}"]) for i, x in enumerate(steps)]
    assert len(steps) == settings.steps
    assert max(errors) < TOL
    assert torch.equal(final, steps[-1])
