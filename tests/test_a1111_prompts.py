"""The a1111 prompt syntax: A1111's weights, BREAK and 75-token chunks, checked on values worked out
by hand from A1111's rules (modules/prompt_parser.py parse_prompt_attention; modules/sd_hijack_clip.py
tokenize_line and the "Original" emphasis); the plain syntax stays stock's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAST
from dreamy.dreaming.blocks import encode_a1111, encode_prompt, prompt_cuts
from dreamy.errors import PresetError
from dreamy.models.a1111_prompt import chunk_prompt, parse_weights, unsupported_construct
from dreamy.recipes.recipe import resolve

R, S = 1.1, 1 / 1.1  # one round bracket, one square bracket


@pytest.mark.parametrize("text, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("", [("", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("((word))", [("word", 1.1 * 1.1)]),  # nested: 1.2100000000000002, as Python multiplies it
    ("[word]", [("word", S)]),
    ("[[word]]", [("word", S * S)]),
    ("(fractalism:0.7), biomorphic", [("fractalism", 0.7), (", biomorphic", 1.0)]),
    ("(a [b] c:1.5)", [("a ", 1.5), ("b", S * 1.5), (" c", 1.5)]),  # inner first, then the explicit weight
    ("(unbalanced", [("unbalanced", R)]),  # still open at the end: applies to the rest
    ("word)", [("word)", 1.0)]),  # a close with nothing open is text
    ("a:0.7) b", [("a:0.7) b", 1.0)]),  # an explicit weight with nothing open is text too
    ("\\(literal\\) \\[x\\] \\\\", [("(literal) [x] \\", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),  # equal neighbours are joined
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAKING news", [("BREAKING news", 1.0)]),  # BREAK only as a whole word
    ("(a BREAK b)", [("a", R), ("BREAK", -R), ("b", R)]),  # inside brackets A1111 multiplies the marker too
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",  # A1111's own doctest
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_weights_per_piece_follow_a1111(text, expected):
    assert parse_weights(text) == expected


def test_a_weight_that_is_not_a_number_is_one_sentence():
    with pytest.raises(PresetError, match=r"weight ':1\.2\.3\)' is not a number"):
        parse_weights("(cat:1.2.3)")
    with pytest.raises(PresetError, match=r"^dream setting 'prompt': the prompt's weight"):
        resolve("gigafractal", "dream", {"prompt": "(cat:.)"}, unlock=True)


# The tiny model's tokenizer is CLIP's byte-level BPE without merges: every character of a word is a
# token, the last one ending in </w>; a comma is a word of its own. So token counts are known by hand.

def _tok(tiny_model):
    return tiny_model.tokenizer


def _ids(tok, tokens: list[str]) -> list[int]:
    return tok.convert_tokens_to_ids(tokens)


def _word(w: str) -> list[str]:
    return [*w[:-1], w[-1] + "</w>"]


def _chunk(tok, tokens: list[str], weights: list[float]) -> tuple[list[int], list[float]]:
    """A 77-token chunk by A1111's rule: BOS, the tokens, EOS padding to 75, EOS; markers at 1.0."""
    pad = 75 - len(tokens)
    return ([tok.bos_token_id, *_ids(tok, tokens), *[tok.eos_token_id] * (pad + 1)],
            [1.0, *weights, *[1.0] * (pad + 1)])


def _as_lists(chunks):
    return [(list(c.ids), list(c.weights)) for c in chunks]


def test_an_empty_prompt_is_one_empty_chunk(tiny_model):
    tok = _tok(tiny_model)
    assert _as_lists(chunk_prompt(tok, "")) == [_chunk(tok, [], [])]


def test_weights_per_token(tiny_model):
    tok = _tok(tiny_model)
    tokens = [*_word("ab"), ",</w>", *_word("cd"), *_word("e")]
    weights = [0.5, 0.5, 1.0, R * R, R * R, S]
    assert _as_lists(chunk_prompt(tok, "(ab:0.5), ((cd)) [e]")) == [_chunk(tok, tokens, weights)]


def test_the_issues_long_weighted_prompt_is_read_in_two_chunks(tiny_model):
    """'biomorphic, (fractalism:0.7), ' then 30 x 'ab, ': 10 + 1 + 10 + 1 + 30 * 3 - 1 = 111 tokens. The
    75th token (index 74) is the 'b' of the 18th 'ab', so the chunk is full when the comma after it
    comes: that comma opens chunk 2 (no backtrack: the token that finds the chunk full is a comma)."""
    tok = _tok(tiny_model)
    text = "biomorphic, (fractalism:0.7), " + ", ".join(["ab"] * 30)
    tokens = [*_word("biomorphic"), ",</w>", *_word("fractalism"), ",</w>"]
    weights = [1.0] * 11 + [0.7] * 10 + [1.0]
    for i in range(30):
        tokens += _word("ab") + ([",</w>"] if i < 29 else [])
    weights += [1.0] * (len(tokens) - len(weights))
    assert len(tokens) == 111
    assert _as_lists(chunk_prompt(tok, text)) == [_chunk(tok, tokens[:75], weights[:75]),
                                                 _chunk(tok, tokens[75:], weights[75:])]
    assert tokens[75] == ",</w>"


def test_a_comma_near_the_end_moves_the_words_after_it_to_the_next_chunk(tiny_model):
    tok = _tok(tiny_model)
    # 70 one-letter words, a comma, 10 more: the chunk fills at the 4th 'y'; the comma is 5 tokens
    # back (<= 20, A1111's default word-wrap limit), so 'y y y y' moves on with the rest.
    text = " ".join(["x"] * 70) + ", " + " ".join(["y"] * 10)
    got = _as_lists(chunk_prompt(tok, text))
    assert got == [_chunk(tok, ["x</w>"] * 70 + [",</w>"], [1.0] * 71), _chunk(tok, ["y</w>"] * 10, [1.0] * 10)]
    # a comma 25 tokens back is too far: the chunk is cut at 75 tokens
    text = " ".join(["x"] * 50) + ", " + " ".join(["y"] * 30)
    got = _as_lists(chunk_prompt(tok, text))
    assert got == [_chunk(tok, ["x</w>"] * 50 + [",</w>"] + ["y</w>"] * 24, [1.0] * 75),
                   _chunk(tok, ["y</w>"] * 6, [1.0] * 6)]


def test_break_starts_a_new_chunk(tiny_model):
    tok = _tok(tiny_model)
    assert _as_lists(chunk_prompt(tok, "ab BREAK (cd)")) == [_chunk(tok, _word("ab"), [1.0, 1.0]),
                                                            _chunk(tok, _word("cd"), [R, R])]
    assert len(chunk_prompt(tok, "ab BREAK")) == 1  # nothing after the last BREAK: no empty chunk
    assert len(chunk_prompt(tok, "BREAK ab")) == 2  # a BREAK first leaves an empty first chunk, as A1111


def test_a_full_chunk_of_75_tokens_is_one_chunk(tiny_model):
    tok = _tok(tiny_model)
    assert len(chunk_prompt(tok, " ".join(["x"] * 75))) == 1
    assert len(chunk_prompt(tok, " ".join(["x"] * 76))) == 2


def test_the_gigafractal_class_prompt_in_clips_own_vocabulary():
    """With the real CLIP tokenizer: "(fractalism:0.7)" weighs exactly its three tokens, "((highly
    detailed))" its two at 1.21, and the long prompt is cut at a comma into two chunks."""
    from transformers import CLIPTokenizer

    from dreamy.errors import TokenizerMissing
    from dreamy.models.clip_tokenizer import clip_tokenizer_dir
    from dreamy.recipes.presets import load_preset

    try:
        tok = CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()))
    except TokenizerMissing:
        pytest.skip("no CLIP BPE list here (open_clip not installed)")
    chunks = chunk_prompt(tok, load_preset("gigafractal").train.class_image_prompt)
    assert len(chunks) == 2
    flat = [(t, w) for c in chunks for t, w in zip(tok.convert_ids_to_tokens(list(c.ids)), c.weights, strict=True)]
    assert [t for t, w in flat if w == 0.7] == ["frac", "tal", "ism</w>"]
    assert [t for t, w in flat if w == 1.1 * 1.1] == ["highly</w>", "detailed</w>"]
    first = tok.convert_ids_to_tokens(list(chunks[0].ids))
    text = [t for t in first if t not in ("<|startoftext|>", "<|endoftext|>")]
    assert text[-1] == ",</w>" and len(text) <= 75  # the word-wrap moved the words after the last comma


# ---- encoding ----

def test_plain_encoding_is_stock_diffusers_bit_for_bit(tiny_model):
    tok, enc = tiny_model.tokenizer, tiny_model.text_encoder
    for text in ("a (red:1.3) house", "word " * 100):
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            stock = enc(ids)[0]
        assert torch.equal(encode_prompt(tiny_model, text), stock)
        assert torch.equal(encode_prompt(tiny_model, text, "plain"), stock)


def test_a1111_without_weights_in_one_chunk_equals_plain(tiny_model):
    for text in ("a red house, blue sky", ""):
        assert torch.equal(encode_a1111(tiny_model, text), encode_prompt(tiny_model, text))


def test_weights_multiply_the_hidden_states_and_the_mean_is_restored(tiny_model):
    """z * w * mean(z) / mean(z * w) per chunk. The tiny encoder's final layer norm has no bias, so its
    mean is ~1e-9; a copy with a bias of 0.5 gives the mean something to restore."""
    import copy
    from types import SimpleNamespace

    encoder = copy.deepcopy(tiny_model.text_encoder)
    with torch.no_grad():
        norm = next(m for n, m in encoder.named_modules() if n.endswith("final_layer_norm"))  # transformers 4 or 5
        norm.bias.fill_(0.5)
    model = SimpleNamespace(tokenizer=tiny_model.tokenizer, text_encoder=encoder, device=tiny_model.device)
    [chunk] = chunk_prompt(model.tokenizer, "(ab:0.5) [cd]")
    with torch.no_grad():
        z = encoder(torch.tensor([chunk.ids]))[0]
    w = torch.tensor([1.0, 0.5, 0.5, S, S] + [1.0] * 72).reshape(1, -1, 1)
    expected = z * w * (z.mean() / (z * w).mean())
    got = encode_a1111(model, "(ab:0.5) [cd]")
    assert torch.equal(got, expected)
    assert torch.allclose(got.mean(), z.mean(), rtol=1e-5) and not torch.allclose(got, z)
    ratio = got[0, 1] / z[0, 1]  # the weighted token: 0.5 times the restoring factor
    assert torch.allclose(ratio, torch.full_like(ratio, 0.5 * float(z.mean() / (z * w).mean())), rtol=1e-5)


def test_a_long_prompt_is_its_chunks_side_by_side(tiny_model):
    text = " ".join(["x"] * 80)
    emb = encode_a1111(tiny_model, text)
    assert emb.shape == (1, 154, tiny_model.text_encoder.config.hidden_size)
    chunks = chunk_prompt(tiny_model.tokenizer, text)
    with torch.no_grad():
        second = tiny_model.text_encoder(torch.tensor([chunks[1].ids]))[0]
    assert torch.equal(emb[:, 77:], second)  # weights 1: each chunk is its own plain encoding


def test_nothing_is_cut_from_a_long_a1111_prompt(tiny_model):
    long = " ".join(["x"] * 100)
    assert prompt_cuts(tiny_model, long, "", "a1111") == ({}, [])
    cuts, notes = prompt_cuts(tiny_model, long, "")
    assert "prompt_truncated" in cuts and len(notes) == 1


@pytest.mark.parametrize("text, what", [
    ("a [cat:dog:0.5] on a mat", "prompt editing"),
    ("a [dog:10] later", "prompt editing"),
    ("a [cat|dog]", "alternation"),
    ("a cat AND a dog", "composable"),
    ("portrait <lora:detail:0.8>", "extra-network"),
])
def test_what_dreamy_does_not_reproduce_is_refused_in_one_sentence(text, what):
    assert what in unsupported_construct(text)
    with pytest.raises(PresetError, match=rf"^dream setting 'prompt' uses A1111's {what}.*; write the prompt"):
        resolve("gigafractal", "dream", {"prompt": text}, unlock=True)
    resolve("gigafractal", "dream", {"prompt": text, "prompt_syntax": "plain"}, unlock=True)  # plain reads any text


def test_escaped_brackets_and_weights_are_not_prompt_editing():
    for text in ("a \\[cat:0.5\\]", "[(cat:0.5)]", "(a:1.2) [b] c: d", "black and white"):
        assert unsupported_construct(text) == ""


def test_a_dream_with_chunks_of_unequal_length_runs_and_is_batch_invariant(tiny_model):
    """A 2-chunk prompt and a 1-chunk negative: the UNet reads them in two passes (A1111's default)."""
    from dreamy.dreaming.dreams import dream

    ov = {**FAST, "width": 64, "height": 64, "steps": 3, "prompt_syntax": "a1111",
          "prompt": "a (red:1.3) house BREAK [blue] sky", "negative_prompt": "ugly"}
    alone = dream(tiny_model, "biased-dreams", "5", overrides=ov, unlock=True)[0]
    batch = {r.seed: r for r in dream(tiny_model, "biased-dreams", "9,5", overrides=ov, unlock=True, batch_size=2)}
    assert np.array_equal(np.asarray(alone.image), np.asarray(batch[5].image))
    assert alone.recipe.settings.prompt_syntax == "a1111" and "prompt_truncated" not in alone.recipe.runtime
    plain = dream(tiny_model, "biased-dreams", "5", overrides={**ov, "prompt_syntax": "plain"}, unlock=True)[0]
    assert not np.array_equal(np.asarray(plain.image), np.asarray(alone.image))  # the syntax changes the picture


def test_prompt_syntax_is_locked_with_the_prompt():
    from dreamy.errors import LockedFieldError

    with pytest.raises(LockedFieldError, match="'prompt_syntax' is locked by preset 'biased-dreams'"):
        resolve("biased-dreams", "dream", {"prompt_syntax": "a1111"})
    r = resolve("biased-dreams", "dream", {"prompt_syntax": "a1111"}, unlock=["prompt_syntax"])
    assert r.unlocked == {"prompt_syntax": {"preset": "plain", "value": "a1111"}}
    # a recipe written before the setting existed reads as plain
    from dreamy.recipes.recipe import Recipe

    d = r.to_dict()
    del d["settings"]["prompt_syntax"]
    assert Recipe.from_dict(d).settings.prompt_syntax == "plain"
