"""The official SUPIR sampler on Dreamy's weights: the baseline of ``bench/enlarge.py --official PATH``.

The official code (Fanghua-Yu/SUPIR) is never part of this repository. Give a checkout of it at run
time; ``einops`` and ``omegaconf`` must be importable (e.g. on PYTHONPATH). Its modules are imported
one by one with the package ``__init__``s of ``sgm`` stubbed (they pull in training, open_clip and
LLaVA code) and ``k_diffusion.sampling`` stubbed (only other samplers use it); no file of it is
edited. The official GLVControl and LightGLVUNet are built on the meta device and take our tensors
by their official names (``dreamy.enlarging.keys`` and the LDM renamer), so they share the GPU memory
of our modules and cost none. The noise is drawn from the same CPU generator in the same order as
our sampler draws it (``torch.randn_like`` is replaced while the official sampler runs), so the two
final latents can be compared, not only timed.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import torch

# options/SUPIR_v0.yaml's network_config / control_stage_config (the parts that shape the modules)
_COMMON = dict(adm_in_channels=2816, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
               model_channels=320, attention_resolutions=[4, 2], num_res_blocks=2, channel_mult=[1, 2, 4],
               num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True,
               transformer_depth=[1, 2, 10], context_dim=2048, spatial_transformer_attn_type="softmax-xformers",
               legacy=False)
_DISCRETIZATION = {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}


def import_official(path: str | Path) -> types.SimpleNamespace:
    """The official modules this baseline needs, imported from the checkout at ``path``."""
    root = Path(path).expanduser().resolve()
    if not (root / "SUPIR" / "modules" / "SUPIR_v0.py").is_file() or not (root / "sgm").is_dir():
        raise FileNotFoundError(f"{root} is not a checkout of Fanghua-Yu/SUPIR (no SUPIR/modules/SUPIR_v0.py)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name in ("sgm", "sgm.modules", "sgm.modules.diffusionmodules"):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(root / name.replace(".", "/"))]
            sys.modules[name] = stub
    if "k_diffusion.sampling" not in sys.modules:
        package, sampling = types.ModuleType("k_diffusion"), types.ModuleType("k_diffusion.sampling")
        package.__path__ = []
        sampling.get_sigmas_karras = sampling.BrownianTreeNoiseSampler = None
        sys.modules["k_diffusion"], sys.modules["k_diffusion.sampling"] = package, sampling
    names = {"v0": "SUPIR.modules.SUPIR_v0", "sampling": "sgm.modules.diffusionmodules.sampling",
             "denoiser": "sgm.modules.diffusionmodules.denoiser", "wrappers": "sgm.modules.diffusionmodules.wrappers"}
    return types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})


def _strip(names: dict[str, str], prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {official[len(prefix):]: state[ours] for official, ours in names.items()}


def _take(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    own = module.state_dict()
    for key, value in own.items():  # training leftovers (mask_LQ) that no forward reads
        if key not in state:
            state[key] = torch.zeros(value.shape)
    module.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        raise RuntimeError(f"the official {what} kept tensors on the meta device")
    return module.eval().requires_grad_(False)


def official_modules(ns: types.SimpleNamespace, supir: Any, overrides: dict | None = None) -> tuple[Any, Any]:
    """(GLVControl, LightGLVUNet) of the official code holding ``supir``'s tensors (SupirModules)."""
    from dreamy.enlarging.keys import CONTROL_PREFIX, connector_names, control_names
    from dreamy.models.ldm_keys import unet_to_ldm

    params = _COMMON | (overrides or {})
    base, connectors, control = supir.unet.unet, supir.unet.connectors, supir.control
    with torch.device("meta"):
        control_o = ns.v0.GLVControl(**params, input_upscale=1)
        unet_o = ns.v0.LightGLVUNet(mode="XL-base", project_type="ZeroSFT", project_channel_scale=2, **params)
    control_state = _strip(control_names(control.state_dict()), CONTROL_PREFIX, control.state_dict())
    unet_state = dict(unet_to_ldm(base, prefix=""))
    unet_state |= _strip(connector_names(connectors.state_dict(), connectors.layout), "model.diffusion_model.",
                         connectors.state_dict())
    device = next(base.parameters()).device
    return _take(control_o, control_state, "GLVControl").to(device), _take(unet_o, unet_state, "UNet").to(device)


@contextlib.contextmanager
def _noise_from(generator: torch.Generator):
    """``torch.randn_like`` drawing from ``generator`` as our sampler does (CPU, float32, then moved)."""
    from dreamy.enlarging.sampler import draw_noise

    original = torch.randn_like

    def randn_like(t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return draw_noise(t, generator).to(t.dtype)

    torch.randn_like = randn_like
    try:
        yield
    finally:
        torch.randn_like = original


@torch.no_grad()
def official_sample(ns: types.SimpleNamespace, modules: tuple[Any, Any], cond: Any, uncond: Any,
                    hint: torch.Tensor, settings: Any, seed: int, tiled: bool, dtype: torch.dtype,
                    tile: int = 128, stride: int = 64) -> torch.Tensor:
    """The official RestoreEDMSampler (or its tiled variant) on our conditioning; returns the latent."""
    from dreamy.enlarging.sampler import draw_noise

    control_o, unet_o = modules
    device = hint.device
    model = ns.wrappers.ControlWrapper(unet_o, compile_model=False, dtype=dtype)
    model.load_control_model(control_o)
    denoiser = ns.denoiser.DiscreteDenoiserWithControl(
        num_idx=1000, discretization_config=_DISCRETIZATION,
        weighting_config={"target": "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"},
        scaling_config={"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
    ).to(device)  # its σ table is a buffer: the official model moves it with the rest
    start = settings.cfg_scale_start if settings.linear_cfg else settings.cfg_scale
    kwargs = dict(num_steps=settings.steps, discretization_config=_DISCRETIZATION, s_churn=settings.churn,
                  s_noise=settings.noise_scale, restore_cfg=settings.restoration_scale, device=device.type,
                  guider_config={"target": "sgm.modules.diffusionmodules.guiders.LinearCFG",
                                 "params": {"scale": start, "scale_min": settings.cfg_scale}})
    sampler = (ns.sampling.TiledRestoreEDMSampler(tile_size=tile, tile_stride=stride, **kwargs) if tiled
               else ns.sampling.RestoreEDMSampler(**kwargs))
    c = {"crossattn": cond.context, "vector": cond.vector, "control": hint}
    uc = {"crossattn": uncond.context, "vector": uncond.vector, "control": hint}
    generator = torch.Generator("cpu").manual_seed(seed)
    x = draw_noise(hint, generator)
    with _noise_from(generator):
        return sampler(lambda i, s, cc, cs: denoiser(model, i, s, cc, cs), x, cond=c, uc=uc, x_center=hint,
                       control_scale=settings.control_scale).float()
