"""A trained style on a model: LoRA files and textual-inversion embeddings, applied and recorded.

Made for SDXL styles (a UNet LoRA, text-encoder LoRAs, and pivotal tuning's embeddings for both text
encoders), and the same calls serve SD 1.x. Files are read as the ecosystem writes them:

- **LoRA** (``.safetensors``): kohya's layout (``lora_unet_*``, SDXL's ``lora_te1_*`` / ``lora_te2_*``,
  SD 1.x's ``lora_te_*``; UNet names in the original ``input_blocks`` or diffusers' ``down_blocks``
  form; ``lora_down``/``lora_up`` and ``.alpha`` per module, dreamy/models/sdxl_kohya.py) or
  diffusers/peft's (``unet.<module>.lora_A.weight`` / ``lora_B``, ``text_encoder.``, ``text_encoder_2.``).
  Each module's update ``scale * alpha / rank * up @ down`` is merged into its weight in fp32, as
  A1111 and ComfyUI merge a LoRA and as Dreamy merges Train's LoRA checkpoints
  (models/checkpoints.py), so the model then computes at full speed. (diffusers'
  ``load_lora_weights`` would do the same through peft, but its text-encoder path needs a peft newer
  than the one transformers 5.24 is locked with here.) A key that fits no module, or a LoRA kind
  Dreamy does not merge (LoHa, LoKr...), is refused in one sentence.
- **Embeddings**: SDXL's one file with ``clip_l`` (n, 768) and ``clip_g`` (n, 1280) vectors (what
  diffusers' advanced Dreambooth script and kohya write, A1111 and ComfyUI read); SD 1.x's single
  tensor (``emb_params``, A1111's ``string_to_param``, or diffusers' ``{token: vectors}``). Loaded
  with diffusers' ``load_textual_inversion`` into each text encoder; an n-vector embedding becomes
  the tokens ``TOKEN``, ``TOKEN_1``, ... ``TOKEN_{n-1}`` and ``TOKEN`` in a prompt is expanded to
  all of them, as diffusers' ``maybe_convert_prompt`` does. ``TOKEN`` is the file's name without its
  suffix unless given (A1111's and ComfyUI's rule: ``prtkl_emb.safetensors`` is ``prtkl_emb``).

Every file is recorded in the model's ``ref.adapters`` (:class:`AdapterRef`: source, sha256, scale
or token, and the short hash A1111 writes in ``Lora hashes`` / ``TI hashes``), so a recipe names the
exact style and recall re-applies it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import SourceError
from ..recipes.recipe import AdapterRef
from .hashing import file_sha256

LORA_SUFFIXES = (".safetensors",)
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
_TOKEN = re.compile(r"^[^\s,:()\[\]{}]{1,64}$")  # one prompt word A1111/diffusers can match


# ------------------------------------------------------------------------------------------- parsing


def parse_lora(spec: str | tuple[str, float]) -> tuple[Path, float]:
    """``"FILE"`` or ``"FILE:SCALE"`` (or a ``(file, scale)`` pair) -> (path, scale); scale 1.0 by default.

    The scale is a finite number from -10 to 10 (A1111's ``<lora:name:0.8>`` weight). A Windows drive
    letter (``C:\\...``) is not a scale: only a number after the last colon is. Raises SourceError."""
    if isinstance(spec, tuple):
        path, scale = Path(spec[0]).expanduser(), spec[1]
    else:
        head, _, tail = str(spec).rpartition(":")
        try:
            path, scale = (Path(head).expanduser(), float(tail)) if head else (Path(spec).expanduser(), 1.0)
        except ValueError:
            path, scale = Path(str(spec)).expanduser(), 1.0
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not -10.0 <= float(scale) <= 10.0:
        raise SourceError(f"The LoRA scale for '{path.name}' must be a number from -10 to 10, got {scale!r:.30}.")
    return _existing(path, LORA_SUFFIXES, "LoRA"), float(scale)


def parse_embedding(spec: str | tuple[str, str | None]) -> tuple[Path, str]:
    """``"FILE"`` or ``"FILE:TOKEN"`` (or a ``(file, token)`` pair) -> (path, token); the token is the file
    name without suffix unless given. Raises SourceError for a missing file or an unusable token."""
    if isinstance(spec, tuple):
        path, token = Path(spec[0]).expanduser(), spec[1]
    else:
        head, _, tail = str(spec).rpartition(":")
        split = head and head.lower().endswith(EMBEDDING_SUFFIXES) and not re.search(r"[/\\]", tail)
        path, token = (Path(head).expanduser(), tail) if split else (Path(str(spec)).expanduser(), None)
    path = _existing(path, EMBEDDING_SUFFIXES, "embedding")
    token = path.stem if token is None else str(token)
    if not _TOKEN.match(token):
        raise SourceError(f"'{token:.70}' cannot be an embedding's token: use one word without spaces, commas, "
                          "colons or brackets (by default the file's name).")
    return path, token


def _existing(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    if not path.is_file():
        raise SourceError(f"No {what} file at '{path}': check the path.")
    if path.suffix.lower() not in suffixes:
        raise SourceError(f"'{path.name}' is not a {what} file Dreamy reads ({', '.join(suffixes)}).")
    return path


# ------------------------------------------------------------------------------------------- hashes


def addnet_hash(path: Path) -> str:
    """sha256 of a ``.safetensors`` file's tensor data (the bytes after its header): kohya's "addnet"
    hash, whose first 12 digits A1111 writes in ``Lora hashes`` and Civitai shows as AutoV3."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- applying


def _pipeline(model: Any) -> Any:
    """A diffusers pipeline over the model's own modules (shared, not copied), for its loader mixins."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    common = dict(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
                  scheduler=EulerDiscreteScheduler(steps_offset=1))  # unused: the loaders need a full pipeline
    if model.arch == "sdxl":
        return StableDiffusionXLPipeline(text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
                                         add_watermarker=False, **common)
    return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                   **common)


def apply_adapters(model: Any, loras: Sequence[Any] = (), embeddings: Sequence[Any] = ()) -> Any:
    """Apply LoRAs (``"FILE[:SCALE]"``, see :func:`parse_lora`) and embeddings (``"FILE[:TOKEN]"``, see
    :func:`parse_embedding`) to a freshly loaded model, in place, and record them in ``model.ref``.

    LoRAs are fused into the UNet and text-encoder weights with their scales (adapter layers removed
    after); embeddings add their tokens to the tokenizer(s) and rows to the text encoder(s). Returns
    the model. Raises SourceError (one sentence) for a missing or unreadable file, a LoRA or an
    embedding made for another architecture or width, or a token the vocabulary already has."""
    parsed_loras = [parse_lora(s) for s in loras]
    parsed_embs = [parse_embedding(s) for s in embeddings]
    refs = []
    if parsed_loras:
        refs += _fuse_loras(model, parsed_loras)
    for path, token in parsed_embs:
        refs.append(_load_embedding(model, path, token))
    for module in model.text_encoders:
        module.eval().requires_grad_(False)
    model.unet.eval().requires_grad_(False)
    model.ref = dataclasses.replace(model.ref, adapters=(*model.ref.adapters, *refs))
    return model


def _fuse_loras(model: Any, loras: list[tuple[Path, float]]) -> list[AdapterRef]:
    refs = []
    for path, scale in loras:
        modules = _lora_modules(model, path)
        with torch.no_grad():
            for weight, down, up, alpha in modules:
                rank = down.shape[0]
                delta = up.to(weight.device, torch.float32).flatten(1) @ down.to(weight.device, torch.float32).flatten(1)
                factor = scale * (float(alpha) if alpha is not None else rank) / rank
                weight.copy_((weight.float() + factor * delta.reshape(weight.shape)).to(weight.dtype))
        refs.append(AdapterRef(kind="lora", source=str(path), sha256=file_sha256(path), name=path.stem, scale=scale,
                               a1111_hash=addnet_hash(path)[:12]))
    return refs


def _module_names(model: Any) -> dict[str, torch.Tensor]:
    """Every name a LoRA file may give a weight-bearing module of the model -> that module's weight."""
    from .sdxl_kohya import unet_names

    names: dict[str, torch.Tensor] = {}
    unet = dict(model.unet.named_modules())
    for path, sgm in unet_names(model.unet).items():
        weight = unet[path].weight
        for name in (f"lora_unet_{sgm.replace('.', '_')}", f"lora_unet_{path.replace('.', '_')}", f"unet.{path}"):
            names[name] = weight
    prefixes = (("lora_te1", "text_encoder"), ("lora_te2", "text_encoder_2")) if model.arch == "sdxl" else \
        (("lora_te", "text_encoder"),)
    for (kohya, diffusers), encoder in zip(prefixes, model.text_encoders, strict=False):
        for path, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear):
                bare = path.removeprefix("text_model.")  # transformers 4 has it, 5 does not
                for name in (f"{kohya}_text_model_{bare.replace('.', '_')}", f"{kohya}_{bare.replace('.', '_')}",
                             f"{diffusers}.{bare}", f"{diffusers}.text_model.{bare}"):
                    names[name] = module.weight
    return names


_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
          (".lora.down.weight", ".lora.up.weight"))


def _lora_modules(model: Any, path: Path) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]]:
    """(weight, down, up, alpha or None) for each module of the LoRA file, every key matched and checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise SourceError(f"{path.name} is not a readable .safetensors file ({e!s:.80}); download it again.") from None
    names = _module_names(model)
    out, unknown, foreign = [], [], []
    for key in sd:
        pair = next((p for p in _PAIRS if key.endswith(p[0])), None)
        if pair is None:
            if not (key.endswith((".alpha", *(p[1] for p in _PAIRS)))):
                unknown.append(key)
            continue
        module = key[: -len(pair[0])]
        up = sd.get(module + pair[1])
        weight = names.get(module)
        if weight is None or up is None:
            foreign.append(module)
            continue
        down = sd[key]
        if up.shape[0] != weight.shape[0] or down.flatten(1).shape[1] != weight[0].numel() or up.flatten(1).shape[1] \
                != down.shape[0]:
            foreign.append(module)
            continue
        alpha = sd.get(module + ".alpha")
        out.append((weight, down, up, alpha.item() if alpha is not None else None))
    if unknown:
        raise SourceError(f"{path.name} is not a LoRA Dreamy can merge (it holds {unknown[0]!r}: LoHa, LoKr and other "
                          "LyCORIS kinds are not read); use a plain LoRA.")
    if foreign or not out:
        raise SourceError(f"{path.name} does not fit this {_arch_label(model)} model ({len(foreign)} of its "
                          f"{len(foreign) + len(out)} modules have no match, first: {(foreign or ['none'])[0]!r:.80}); "
                          "it is a LoRA for another model.")
    return out


def _arch_label(model: Any) -> str:
    return "SDXL" if model.arch == "sdxl" else "Stable Diffusion 1.x"


def read_embedding(path: Path) -> dict[str, torch.Tensor]:
    """An embedding file's tensors by name (A1111's nested ``string_to_param`` flattened to its tensor).
    ``.pt``/``.bin`` are read with ``weights_only=True``, so no pickled code runs. Raises SourceError."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise many types for a bad file
        raise SourceError(f"{path.name} is not a readable embedding file ({type(e).__name__}: "
                          f"{str(e).strip()[:80]}).") from None
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]  # A1111's .pt: {"*": tensor}
    if not isinstance(data, dict):
        raise SourceError(f"{path.name} does not hold named vectors; it is not a textual-inversion embedding.")
    return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _vectors(model: Any, path: Path, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """One (n, width) tensor per text encoder of the model, checked against their widths."""
    encoders = model.text_encoders
    widths = [m.get_input_embeddings().weight.shape[1] for m in encoders]
    if model.arch == "sdxl":
        if not {"clip_l", "clip_g"} <= tensors.keys():
            raise SourceError(f"{path.name} is not an SDXL embedding (it needs 'clip_l' and 'clip_g' vectors, one set "
                              "per text encoder; it has " + (", ".join(sorted(tensors)[:4]) or "none") + ").")
        vectors = [tensors["clip_l"], tensors["clip_g"]]
    else:
        if "clip_l" in tensors or "clip_g" in tensors:
            raise SourceError(f"{path.name} is an SDXL embedding (clip_l/clip_g); this model is Stable Diffusion 1.x.")
        if len(tensors) != 1:
            raise SourceError(f"{path.name} holds {len(tensors)} tensors; an SD 1.x embedding holds one "
                              "(emb_params, string_to_param or one token).")
        vectors = list(tensors.values())
    out = []
    for v, width, name in zip(vectors, widths, ("first", "second")[: len(vectors)], strict=True):
        v = v.reshape(1, -1) if v.dim() == 1 else v
        if v.dim() != 2 or v.shape[1] != width or not 1 <= v.shape[0] <= 75:
            which = f"the {name} text encoder" if model.arch == "sdxl" else "the text encoder"
            raise SourceError(f"{path.name} holds vectors of shape {tuple(v.shape)}, but {which} of this model is "
                              f"{width} wide; it was trained on another model.")
        if not torch.isfinite(v).all():
            raise SourceError(f"{path.name} holds NaN or infinite values; it is damaged.")
        out.append(v)
    if len({v.shape[0] for v in out}) != 1:
        raise SourceError(f"{path.name} has different numbers of vectors for its two text encoders; it is damaged.")
    return out


def _load_embedding(model: Any, path: Path, token: str) -> AdapterRef:
    vectors = _vectors(model, path, read_embedding(path))
    pipe = _pipeline(model)
    tokenizers = [model.tokenizer, model.tokenizer_2][: len(vectors)]
    for tokenizer in tokenizers:
        if token in tokenizer.get_vocab():
            raise SourceError(f"The token '{token}' of {path.name} is already a word of this model's vocabulary (or "
                              "another embedding's); give another with FILE:TOKEN.")
    for v, encoder, tokenizer in zip(vectors, model.text_encoders, tokenizers, strict=True):
        pipe.load_textual_inversion(v, token=token, text_encoder=encoder, tokenizer=tokenizer)
    return AdapterRef(kind="embedding", source=str(path), sha256=file_sha256(path), name=path.stem, token=token,
                      a1111_hash=file_sha256(path)[:12])


def expand_tokens(model: Any, text: str) -> str:
    """``text`` with each loaded embedding's token expanded to its vectors' tokens (``TOKEN TOKEN_1 ...``),
    as diffusers' ``maybe_convert_prompt``; in the order the embeddings were loaded, so the result never
    depends on set order. Unchanged for a model without embeddings."""
    adapters = getattr(getattr(model, "ref", None), "adapters", ())
    added = model.tokenizer.added_tokens_encoder if adapters else {}
    for a in adapters:
        if a.kind != "embedding" or a.token not in added or a.token not in text:
            continue
        extra = []
        while f"{a.token}_{len(extra) + 1}" in added:
            extra.append(f"{a.token}_{len(extra) + 1}")
        if extra:
            text = text.replace(a.token, " ".join([a.token, *extra]))
    return text


def adapter_specs(adapters: Sequence[AdapterRef]) -> tuple[list[tuple[str, float]], list[tuple[str, str]]]:
    """A recipe's adapters as :func:`apply_adapters` takes them: (loras, embeddings)."""
    loras = [(a.source, a.scale if a.scale is not None else 1.0) for a in adapters if a.kind == "lora"]
    embeddings = [(a.source, a.token or Path(a.source).stem) for a in adapters if a.kind == "embedding"]
    return loras, embeddings
