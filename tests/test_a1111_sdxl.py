"""The a1111 prompt syntax on SDXL, on tiny-sdxl: both text encoders read the weighted, chunked prompt as
A1111/Forge read it for SDXL (modules/sd_hijack_clip.py and sd_hijack_open_clip.py per encoder,
sd_models_xl.py and sgm's GeneralConditioner around them), checked against values worked out by hand
from those rules; the plain syntax stays stock StableDiffusionXLPipeline's (tests/test_sdxl_dream.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from dreamy.dreaming.blocks import encode_prompt
from dreamy.dreaming.dreams import dream, recall
from dreamy.models.a1111_prompt import chunk_prompt
from dreamy.recipes.samplers import SD1_SCHEDULE

R, S = 1.1, 1 / 1.1
SMALL = {"width": 64, "height": 64, "steps": 3}
A1111 = {**SMALL, "prompt_syntax": "a1111"}


@pytest.fixture(scope="module")
def xl():
    from dreamy.models.sources import load_model

    return load_model("tiny-sdxl", device="cpu", expected_arch=None)


def pixels(results) -> dict[int, np.ndarray]:
    return {r.seed: np.asarray(r.image) for r in results}


# ---- chunks and weights per token, for both tokenizers ----
# tiny-sdxl's tokenizers are CLIP's byte-level BPE without merges (every character of a word is a token,
# the last ending in </w>), SDXL's way round: the first pads with end-of-text, the second with "!".


def _word(w: str) -> list[str]:
    return [*w[:-1], w[-1] + "</w>"]


def _expected(tok, tokens: list[str], weights: list[float]) -> tuple[list[int], list[float]]:
    """A 77-token chunk by A1111's rules: start, the tokens, end-of-text padding to 75, end; after the
    first end-of-text the encoder's own pad token (process_tokens: id_pad, 0 = "!" for OpenCLIP bigG)."""
    ids = [tok.bos_token_id, *tok.convert_tokens_to_ids(tokens), tok.eos_token_id]
    ids += [tok.pad_token_id] * (77 - len(ids))
    return ids, [1.0, *weights, *[1.0] * (76 - len(weights))]


def _lists(chunks):
    return [(list(c.ids), list(c.weights)) for c in chunks]


def test_both_tokenizers_weigh_and_cut_alike_each_padding_its_own_way(xl):
    text = "(ab:0.5), ((cd)) [e] BREAK fg"
    first = ([*_word("ab"), ",</w>", *_word("cd"), *_word("e")], [0.5, 0.5, 1.0, R * R, R * R, S])
    second = (_word("fg"), [1.0, 1.0])
    for tok in (xl.tokenizer, xl.tokenizer_2):
        assert _lists(chunk_prompt(tok, text)) == [_expected(tok, *first), _expected(tok, *second)]
    l_ids, g_ids = chunk_prompt(xl.tokenizer, text)[0].ids, chunk_prompt(xl.tokenizer_2, text)[0].ids
    assert l_ids[:8] == g_ids[:8] and l_ids[8:] == (xl.tokenizer.eos_token_id,) * 69 and g_ids[8:] == (0,) * 69


def test_long_prompts_break_at_the_same_comma_for_both(xl):
    """70 one-letter words, a comma, 10 more: the chunk fills at the 4th 'y'; the comma 5 tokens back
    (<= A1111's default word-wrap limit of 20) moves 'y y y y' on with the rest."""
    text = " ".join(["x"] * 70) + ", " + " ".join(["y"] * 10)
    for tok in (xl.tokenizer, xl.tokenizer_2):
        assert _lists(chunk_prompt(tok, text)) == [_expected(tok, ["x</w>"] * 70 + [",</w>"], [1.0] * 71),
                                                   _expected(tok, ["y</w>"] * 10, [1.0] * 10)]


def test_the_real_clip_vocabulary_cuts_sdxls_two_tokenizers_alike():
    """With CLIP's own BPE: the Gigafractal class prompt (long, weighted) in SDXL's two tokenizers: the
    same chunks, the same weights, only the padding after the first end-of-text differs."""
    from transformers import CLIPTokenizer

    from dreamy.errors import TokenizerMissing
    from dreamy.models.clip_tokenizer import clip_tokenizer_dir
    from dreamy.recipes.presets import load_preset

    try:
        folder = str(clip_tokenizer_dir())
    except TokenizerMissing:
        pytest.skip("no CLIP BPE list here (open_clip not installed)")
    clip_l, clip_g = CLIPTokenizer.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder, pad_token="!")
    assert clip_g.pad_token_id == 0
    text = load_preset("gigafractal").train.class_image_prompt
    a, b = chunk_prompt(clip_l, text), chunk_prompt(clip_g, text)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        end = x.ids.index(clip_l.eos_token_id)
        assert x.weights == y.weights and x.ids[: end + 1] == y.ids[: end + 1]
        assert set(x.ids[end + 1:]) <= {clip_l.eos_token_id} and set(y.ids[end + 1:]) <= {0}


# ---- the conditioning ----


def _hidden(encoder, chunk) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = encoder(torch.tensor([chunk.ids]), output_hidden_states=True)
    return out.hidden_states[-2], out[0]


@pytest.mark.parametrize("text, chunks", [("a red house", 1), ("a (red:1.3) house BREAK [blue] sky", 2),
                                          (" ".join(["x"] * 160), 3)])
def test_conditioning_shapes(xl, text, chunks):
    width = xl.text_encoder.config.hidden_size + xl.text_encoder_2.config.hidden_size  # 16 + 32 (SDXL: 768 + 1280)
    c = encode_prompt(xl, text, "a1111")
    assert c.embeds.shape == (1, 77 * chunks, width) and c.shape == c.embeds.shape
    assert c.pooled.shape == (1, xl.text_encoder_2.config.projection_dim)
    assert c.embeds.dtype == c.pooled.dtype == xl.text_encoder_2.dtype


def test_each_encoder_weighs_its_own_chunks_and_restores_its_own_mean(xl):
    """Per chunk and per encoder: penultimate hidden states z, z * w * mean(z) / mean(z * w); the two
    encoders side by side (clip_l then clip_g), the chunks one after the other."""
    text = "(ab:0.5), ((cd)) [e] BREAK (fg:1.4) hi"
    got = encode_prompt(xl, text, "a1111")
    parts = []
    for l_chunk, g_chunk in zip(chunk_prompt(xl.tokenizer, text), chunk_prompt(xl.tokenizer_2, text), strict=True):
        row = []
        for encoder, chunk in ((xl.text_encoder, l_chunk), (xl.text_encoder_2, g_chunk)):
            z, _ = _hidden(encoder, chunk)
            w = torch.tensor(chunk.weights).reshape(1, -1, 1)
            row.append(z * w * (z.mean() / (z * w).mean()))
        parts.append(torch.cat(row, dim=-1))
    assert torch.equal(got.embeds, torch.cat(parts, dim=1))
    # each encoder's mean is its own (one rescale over both widths would give other numbers)
    z_l, _ = _hidden(xl.text_encoder, chunk_prompt(xl.tokenizer, text)[0])
    z_g, _ = _hidden(xl.text_encoder_2, chunk_prompt(xl.tokenizer_2, text)[0])
    first = got.embeds[:, :77]
    assert torch.allclose(first[..., :16].mean(), z_l.mean(), rtol=1e-4)
    assert torch.allclose(first[..., 16:].mean(), z_g.mean(), rtol=1e-4)
    z = torch.cat([z_l, z_g], dim=-1)
    w = torch.tensor(chunk_prompt(xl.tokenizer, text)[0].weights).reshape(1, -1, 1)
    assert not torch.allclose(first, z * w * (z.mean() / (z * w).mean()))


def test_the_pooled_embedding_is_clip_gs_of_the_first_chunk_unweighted(xl):
    text = "(ab:0.5) cd BREAK [ef] gh"
    got = encode_prompt(xl, text, "a1111")
    first, second = chunk_prompt(xl.tokenizer_2, text)
    _, pooled_first = _hidden(xl.text_encoder_2, first)
    _, pooled_second = _hidden(xl.text_encoder_2, second)
    assert torch.equal(got.pooled, pooled_first) and not torch.equal(got.pooled, pooled_second)


@pytest.mark.parametrize("text", ["a red house, blue sky", "", "figure dancing: white background"])
def test_a1111_without_weights_in_one_chunk_is_the_plain_encoding_bit_for_bit(xl, text):
    plain, a1111 = encode_prompt(xl, text, "plain"), encode_prompt(xl, text, "a1111")
    assert torch.equal(plain.embeds, a1111.embeds) and torch.equal(plain.pooled, a1111.pooled)


def test_weights_change_the_conditioning_and_plain_reads_them_as_text(xl):
    weighted, plain = encode_prompt(xl, "a (red:1.5) house", "a1111"), encode_prompt(xl, "a red house", "a1111")
    assert weighted.shape == plain.shape and not torch.equal(weighted.embeds, plain.embeds)
    assert torch.equal(weighted.pooled, plain.pooled)  # the pooled embedding is never weighted
    assert encode_prompt(xl, "a (red:1.5) house", "plain").shape == (1, 77, 48)


def test_an_empty_negative_prompt_is_zeros_as_a1111_zeros_it_whatever_the_config(xl):
    from dreamy.dreaming.sdxl import conditioning_record

    zeros = encode_prompt(xl, "", "a1111", negative=True)
    assert zeros.shape == (1, 77, 48) and not zeros.embeds.any() and not zeros.pooled.any()
    assert encode_prompt(xl, "(blurry:1.3)", "a1111", negative=True).embeds.any()
    assert encode_prompt(xl, "", "a1111").embeds.any()  # the prompt itself is never zeroed
    other = dataclasses.replace(xl, force_zeros_for_empty_prompt=False)  # a model whose config says no
    assert encode_prompt(other, "", "plain", negative=True).embeds.any()  # stock follows the config
    assert not encode_prompt(other, "", "a1111", negative=True).embeds.any()  # A1111 zeros regardless
    assert conditioning_record(other, 64, 64, "", "a1111")["negative_prompt_embeds"] == "zeros"
    assert conditioning_record(other, 64, 64, "")["negative_prompt_embeds"] == "encoded"


# ---- dreams ----


def test_an_a1111_sdxl_dream_is_batch_invariant_with_chunks_of_unequal_length(xl):
    """A 2-chunk prompt, a 1-chunk negative: two UNet passes (A1111's default); Euler a's step noise is
    each seed's own."""
    ov = {**A1111, "prompt": "a (red:1.3) house BREAK [blue] sky", "negative_prompt": "(ugly:1.2)",
          "guidance": 5.0, "sampler": "euler_a", "scheduler": SD1_SCHEDULE}
    alone = dream(xl, "biased-dreams", "5", overrides=ov, unlock=True)
    batched = pixels(dream(xl, "biased-dreams", "9,5", overrides=ov, unlock=True, batch_size=2))
    assert np.array_equal(pixels(alone)[5], batched[5]) and not np.array_equal(batched[9], batched[5])
    r = alone[0].recipe
    assert r.settings.prompt_syntax == "a1111" and "prompt_truncated" not in r.runtime
    assert r.runtime["sdxl"]["negative_prompt_embeds"] == "encoded"
    plain = dream(xl, "biased-dreams", "5", overrides={**ov, "prompt_syntax": "plain"}, unlock=True)
    assert not np.array_equal(pixels(plain)[5], pixels(alone)[5])  # the syntax changes the picture


def test_an_unweighted_short_prompt_dreams_as_plain(xl):
    """One chunk, no weights, an empty negative (zeros both ways): the same picture, bit for bit, as the
    plain syntax (which tests/test_sdxl_dream.py holds to stock StableDiffusionXLPipeline)."""
    ov = {**SMALL, "prompt": "figure dancing, white background", "guidance": 5.0}
    plain = dream(xl, "biased-dreams", "3", overrides=ov, unlock=True)
    a1111 = dream(xl, "biased-dreams", "3", overrides={**ov, "prompt_syntax": "a1111"}, unlock=True)
    assert np.array_equal(pixels(plain)[3], pixels(a1111)[3])


def test_a_prompt_sweep_reads_a1111_prompts_on_sdxl(xl, tmp_path):
    from dreamy.dreaming.prompt_sweeps import prompt_sweep_iter

    cells = list(prompt_sweep_iter(xl, "biased-dreams", ["a (red:1.4) house", "a [red] house"], "2", tmp_path,
                                   overrides=A1111, unlock=True))
    assert len(cells) == 2 and all(c.image.path.exists() for c in cells)
    assert all(c.image.recipe.settings.prompt_syntax == "a1111" for c in cells)
    a, b = (np.asarray(Image.open(c.image.path)) for c in cells)
    assert not np.array_equal(a, b)


def test_an_a1111_sdxl_png_recalls_its_own_bytes(xl, tmp_path):
    ov = {**A1111, "prompt": "(glowing:1.2) spiral, " + ", ".join(["ab"] * 30), "negative_prompt": "", "guidance": 5.0}
    made = dream(xl, "biased-dreams", "4", overrides=ov, unlock=True, out_dir=tmp_path / "a")[0]
    assert made.recipe.runtime["sdxl"]["negative_prompt_embeds"] == "zeros"
    again = recall(made.path, tmp_path / "b")
    assert again.path.read_bytes() == made.path.read_bytes()


# ---- Recall of an A1111/Forge SDXL picture ----

SDXL_TEXT = ("biomorphic, (fractalism:0.7), a (glowing:1.2) spiral, [haze] BREAK golden light\n"
             "Negative prompt: (blurry:1.3), lowres\n"
             "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 2042420948, Size: 64x64, "
             "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Version: v1.10.1")


def _png(path, text):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_use_its_settings_dreams_an_a1111_sdxl_png_with_its_weights(tmp_path, capsys):
    from dreamy.cli.main import main
    from dreamy.png.metadata import read_recipe

    png = _png(tmp_path / "xl.png", SDXL_TEXT)
    rc = main(["recall", str(png), "--out", str(tmp_path / "out"), "--use-settings", "--model", "tiny-sdxl",
               "--unlock", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    r = read_recipe(out.out.strip())
    s = r.settings
    assert (s.prompt_syntax, s.sampler, s.guidance, s.steps, s.width, r.seed, r.model.arch) == \
        ("a1111", "euler_a", 7.0, 3, 64, 2042420948, "sdxl")
    assert s.prompt == SDXL_TEXT.split("\n")[0] and s.negative_prompt == "(blurry:1.3), lowres"
    again = recall(out.out.strip(), tmp_path / "again")  # and Dreamy's own PNG of it recalls exactly
    assert again.path.read_bytes() == open(out.out.strip(), "rb").read()


# ---- Recall says plainly what has no equivalent: the settings that change how A1111 read the prompt ----

READING = ", Clip skip: 2, Emphasis: No norm, Pad conds: True"


def test_prompt_reading_settings_without_an_equivalent_are_said_plainly(tmp_path):
    from dreamy.png.info import describe_png, foreign_refusal

    info = describe_png(_png(tmp_path / "r.png", SDXL_TEXT + READING))
    assert info.values["prompt_syntax"] == "a1111" and info.values["sampler"] == "euler_a"
    assert len(info.notes) == 3
    said = foreign_refusal(info, "r.png")
    assert "A1111's Clip skip 2 has no equivalent in Dreamy" in said
    assert "A1111's emphasis 'No norm' has no equivalent in Dreamy" in said
    assert "A1111's 'Pad conds' (the shorter of prompt and negative prompt padded" in said
    # A1111's defaults (which it does not even write) are no news
    quiet = describe_png(_png(tmp_path / "q.png", SDXL_TEXT + ", Clip skip: 1, Emphasis: Original, Pad conds: False"))
    assert quiet.notes == []


def test_cli_info_and_use_settings_print_what_has_no_equivalent(tmp_path, capsys):
    from dreamy.cli.main import main

    png = _png(tmp_path / "r.png", SDXL_TEXT.replace("Euler a", "Heun") + READING)
    assert main(["info", str(png)]) == 0
    err = capsys.readouterr().err
    assert "A1111's sampler 'Heun' has no equivalent in Dreamy" in err and "A1111's Clip skip 2" in err
    rc = main(["recall", str(png), "--out", str(tmp_path / "out"), "--use-settings", "--model", "tiny-sdxl",
               "--unlock", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "The preset's sampler is used instead." in err and "A1111's emphasis 'No norm'" in err
