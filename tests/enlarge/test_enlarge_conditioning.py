"""SDXL text conditioning with SUPIR's fixed size conditioning, on tiny random text encoders."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.embeddings import Timesteps
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dreamy.enlarging.conditioning import SUPIR_TIME_IDS, added_vector, encode_text
from dreamy.models.clip_vocab import write_byte_tokenizer


def _sgm_timestep_embedding(value: float, dim: int = 256) -> torch.Tensor:
    """sgm's ``timestep_embedding`` written out: [cos, sin] with periods up to 10000."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor([float(value)]) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])


def test_added_vector_is_pooled_then_fixed_sizes():
    pooled = torch.randn(2, 12)
    vector = added_vector(pooled, Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0))
    assert vector.shape == (2, 12 + 6 * 256)
    assert torch.equal(vector[:, :12], pooled)
    expected = torch.cat([_sgm_timestep_embedding(v) for v in SUPIR_TIME_IDS])
    torch.testing.assert_close(vector[1, 12:], expected, rtol=0, atol=1e-6)
    assert SUPIR_TIME_IDS == (1024, 1024, 0, 0, 1024, 1024)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    folder = write_byte_tokenizer(tmp_path_factory.mktemp("tok"))
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    common = dict(vocab_size=514, intermediate_size=32, num_attention_heads=2, num_hidden_layers=3,
                  max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    torch.manual_seed(0)
    clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=16, **common)).eval()
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=24, projection_dim=8, **common)).eval()
    return (tokenizer, tokenizer), (clip_l, clip_g)


def test_encode_text_uses_penultimate_states_and_projected_pool(tiny_text):
    tokenizers, encoders = tiny_text
    proj = Timesteps(4, flip_sin_to_cos=True, downscale_freq_shift=0)
    cond = encode_text(["a cat", ""], tokenizers, encoders, proj)
    ids = tokenizers[0](["a cat", ""], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        l_out = encoders[0](ids, output_hidden_states=True)
        g_out = encoders[1](ids, output_hidden_states=True)
    assert cond.context.shape == (2, 77, 16 + 24)
    assert torch.equal(cond.context[..., :16], l_out.hidden_states[-2])
    assert torch.equal(cond.context[..., 16:], g_out.hidden_states[-2])
    assert torch.equal(cond.vector[:, :8], g_out.text_embeds)
    assert cond.vector.shape == (2, 8 + 6 * 4)


def test_second_encoder_needs_a_projection(tiny_text):
    tokenizers, encoders = tiny_text
    with pytest.raises(ValueError, match="projection"):
        encode_text(["x"], tokenizers, (encoders[0], encoders[0]), Timesteps(4, True, 0))
