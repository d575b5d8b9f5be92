"""The model a validation render uses: what Dream loads for the checkpoint, kept in memory all run long.

Dream loads a Train checkpoint as its base model (``load_model`` in the recipe's precision) completed
by the checkpoint's fp16 parts (``models.checkpoints.complete``: a full fine-tune's components
replaced, LoRA adapters merged into the base's Linear weights, pivotal tuning's new token rows
added). ``ValidationModel`` is that model, loaded once at set-up, with each checkpoint's parts put
in the same way, in place. So a validation picture is the picture Dream gives for that checkpoint
and seed (bit for bit on the CPU; on CUDA through the same fast path, see dreaming/fast), and the
fast path's capture is reused from checkpoint to checkpoint (the weights keep their addresses).
The live fp32 masters are never touched.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.checkpoints import add_token_embeddings, merge_lora
from ..models.sources import SDModel, load_model


class ValidationModel:
    """A second copy of the base in Dream's dtype; ``put`` gives it a checkpoint's parts."""

    def __init__(self, base: str, device: torch.device, precision: str, lora_scale: float) -> None:
        self.base, self.device, self.precision, self.lora_scale = base, device, precision, lora_scale
        self.model = self._load()
        self._pristine: dict[str, torch.Tensor] = {}  # "unet.<path>": a LoRA-merged weight as the base had it
        self._tokens: list[str] = []
        self.dirty = False  # holds a checkpoint's weights, not the base's

    def _load(self) -> SDModel:
        return load_model(self.base, device=self.device, precision=self.precision, expected_arch=None)

    def as_base(self) -> SDModel:
        """The base model as Dream loads it (step 0's renders); reloaded if a checkpoint was put in."""
        if self.dirty:
            from ..dreaming.fast import drop_fast_state

            drop_fast_state(self.model)
            self.model = self._load()
            self._pristine.clear()
            self._tokens = []
            self.dirty = False
        return self.model

    @torch.no_grad()
    def put(self, parts: dict[str, dict[str, torch.Tensor]], tokens: list[str]) -> SDModel:
        """The model Dream loads for a checkpoint of ``parts`` (fp16 tensors, any device), in the order
        and arithmetic of ``models.checkpoints.complete``."""
        m = self.model
        for name in ("unet", "text_encoder"):
            if name in parts:
                own = getattr(m, name).state_dict()
                for key, t in parts[name].items():
                    own[key].copy_(t)
        for name, module in (("lora_unet", m.unet), ("lora_text_encoder", m.text_encoder),
                             ("lora_text_encoder_2", m.text_encoder_2)):
            if name in parts:
                self._reset(module, name.removeprefix("lora_"), parts[name])
                merge_lora(module, parts[name], self.lora_scale)
        if "embeddings" in parts:  # clip_l: the first text encoder; SDXL's clip_g: the second
            pairs = [(m.tokenizer, m.text_encoder, parts["embeddings"]["clip_l"])]
            if "clip_g" in parts["embeddings"]:
                pairs.append((m.tokenizer_2, m.text_encoder_2, parts["embeddings"]["clip_g"]))
            for tokenizer, encoder, rows in pairs:
                if not self._tokens:
                    add_token_embeddings(tokenizer, encoder, tokens, rows)
                    encoder.to(m.device).eval().requires_grad_(False)
                else:
                    weight = encoder.get_input_embeddings().weight
                    weight[-len(tokens) :] = rows.to(weight.device, weight.dtype)
            self._tokens = list(tokens)
        self.dirty = True
        return m

    def _reset(self, module: torch.nn.Module, prefix: str, lora: dict[str, torch.Tensor]) -> None:
        """Put back the base weights under each adapter before merging this checkpoint's (merging adds)."""
        for key in lora:
            if not key.endswith(".lora_A.weight"):
                continue
            path = key[: -len(".lora_A.weight")]
            weight = module.get_submodule(path).weight
            saved = self._pristine.get(f"{prefix}.{path}")
            if saved is None:
                self._pristine[f"{prefix}.{path}"] = weight.detach().clone()
            else:
                weight.copy_(saved)

    def put_checkpoint(self, path: Path, tokens: list[str]) -> SDModel:
        """``put`` with a checkpoint's parts read from disk (a resume's catch-up rows)."""
        from .checkpoints import read_parts

        return self.put(read_parts(path), tokens)
