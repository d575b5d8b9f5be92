"""Parity of GLVControl, the connectors and the hooked UNet with SUPIR's official modules.

The oracle ran SUPIR's ``GLVControl`` and ``LightGLVUNet`` (reduced depth, synthetic weights; see
tests/fixtures/supir/README.md) in fp32 on CPU. Here the same weights go through our renamer into
diffusers-based modules, and every tap must agree to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from dreamy.enlarging.conditioning import SUPIR_TIME_IDS, added_vector
from dreamy.enlarging.keys import official_connector_order

TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b).norm() / b.norm())


def _sub(t: torch.Tensor, n: int = 2048) -> torch.Tensor:
    """The oracle stored each tap as this strided subsample plus its full norm."""
    flat = t.flatten()
    return flat[:: max(1, flat.numel() // n)][:n]


@pytest.fixture(scope="module")
def run(reduced_supir, module_oracle):
    o = module_oracle
    unet = reduced_supir.unet
    taps: dict[str, torch.Tensor] = {}
    order = official_connector_order(unet.connectors.layout)
    handles = [
        unet.connectors.get_submodule(prefix).register_forward_hook(
            lambda _m, _a, out, i=i: taps.__setitem__(f"connector.{i}", out)
        )
        for i, prefix in enumerate(order)
    ]
    try:
        with torch.no_grad():
            control = reduced_supir.control(
                o["input.hint"], o["input.sample"], o["input.timestep"], o["input.context"], o["input.vector"]
            )
            eps = unet(o["input.sample"], o["input.timestep"], o["input.context"], o["input.vector"], control, 0.9)
            for h in handles:
                h.remove()  # the oracle's taps are those of the control_scale 0.9 run
            eps0 = unet(o["input.sample"], o["input.timestep"], o["input.context"], o["input.vector"], control, 0.0)
            # The stock UNet builds its vector from pooled text + size ids; ours takes it ready-made.
            pooled = o["input.vector"][:, :48]
            vector = added_vector(pooled, unet.unet.add_time_proj)
            ours0 = unet(o["input.sample"], o["input.timestep"], o["input.context"], vector, control, 0.0)
            stock = unet.unet(
                o["input.sample"],
                o["input.timestep"],
                encoder_hidden_states=o["input.context"],
                added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.tensor([SUPIR_TIME_IDS])},
            ).sample
    finally:
        for h in handles:
            h.remove()
    return control, taps, eps, eps0, ours0, stock


def test_control_features_match_official(run, module_oracle):
    control = run[0]
    assert len(control) == 10
    for i, feature in enumerate(control):
        assert _rel(_sub(feature), module_oracle[f"control.{i}.sub"]) < TOL, f"control feature {i}"
        assert abs(float(feature.norm() / module_oracle[f"control.{i}.norm"]) - 1) < TOL


def test_each_connector_matches_official(run, module_oracle):
    taps = run[1]
    assert len(taps) == 12
    for i in range(12):
        assert _rel(_sub(taps[f"connector.{i}"]), module_oracle[f"connector.{i}.sub"]) < TOL, f"project_modules.{i}"
        assert abs(float(taps[f"connector.{i}"].norm() / module_oracle[f"connector.{i}.norm"]) - 1) < TOL


def test_unet_epsilon_matches_official(run, module_oracle):
    assert _rel(run[2], module_oracle["eps"]) < TOL
    assert _rel(run[3], module_oracle["eps_scale0"]) < TOL


def test_control_scale_zero_is_the_stock_unet(run):
    """At control_scale 0 every connector passes the stock tensors through (up to fp32 rounding)."""
    ours0, stock = run[4], run[5]
    assert _rel(ours0, stock) < 1e-6
