"""Samplers a dream may use: our name -> diffusers scheduler class, and A1111's name for it both ways.

A scheduler is built from the preset's keyword arguments alone (plus the few a sampler's name fixes,
such as the SDE variant of DPM++), every other argument at the class's default, exactly as a recipe
written as ``DDIMScheduler(beta_start=..., ...)`` does.

Samplers that draw fresh noise at every step (A1111's ancestral "Euler a" and the SDE samplers)
draw it from each seed's own generator - the CPU generator that drew the seed's starting noise,
continued, as stock diffusers does with a per-image generator list - so a seed's picture does not
depend on the batch it is in (see :func:`is_noisy` and ``dreamy.dreaming.blocks.denoise``).
DPM++ SDE (k-diffusion's ``sample_dpmpp_sde``, diffusers' ``DPMSolverSDEScheduler``) draws its noise
from a torchsde Brownian tree instead: one tree per row, seeded with the row's seed (as A1111's
``create_noise_sampler`` seeds it with the batch's seeds; diffusers' ``BatchedBrownianTree`` takes the
list as ``noise_sampler_seed``), spanning the schedule's own sigma range (which no row changes), and
built on the CPU in fp32 (:func:`make_scheduler`), so a seed's noise is the same in any batch and on
any device, as the starting noise is.

A1111's names (its ``modules/sd_samplers_kdiffusion.py`` list, whose samplers are Katherine
Crowson's k-diffusion ``sample_euler_ancestral``, ``sample_dpmpp_2m`` ...; and its DDIM and PLMS)
map onto diffusers' ports of the same algorithms. The step maths is the same; the sigma schedule
is diffusers' (linear interpolation between the training sigmas, where k-diffusion's
``DiscreteSchedule`` interpolates log-sigmas), so pictures are close to A1111's, not equal.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import PresetError


@dataclass(frozen=True)
class Sampler:
    """One sampler Dreamy offers.

    ``scheduler``: the diffusers class name; ``a1111``: A1111's "Sampler" label for it (a " Karras"
    suffix is added when the recipe asks for Karras sigmas); ``fixed``: scheduler arguments the name
    implies, which a recipe may not contradict; ``noisy``: it draws noise at every step; ``needs``:
    a package the scheduler imports that Dreamy does not require.
    """

    scheduler: str
    a1111: str
    fixed: dict[str, Any] = field(default_factory=dict)
    noisy: bool = False
    needs: str = ""


SAMPLERS: dict[str, Sampler] = {
    "ddim": Sampler("DDIMScheduler", "DDIM"),
    "euler": Sampler("EulerDiscreteScheduler", "Euler"),
    "euler_a": Sampler("EulerAncestralDiscreteScheduler", "Euler a", noisy=True),
    "dpmpp_2m": Sampler("DPMSolverMultistepScheduler", "DPM++ 2M"),
    "dpmpp_2m_sde": Sampler("DPMSolverMultistepScheduler", "DPM++ 2M SDE", {"algorithm_type": "sde-dpmsolver++"},
                            noisy=True),
    # k-diffusion's sample_dpmpp_sde: diffusers' port draws its noise from torchsde's Brownian tree.
    "dpmpp_sde": Sampler("DPMSolverSDEScheduler", "DPM++ SDE", noisy=True, needs="torchsde"),
    "pndm": Sampler("PNDMScheduler", "PLMS"),  # A1111's PLMS is PNDM with skip_prk_steps (from_a1111 sets it)
}

# SD 1.x's training schedule (its v1-inference.yaml: linear_start 0.00085, linear_end 0.012, the
# "scaled linear" betas), which A1111 reads from the model and diffusers must be told.
SD1_SCHEDULE: dict[str, Any] = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
# A1111's DDIM and PLMS (the CompVis samplers) step on timesteps 1, 1 + 1000/n, ..., as diffusers'
# "leading" spacing with steps_offset 1 does; the final step goes to alpha_0, not to 1.
_A1111_EXTRA: dict[str, dict[str, Any]] = {
    "ddim": {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1},
    "pndm": {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1},
}
# A1111 >= 1.9 writes the sigma schedule apart ("Schedule type: Karras"); these need no argument.
_DEFAULT_SCHEDULES = ("", "automatic", "uniform")


def is_noisy(sampler: str, kwargs: dict[str, Any]) -> bool:
    """Whether ``sampler`` with scheduler arguments ``kwargs`` draws noise at every step (and so
    needs one generator per seed): the ancestral and SDE samplers, and DPM++ 2M given an SDE
    ``algorithm_type``."""
    return SAMPLERS[sampler].noisy or str(kwargs.get("algorithm_type", "")).startswith("sde")


def from_a1111(name: str, schedule_type: str = "") -> tuple[str, dict[str, Any]]:
    """A1111's "Sampler" (and, from A1111 1.9, "Schedule type") -> (our sampler, scheduler arguments
    that reproduce A1111's schedule for SD 1.x).

    ``name`` as A1111 writes it, e.g. ``"Euler a"``, ``"DPM++ 2M Karras"``; ``schedule_type`` e.g.
    ``"Karras"`` or ``""``. Raises PresetError naming the sampler when Dreamy has no equivalent
    (A1111's LMS, Heun, DPM2, UniPC, ..., a schedule other than Karras, or a missing package).
    """
    label = " ".join(str(name).split())
    schedule = " ".join(str(schedule_type or "").split()).lower()
    karras = schedule == "karras"
    if label.endswith(" Karras"):
        label, karras = label[: -len(" Karras")], True
    ours = next((n for n, s in SAMPLERS.items() if s.a1111 == label), None)
    offered = ", ".join(dict.fromkeys(s.a1111 for s in SAMPLERS.values()))
    if ours is None:
        raise PresetError(f"A1111's sampler '{str(name)[:40]}' has no equivalent in Dreamy (it offers {offered}, "
                          "with Karras sigmas where A1111 has them).")
    if schedule not in (*_DEFAULT_SCHEDULES, "karras"):
        raise PresetError(f"A1111's schedule type '{str(schedule_type)[:40]}' has no equivalent in Dreamy "
                          "(it offers the sampler's own schedule and Karras).")
    missing = _missing_package(ours)
    if missing:
        raise PresetError(missing)
    kwargs = {**SD1_SCHEDULE, **_A1111_EXTRA.get(ours, {})}
    if karras:
        if "use_karras_sigmas" not in _accepted(ours):
            raise PresetError(f"A1111's '{label} Karras' has no equivalent in Dreamy: diffusers' "
                              f"{SAMPLERS[ours].scheduler} has no Karras sigmas.")
        kwargs["use_karras_sigmas"] = True
    return ours, kwargs


def a1111_name(sampler: str, kwargs: dict[str, Any] | None = None) -> str:
    """Our sampler (and its scheduler arguments) -> A1111's "Sampler" label, e.g. "DPM++ 2M Karras"."""
    karras = bool((kwargs or {}).get("use_karras_sigmas"))
    return SAMPLERS[sampler].a1111 + (" Karras" if karras else "")


def _missing_package(sampler: str) -> str:
    """"" when the sampler's optional package is importable; else the sentence saying so."""
    need = SAMPLERS[sampler].needs
    if need and importlib.util.find_spec(need) is None:
        return (f"Sampler '{sampler}' (A1111's {SAMPLERS[sampler].a1111}) needs the {need} package, which is not "
                f"installed here (pip install {need}); dpmpp_2m_sde is the SDE sampler that needs nothing more.")
    return ""


def _accepted(sampler: str) -> set[str]:
    return set(inspect.signature(_scheduler_class(sampler).__init__).parameters) - {"self"}


def _scheduler_class(sampler: str):
    import diffusers

    return getattr(diffusers, SAMPLERS[sampler].scheduler)


def check_scheduler_args(sampler: str, kwargs: dict[str, Any], where: str) -> None:
    """Refuse (PresetError naming ``where``) a sampler whose package is missing, arguments its
    scheduler class does not take, and arguments that contradict what the sampler's name fixes."""
    missing = _missing_package(sampler)
    if missing:
        raise PresetError(f"{where}: {missing}")
    cls = _scheduler_class(sampler)
    unknown = sorted(set(kwargs) - _accepted(sampler))
    if unknown:
        raise PresetError(f"{where}: {cls.__name__} takes no argument(s) {unknown}.")
    for key, value in SAMPLERS[sampler].fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise PresetError(f"{where}: sampler '{sampler}' is {cls.__name__} with {key} = {value!r}; "
                              f"[dream.scheduler] may not set it to {kwargs[key]!r}.")


def check_sampler_runs(sampler: str, kwargs: dict[str, Any], steps: int, where: str) -> None:
    """Refuse (PresetError naming ``where``) a sampler + scheduler arguments + step count that diffusers
    would accept and then crash or blow up on mid-dream: the scheduler is built, its timesteps set for
    ``steps`` and checked against its training range, and its whole loop dry-run on a 1-pixel latent."""
    check_scheduler_args(sampler, kwargs, where)
    try:
        key = json.dumps(kwargs, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        key = repr(sorted(kwargs.items()))
    reason = _dry_run(sampler, key, int(steps))
    if reason:
        args = ", ".join(f"{k} = {v!r}" for k, v in kwargs.items()) or "no arguments"
        raise PresetError(f"{where}: sampler '{sampler}' ({SAMPLERS[sampler].scheduler} with {args}) cannot run "
                          f"{steps} steps: {reason}.")


@functools.lru_cache(maxsize=256)
def _dry_run(sampler: str, key: str, steps: int) -> str:
    """"" when the schedule runs; else why not (one clause)."""
    import torch

    try:
        scheduler = make_scheduler(sampler, json.loads(key))
    except Exception as e:  # noqa: BLE001 - diffusers raises anything for a bad value
        return f"the scheduler cannot be built ({type(e).__name__}: {e})"
    try:
        scheduler.set_timesteps(steps, device="cpu")
        timesteps = scheduler.timesteps
        n = int(scheduler.config.num_train_timesteps)
        if len(timesteps) == 0:
            return "it makes no timesteps"
        bad = [int(t) for t in timesteps if not 0 <= float(t) < n]
        if bad:
            return f"its timesteps reach {bad[0]}, outside the model's 0..{n - 1}"
        x = torch.ones(1, 1, 1, 1) * scheduler.init_noise_sigma
        # A noisy sampler draws from a generator of its own here, never from torch's global one.
        extra = {"generator": torch.Generator().manual_seed(0)} if "generator" in step_parameters(scheduler) else {}
        if hasattr(scheduler, "noise_sampler_seed"):
            scheduler.noise_sampler_seed = [0]
        for t in timesteps:
            scheduler.scale_model_input(x, t)
            x = scheduler.step(torch.full_like(x, 0.5), t, x, return_dict=False, **extra)[0]
        if not bool(torch.isfinite(x).all()):
            return "its steps produce NaN/inf"
    except Exception as e:  # noqa: BLE001
        return f"diffusers fails ({type(e).__name__}: {e})"
    return ""


def step_parameters(scheduler: Any) -> set[str]:
    """The keyword arguments a scheduler's ``step`` takes (``generator`` for the noisy ones)."""
    return set(inspect.signature(scheduler.step).parameters)


def make_scheduler(sampler: str, kwargs: dict[str, Any]):
    """A fresh scheduler (schedulers hold per-run state, so every job gets its own), built from the
    sampler's fixed arguments and ``kwargs``. Raises PresetError as :func:`check_scheduler_args`.

    For ``dpmpp_sde`` it is diffusers' ``DPMSolverSDEScheduler`` with its Brownian tree on the CPU
    (:func:`_cpu_tree_sde`); set ``noise_sampler_seed`` to the rows' seeds before the first step."""
    check_scheduler_args(sampler, kwargs, f"sampler '{sampler}'")
    kwargs = {**SAMPLERS[sampler].fixed, **kwargs}
    cls = _cpu_tree_sde() if sampler == "dpmpp_sde" else _scheduler_class(sampler)
    # diffusers' config mixin logs about steps_offset != 1 and similar "outdated config" notes;
    # the recipe keeps those values on purpose.
    log = logging.getLogger("diffusers.configuration_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return cls(**kwargs)
    finally:
        log.setLevel(level)


@functools.lru_cache(maxsize=1)
def _cpu_tree_sde() -> type:
    """diffusers' ``DPMSolverSDEScheduler`` whose Brownian tree is built on the CPU in fp32 and whose
    draws are moved to the latents' device and dtype.

    Stock builds the tree on the latents' device and dtype, so a CUDA fp16 run draws other noise than
    a CPU run (torchsde seeds a generator of that device). On the CPU in fp32 the tree is stock's own
    (same shape, dtype, device, sigma range and seeds), so the pictures are stock's bit for bit."""
    import torch
    from diffusers import DPMSolverSDEScheduler
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    class CPUTreeDPMSolverSDEScheduler(DPMSolverSDEScheduler):
        def step(self, model_output, timestep, sample, return_dict: bool = True, s_noise: float = 1.0):
            if self.noise_sampler is None:  # stock makes it on the first step, from the same numbers
                positive = self.sigmas[self.sigmas > 0]
                tree = BrownianTreeNoiseSampler(torch.zeros(sample.shape, dtype=torch.float32),
                                                positive.min().item(), self.sigmas.max().item(),
                                                self.noise_sampler_seed)
                device, dtype = sample.device, sample.dtype

                def noise(sigma, sigma_next):
                    # torchsde warns when a query lands a float32 rounding below the tree's start (the
                    # sigmas pass through -log and exp) and clamps it to the start: stock's numbers,
                    # harmless, and a warning on every run. Clamping here instead would change stock's
                    # normaliser in the last bit, so the warning is silenced around the call.
                    with warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message=r"Should have (ta|tb)[<>]=t[01]")
                        return tree(sigma, sigma_next).to(device, dtype)

                self.noise_sampler = noise
            return super().step(model_output, timestep, sample, return_dict=return_dict, s_noise=s_noise)

    return CPUTreeDPMSolverSDEScheduler


