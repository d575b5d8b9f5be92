"""The CUDA fast path's CPU-testable parts: level policy, fallback, batch planning, and the op sequence.

The captured program runs eagerly on the CPU here; that it equals the generic loop bit for bit is
what makes a replay of its capture equal stock on the GPU (bench/dream.py checks the GPU side).
"""

import numpy as np
import pytest
import torch

from conftest import FAST
from dreamy.dreaming.blocks import decode, denoise, encode_prompt, initial_noise
from dreamy.dreaming.dreams import dream
from dreamy.dreaming.fast import drop_fast_state, select
from dreamy.dreaming.fast.graphs import _fingerprint, set_layout
from dreamy.dreaming.fast.policy import padded, plan_batches, resolve_level, unsupported_reason
from dreamy.dreaming.fast.program import DreamProgram, eager_decode
from dreamy.errors import DreamyError
from dreamy.recipes.presets import load_preset
from dreamy.recipes.recipe import resolve

CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    ("fast", "env", "level"),
    [
        (None, {}, "graph"),
        (None, {"DREAMY_FAST": "0"}, "off"),
        (None, {"DREAMY_FAST": "off"}, "off"),
        (None, {"DREAMY_FAST": "1"}, "graph"),
        (None, {"DREAMY_FAST": "compile"}, "compile"),
        (None, {"DREAMY_FAST": "exact"}, "graph"),
        (False, {"DREAMY_FAST": "compile"}, "off"),  # the argument beats the environment
        (True, {"DREAMY_FAST": "0"}, "graph"),
        (True, {"DREAMY_FAST": "compile"}, "compile"),
        ("compile", {"DREAMY_FAST": "0"}, "compile"),
    ],
)
def test_level_resolution(fast, env, level):
    assert resolve_level(fast, env) == level


def test_unknown_levels_are_refused_in_one_sentence():
    with pytest.raises(DreamyError, match="DREAMY_FAST"):
        resolve_level(None, {"DREAMY_FAST": "turbo"})
    with pytest.raises(DreamyError, match="not a level"):
        resolve_level("turbo", {})


def test_fallback_reasons():
    assert "CUDA" in unsupported_reason(torch.device("cpu"), "ddim")
    assert "mps" in unsupported_reason(torch.device("mps"), "ddim")
    assert "sampler" in unsupported_reason(CUDA, "euler", capability=(9, 0))
    assert "capability" in unsupported_reason(CUDA, "ddim", capability=(6, 1))
    assert unsupported_reason(CUDA, "ddim", capability=(9, 0)) is None
    assert unsupported_reason(CUDA, "ddim", capability=(8, 6)) is None


def test_batch_plan_pads_the_last_batch_instead_of_recapturing():
    n, chunks = plan_batches([5, 6, 7, 8, 9], 2)
    assert n == 2 and chunks == [[5, 6], [7, 8], [9]]
    assert padded([9], n) == [9, 9]
    assert plan_batches([1, 2, 3], 8) == (3, [[1, 2, 3]])  # never capture bigger than the sweep
    assert plan_batches([4], 1) == (1, [[4]])


def test_select_falls_back_on_the_cpu_and_when_switched_off(tiny_model, monkeypatch):
    recipe = resolve(load_preset("biased-dreams"), "dream", FAST, True)
    assert select(tiny_model, recipe, [0, 1], 2, (1, 77, 32), None) is None
    assert select(tiny_model, recipe, [0, 1], 2, (1, 77, 32), True) is None
    monkeypatch.setenv("DREAMY_FAST", "0")
    assert select(tiny_model, recipe, [0], 1, (1, 77, 32), None) is None


def test_dream_with_fast_on_a_cpu_is_the_generic_dream(tiny_model):
    on = dream(tiny_model, seeds="3,4", overrides=FAST, unlock=True, batch_size=2, fast=True)
    off = dream(tiny_model, seeds="3,4", overrides=FAST, unlock=True, batch_size=2, fast=False)
    for a, b in zip(on, off, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert "path" not in a.recipe.runtime  # only the fast path labels itself


def _program(model, overrides, n):
    recipe = resolve(load_preset("biased-dreams"), "dream", {**FAST, **overrides}, True)
    s = recipe.settings
    cond, uncond = encode_prompt(model, s.prompt), encode_prompt(model, s.negative_prompt)
    return recipe, cond, uncond, DreamProgram(model, recipe, n, tuple(cond.shape))


@pytest.mark.parametrize("overrides", [{}, {"guidance": 1.0}])
def test_program_equals_the_generic_loop_bit_for_bit(tiny_model, overrides):
    recipe, cond, uncond, prog = _program(tiny_model, overrides, 1)
    s = recipe.settings
    noise = initial_noise(tiny_model, 7, s.width, s.height)
    prog.load(noise, cond, uncond)
    latents = prog.denoise(tiny_model.unet)
    expected = denoise(tiny_model, recipe, noise, cond, uncond)
    assert torch.equal(latents, expected)
    u8, finite = prog.decode(eager_decode(tiny_model), latents)
    images, upcast = decode(tiny_model, expected)
    assert bool(finite) and not upcast
    assert np.array_equal(u8[0].numpy(), np.asarray(images[0]))


def test_a_seed_in_a_padded_batch_equals_it_in_a_full_one(tiny_model):
    """Rows of a batch do not see each other: padding a short batch leaves the real seeds' images alone."""
    recipe, cond, uncond, prog = _program(tiny_model, {}, 2)
    s = recipe.settings
    a, b = (initial_noise(tiny_model, seed, s.width, s.height) for seed in (11, 12))
    outs = []
    for pair in ((a, b), (a, a)):
        prog.load(torch.cat(pair), cond, uncond)
        outs.append(prog.decode(eager_decode(tiny_model), prog.denoise(tiny_model.unet))[0])
    assert torch.equal(outs[0][0], outs[1][0])
    assert not torch.equal(outs[0][1], outs[1][1])


def test_layout_switch_moves_the_weights_and_drop_restores_it(tiny_dir):
    from dreamy.models.sources import load_model

    model = load_model(str(tiny_dir), device="cpu")
    before = _fingerprint(model)
    set_layout(model, True)
    assert _fingerprint(model) != before  # a capture keyed on the old pointers would be stale
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    drop_fast_state(model)
    assert model.unet.conv_in.weight.is_contiguous()
    assert not model._dreamy_channels_last
