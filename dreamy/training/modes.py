"""What each training mode trains: full fine-tune, LoRA (peft), pivotal tuning (new tokens + LoRA).

``setup_mode`` prepares the live modules (freezing, adapters, new tokens), names every trained
tensor (the names key the fp32 masters in a resume state and the optimizer's order), and knows what
a checkpoint must hold for the mode. Trained tensors are always fp32, whatever the frozen base is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..recipes.settings import TrainSettings
from .data import check_caption, derived_seed
from .optim import TrainSetupError, quiet_bitsandbytes

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
TOKEN_GROUP = "tokens"
TOKEN_PARAM = "text_encoder.token_embedding"  # pivotal: the whole embedding matrix, of which the new rows learn
_ADAPTER = "default"


@dataclass
class Trainables:
    mode: str
    unet: Any
    text_encoder: Any
    tokenizer: Any
    params: dict[str, torch.nn.Parameter]  # stable name -> trained tensor, in optimizer order
    groups: list[dict[str, Any]]
    tokens: list[str] = field(default_factory=list)  # pivotal: the new tokens standing for the trigger
    pivot_step: int | None = None
    _orig_rows: torch.Tensor | None = None  # pivotal: the base vocabulary's embeddings, kept fixed
    flat_grad: torch.Tensor | None = None  # fused: every trained tensor's .grad is a view of this

    def fuse(self) -> None:
        """Full fine-tune: move every trained tensor (and its gradient) into one flat fp32 buffer.

        The model's parameters become views of the buffer, so the optimizer, the clip and the
        zeroing each touch one tensor. Gradients accumulate in place into the views (they are
        set before the first backward and zeroed, never freed).
        """
        if self.mode not in ("full", "prior") or self.flat_grad is not None:
            return
        params = list(self.params.values())
        ref = params[0]
        flat = torch.empty(sum(p.numel() for p in params), dtype=torch.float32, device=ref.device)
        grad = torch.zeros_like(flat)
        offset = 0
        for p in params:
            n = p.numel()
            flat[offset : offset + n].copy_(p.data.reshape(-1))
            p.data = flat[offset : offset + n].view_as(p)
            p.grad = grad[offset : offset + n].view_as(p)
            offset += n
        master = torch.nn.Parameter(flat)
        master.grad = grad
        self.flat_grad = grad
        self.groups = [{**self.groups[0], "params": [master]}]

    def optimizer_params(self) -> list[torch.Tensor]:
        """What the optimizer, the clip and the scaler see (the flat buffer when fused)."""
        return [p for g in self.groups for p in g["params"] if p.requires_grad]

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        if self.flat_grad is not None:
            self.flat_grad.zero_()
        else:
            optimizer.zero_grad(set_to_none=True)

    @property
    def text_trained(self) -> bool:
        """Whether the text encoder must run with gradients this step."""
        return any(p.requires_grad for p in self.text_encoder.parameters())

    def frozen_groups(self, step: int) -> set[str]:
        return {TOKEN_GROUP} if self.pivot_step is not None and step >= self.pivot_step else set()

    def before_step(self, step: int) -> None:
        """Pivotal tuning: from the pivot on, the new tokens are frozen for good."""
        if self.pivot_step is not None and step >= self.pivot_step:
            weight = self.text_encoder.get_input_embeddings().weight
            weight.requires_grad_(False)
            weight.grad = None

    def after_step(self) -> None:
        """Pivotal tuning: only the new rows learn; the optimizer's update of the others is undone."""
        if self._orig_rows is not None:
            with torch.no_grad():
                weight = self.text_encoder.get_input_embeddings().weight
                weight[: self._orig_rows.shape[0]] = self._orig_rows

    def substitute(self, caption: str, trigger: str) -> str:
        """Pivotal tuning: the trigger word becomes the new tokens in a caption.

        Every mode: a caption whose trigger word would be cut by the text encoder stops the run here,
        before training starts (TrainSetupError); other cut captions are logged (:func:`check_caption`)."""
        if not self.tokens or not trigger:
            check_caption(self.tokenizer, caption, trigger if trigger and trigger in caption else "")
            return caption
        out = re.sub(rf"(?<!\w){re.escape(trigger)}(?!\w)", "".join(self.tokens), caption)
        if "".join(self.tokens) in out:
            check_caption(self.tokenizer, out, "".join(self.tokens))
            return out
        check_caption(self.tokenizer, out)
        return out

    def checkpoint_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        """The tensors a checkpoint of this mode stores (before the fp16 cast), by part name."""
        if self.mode in ("full", "prior"):
            parts = {"unet": self.unet.state_dict()}
            if self.text_trained or any(n.startswith("text_encoder.") for n in self.params):
                parts["text_encoder"] = self.text_encoder.state_dict()
            return parts
        parts = {"lora_unet": lora_state_dict(self.unet)}
        te_lora = lora_state_dict(self.text_encoder)
        if te_lora:
            parts["lora_text_encoder"] = te_lora
        if self.tokens:
            n = len(self.tokens)
            parts["embeddings"] = {"clip_l": self.text_encoder.get_input_embeddings().weight[-n:].detach()}
        return parts

    def params_from_parts(self, parts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``checkpoint_parts`` read back: a checkpoint's stored tensors keyed like ``params`` (on the CPU).

        Raises KeyError naming a tensor this run trains that ``parts`` lacks (another mode's checkpoint).
        """
        out = {}
        for key in self.params:
            module, name = key.split(".", 1)
            if key == TOKEN_PARAM and self._orig_rows is not None:  # the base rows never change; the new ones are stored
                out[key] = torch.cat([self._orig_rows.cpu(), parts["embeddings"]["clip_l"].float()])
            elif f"lora_{module}" in parts:
                out[key] = parts[f"lora_{module}"][name.replace(f".{_ADAPTER}.", ".")]
            else:
                out[key] = parts[module][name]
        return out


def lora_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors of a peft-injected module, keyed ``<module path>.lora_A.weight`` (adapter name dropped)."""
    out = {}
    for name, p in module.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            out[name.replace(f".{_ADAPTER}.", ".")] = p.detach()
    return out


def _inject_lora(module: torch.nn.Module, targets: tuple[str, ...], s: TrainSettings, seed: int) -> None:
    quiet_bitsandbytes()
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise TrainSetupError("LoRA and pivotal tuning need the peft package: pip install peft.") from None
    config = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, init_lora_weights="gaussian",
                        target_modules=list(targets))
    with torch.random.fork_rng(devices=[]):  # seeded init, without disturbing anyone's generator
        torch.manual_seed(seed)
        inject_adapter_in_model(config, module, adapter_name=_ADAPTER)
    for name, p in module.named_parameters():
        is_lora = ".lora_A." in name or ".lora_B." in name
        p.requires_grad_(is_lora)
        if is_lora and p.dtype != torch.float32:
            p.data = p.data.float()  # fp32 masters even over an fp16 frozen base


def _named(prefix: str, module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {f"{prefix}.{n}": p for n, p in module.named_parameters() if p.requires_grad}


def _add_tokens(tokenizer: Any, text_encoder: Any, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    tokens = [f"<s{i}>" for i in range(n)]
    taken = [t for t in tokens if t in tokenizer.get_vocab()]
    if taken:
        raise TrainSetupError(f"The base model's tokenizer already has {taken[0]}; pivotal tuning needs new tokens.")
    old = text_encoder.get_input_embeddings().weight.detach().clone()
    tokenizer.add_tokens(tokens, special_tokens=True)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(old.shape[0], old.shape[0] + n)):
        raise TrainSetupError("The tokenizer did not append the new tokens at the end of its vocabulary.")
    weight = text_encoder.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(derived_seed(seed, "new-tokens"))
    rows = torch.randn(n, old.shape[1], generator=gen) * old.float().std().cpu()  # drawn on the CPU: any device, same rows
    with torch.no_grad():
        weight.data = weight.data.float()
        weight[old.shape[0] :] = rows.to(weight.device)
    return tokens, old.float().to(weight.device)


def setup_mode(unet: Any, text_encoder: Any, tokenizer: Any, s: TrainSettings) -> Trainables:
    """Freeze, inject and name what the recipe's mode trains; builds the optimizer's param groups."""
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if s.mode in ("full", "prior"):
        unet.requires_grad_(True)
        text_encoder.requires_grad_(s.train_text_encoder)
        params = {**_named("unet", unet), **_named("text_encoder", text_encoder)}
        groups = [{"name": "model", "params": list(params.values()), "lr": s.learning_rate}]
        return Trainables(s.mode, unet, text_encoder, tokenizer, params, groups)

    _inject_lora(unet, UNET_LORA_TARGETS, s, derived_seed(s.seed, "lora-unet"))
    params = _named("unet", unet)
    groups = [{"name": "unet", "params": list(params.values()), "lr": s.learning_rate}]
    tokens: list[str] = []
    orig = None
    pivot = None
    if s.mode == "lora" and s.lora_text_encoder:
        _inject_lora(text_encoder, TEXT_LORA_TARGETS, s, derived_seed(s.seed, "lora-text"))
        te_params = _named("text_encoder", text_encoder)
        params.update(te_params)
        groups.append({"name": "text_encoder", "params": list(te_params.values()), "lr": s.learning_rate})
    elif s.mode == "pivotal":
        if not s.trigger_word.strip():
            raise TrainSetupError("Pivotal tuning needs a trigger word: the new tokens are learned in its place.")
        tokens, orig = _add_tokens(tokenizer, text_encoder, s.num_new_tokens, s.seed)
        weight = text_encoder.get_input_embeddings().weight
        weight.requires_grad_(True)
        params[TOKEN_PARAM] = weight
        groups.append({"name": TOKEN_GROUP, "params": [weight], "lr": s.text_encoder_lr})
        pivot = int(s.ti_fraction * s.max_train_steps)
    return Trainables(s.mode, unet, text_encoder, tokenizer, params, groups, tokens, pivot, orig)
