"""Exact fp32 masters stored as a residual over the checkpoint's own fp16 parts (no tensor stored twice).

A checkpoint already holds every trained tensor in fp16 for Dream (``unet/``, ``text_encoder/``,
``lora_*.safetensors``). Storing the fp32 masters beside them (4 bytes a value) repeated that
information; here each master ``x`` is stored as the difference of its IEEE-754 bit pattern from
that of its fp16 part ``h`` widened to fp32 (``r = float32(h)``):

    residual = bits(x) - bits(r)            (an integer; |residual| <= 2**12 wherever h is a normal fp16)
    x        = from_bits(bits(r) + residual)  (exact: integer arithmetic on the bit patterns)

``h`` is ``x`` rounded to nearest, so ``x`` and ``r`` have the same sign and lie within half an fp16
ulp, i.e. within 2**12 fp32 ulps: the residual fits an int16 (2 bytes a value). Values it does not
fit (fp16 subnormals below 6.1e-5, beyond 65504) are kept as (flat index, exact fp32 value) pairs;
a tensor with no usable fp16 part (pivotal tuning's whole embedding matrix, whose base rows are not
in the checkpoint) or with too many such values is kept whole in fp32, as before. Full fine-tune of
SD1.5: 982.6 M trained values -> masters 3.93 GB before, 1.97 GB (+ a few MB of exceptions) after.

Keys in ``resume/masters.safetensors``: ``NAME`` (fp32, kept whole), ``NAME#residual`` (int16),
``NAME#index`` (int64) + ``NAME#value`` (fp32). A file with none of the ``#`` keys is the older
format (every master whole) and reads as it is.
"""

from __future__ import annotations

import torch

RESIDUAL, INDEX, VALUE = "#residual", "#index", "#value"
_ADAPTER = ".default."  # peft's adapter name in a trained tensor's key (modes._ADAPTER), absent from the parts
_MAX_EXCEPTIONS = 0.25  # beyond this share of values outside int16, the tensor is kept whole


def reference(key: str, parts: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor | None:
    """The fp16 part stored for trained tensor ``key`` ("unet.NAME", "text_encoder.NAME"), or None.

    Full fine-tune: the component's state dict entry; LoRA: the adapter tensor without peft's adapter name.
    """
    module, _, name = key.partition(".")
    whole = parts.get(module)
    if whole is not None and name in whole:
        return whole[name]
    lora = parts.get(f"lora_{module}")
    if lora is not None:
        return lora.get(name.replace(_ADAPTER, "."))
    return None


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32).to(torch.int64)


def encode(masters: dict[str, torch.Tensor], parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The entries of ``resume/masters.safetensors`` for fp32 ``masters`` over fp16 ``parts`` (CPU tensors)."""
    out: dict[str, torch.Tensor] = {}
    for key, x in masters.items():
        ref = reference(key, parts)
        if ref is None or ref.shape != x.shape or x.dtype != torch.float32:
            out[key] = x
            continue
        # In int32: x and float32(h) share their sign bit (h is x rounded), so the difference of their bit
        # patterns cannot overflow. Half the bytes of int64 arithmetic: this runs on the writer's thread
        # for every checkpoint (~1 G values for a full fine-tune of SD1.5).
        delta = (x.contiguous().view(torch.int32) - ref.to(torch.float32).view(torch.int32)).reshape(-1)
        residual = delta.to(torch.int16)  # wraps where the difference does not fit: those are the exceptions
        wide = residual.to(torch.int32) != delta
        count = int(wide.sum())
        if count > _MAX_EXCEPTIONS * delta.numel():
            out[key] = x
            continue
        if count:
            index = wide.nonzero().reshape(-1)
            out[key + INDEX] = index
            out[key + VALUE] = x.reshape(-1)[index].clone()
            residual = residual.masked_fill(wide, 0)
        out[key + RESIDUAL] = residual.reshape(x.shape)
    return out


def is_encoded(stored: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith(RESIDUAL) for k in stored)


def decode(stored: dict[str, torch.Tensor], parts: dict[str, dict[str, torch.Tensor]],
           keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The exact fp32 masters back from ``encode``'s entries and the same fp16 ``parts``.

    ``keys``: the trained tensors' names (default: every name ``stored`` holds). Raises KeyError for
    a name without an entry.
    """
    if keys is None:
        keys = list(dict.fromkeys(k.split("#", 1)[0] for k in stored))
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        if key in stored:
            out[key] = stored[key]
            continue
        ref = reference(key, parts)
        if ref is None or key + RESIDUAL not in stored:
            raise KeyError(key)
        r = ref.to(torch.float32)
        bits = (_bits(r).reshape(-1) + stored[key + RESIDUAL].reshape(-1).to(torch.int64)).to(torch.int32)
        x = bits.view(torch.float32)
        if key + INDEX in stored:
            x[stored[key + INDEX]] = stored[key + VALUE]
        out[key] = x.reshape(r.shape)
    return out
