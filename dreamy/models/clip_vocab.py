"""Write CLIP tokenizer folders (vocab.json + merges.txt) that `CLIPTokenizer.from_pretrained` reads.

Two vocabularies:
- ``write_byte_tokenizer``: a small byte-level vocabulary with no merges, for the tiny demo model.
  Every string still tokenizes (one token per character), so the demo runs any prompt.
- ``write_bpe_tokenizer``: the real CLIP vocabulary (49408 tokens) rebuilt from OpenAI's BPE merge
  list ``bpe_simple_vocab_16e6.txt.gz``, which installed packages such as open_clip ship. The vocab
  order follows CLIP's simple tokenizer: 256 byte symbols, the same with ``</w>``, one token per merge,
  then the two special tokens.

``write_tokenizer_of`` writes a loaded tokenizer back in the same layout (the one of SD1.5's own
``tokenizer`` folder), which every transformers version reads, the slow 4.x ``CLIPTokenizer`` included.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's BPE file has 262145 lines: a version header, then merges; SD's tokenizer uses the first
# 49408 - 256 - 256 - 2 = 48894 merges.
_N_MERGES = 49408 - 512 - 2


def _byte_pairs() -> tuple[list[int], list[int]]:
    """GPT-2/CLIP's byte -> printable code point table, as (bytes, code points) in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return printable, codes


def byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: 256 printable symbols, one per byte value, in CLIP's order."""
    return [chr(c) for c in _byte_pairs()[1]]


def byte_decoder() -> dict[str, int]:
    """The inverse table: a token's printable symbol -> the byte it stands for."""
    return {chr(c): b for b, c in zip(*_byte_pairs(), strict=True)}


def _write(folder: Path, vocab: dict[str, int], merges: list[str], pad_token: str,
           added: list[dict[str, Any]] | None = None, model_max_length: int = 77) -> Path:
    """vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json, as SD1.5's folder has them;
    ``added``: tokens beyond the vocabulary ({"id", "content", "special", ...}), kept in the config's
    ``added_tokens_decoder`` (read by transformers >= 4.34 and 5.x) and in ``added_tokens.json`` (older)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **special,
    }
    if added:
        flags = ("lstrip", "normalized", "rstrip", "single_word", "special")
        config["added_tokens_decoder"] = {str(t["id"]): {"content": t["content"], **{k: t[k] for k in flags}}
                                          for t in added}
        (folder / "added_tokens.json").write_text(json.dumps({t["content"]: t["id"] for t in added}, indent=2,
                                                             ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def write_byte_tokenizer(folder: Path, pad_token: str = EOS) -> Path:
    """A 514-token byte-level CLIP tokenizer (no merges): ids 0..511 are bytes, 512/513 are BOS/EOS.
    ``pad_token``: ``<|endoftext|>`` (SD1.5, SDXL's first tokenizer) or ``!`` (SDXL's second)."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return _write(folder, {t: i for i, t in enumerate(tokens)}, [], pad_token=pad_token)


def write_bpe_tokenizer(bpe_gz: Path, folder: Path, pad_token: str = EOS) -> Path:
    """Rebuild the CLIP ViT-L/14 tokenizer from OpenAI's BPE merge list.

    ``pad_token`` is ``<|endoftext|>`` for SD1.5 and SDXL's first encoder, ``!`` for SDXL's second.
    """
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [line for line in lines[1 : _N_MERGES + 1] if line]
    if len(merges) != _N_MERGES:
        raise ValueError(f"{bpe_gz} holds {len(merges)} merges; a CLIP BPE file holds at least {_N_MERGES}")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return _write(folder, {t: i for i, t in enumerate(tokens)}, merges, pad_token=pad_token)


def write_tokenizer_of(tokenizer: Any, folder: Path) -> Path:
    """Write a loaded CLIP tokenizer (transformers 4.x slow or fast, or 5.x) as SD1.5's tokenizer folder.

    transformers 5 saves only ``tokenizer.json``, which the slow 4.x ``CLIPTokenizer`` (what
    diffusers' ``model_index.json`` names) cannot read; vocab.json + merges.txt every version reads.
    Tokens added after the vocabulary (pivotal tuning's ``<s0>``...) keep their ids and flags."""
    backend = getattr(tokenizer, "backend_tokenizer", None)  # 4.x fast and every 5.x tokenizer
    if backend is not None:
        model = json.loads(backend.to_str())["model"]
        vocab = dict(model["vocab"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    else:  # the 4.x slow CLIPTokenizer
        vocab = dict(tokenizer.encoder)
        merges = [" ".join(pair) for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    added = []
    for token_id, tok in sorted(tokenizer.added_tokens_decoder.items()):
        if tok.content not in vocab:
            added.append({"id": token_id, "content": tok.content, "lstrip": tok.lstrip, "rstrip": tok.rstrip,
                          "normalized": tok.normalized, "single_word": tok.single_word, "special": tok.special})
    return _write(folder, vocab, merges, pad_token=str(tokenizer.pad_token or EOS), added=added,
                  model_max_length=int(tokenizer.model_max_length))
