"""The word layer: a word -> a prompt from a chat model with the preset's [word] table, seeded; the
prompt dreamed and recorded in the PNG. On the CPU with a tiny random-weight Qwen2 (the real
architecture at toy width) and a real-format tokenizer with a Qwen (ChatML) chat template, saved to a
folder and loaded through the same path as Qwen2.5-3B-Instruct."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dreamy.errors import DreamyError, LockedFieldError, PresetError, SourceError
from dreamy.recipes.presets import load_preset

# Qwen2.5's ChatML turns (its template also handles tools and a default system message, unused here)
CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
          "{%- endif %}")
WORDS = ("love freedom music home two people hugging each other tightly a bird spreading its wings as it takes off "
         "figure playing violin with closed eyes small house smoke rising from chimney dancing light sun moon sea "
         "tree child dog cat red blue green quiet storm garden river mountain city night day hand heart").split()


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A folder holding a tiny random-weight Qwen2ForCausalLM and its PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen2-chat")
    # Qwen2's tokenizer format: byte-level BPE with ChatML's special tokens, here trained on a few words
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4 + [load_preset("word-style").word.system_prompt], trainer)
    vocab = tok.get_vocab()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials)
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    config = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"],
                         bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    # Qwen's own generation defaults, which the word layer must override, not inherit
    for key, value in {"do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8,
                       "top_k": 20}.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(folder)
    return str(folder)


def test_a_word_gives_a_prompt_seeded_and_styled(chat_model):
    from dreamy.prompt_helper import load_prompt_model, word_to_prompt

    state = torch.get_rng_state()
    a = word_to_prompt("love", "word-style", chat_model, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    assert a == word_to_prompt("love", "word-style", chat_model, seed=3)  # same word + seed, same prompt
    others = {word_to_prompt("love", "word-style", chat_model, seed=s).generated for s in range(6)}
    assert len(others) > 1  # other seeds, other prompts
    assert a.prompt == f"prtkl, {a.generated}, white background" and a.generated
    assert a.generated.isprintable() and a.word == "love" and a.prompt_model == chat_model and a.preset == "word-style"
    _, model = load_prompt_model(chat_model, None)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32


def test_greedy_decoding_needs_no_seed_and_the_models_defaults_never_apply(chat_model):
    from dreamy.prompt_helper import generate_answer, load_prompt_model

    tokenizer, model = load_prompt_model(chat_model, None)
    greedy = dataclasses.replace(load_preset("word-style").word, do_sample=False)
    assert generate_answer(tokenizer, model, "music", greedy, 1) == generate_answer(tokenizer, model, "music", greedy, 2)
    g = model.generation_config  # the saved model's Qwen-like sampling defaults were dropped at load
    assert g.repetition_penalty in (None, 1.0) and g.top_k in (None, 50) and g.top_p in (None, 1.0)
    assert g.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_the_presets_examples_are_turns_of_the_chat(chat_model):
    from dreamy.prompt_helper import load_prompt_model, render_chat

    tokenizer, _ = load_prompt_model(chat_model, None)
    w = load_preset("word-style").word
    text = render_chat(tokenizer, "storm", w)
    assert text.startswith(f"<|im_start|>system\n{w.system_prompt}<|im_end|>\n")
    assert ("<|im_start|>user\nlove<|im_end|>\n<|im_start|>assistant\ntwo people hugging each other tightly"
            "<|im_end|>\n") in text
    for word, prompt in w.examples:
        assert f"user\n{word}<|im_end|>" in text and f"assistant\n{prompt}<|im_end|>" in text
    assert text.endswith("<|im_start|>user\nstorm<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("answer, clean", [
    ('"Two people hugging in the rain."\nMore text', "Two people hugging in the rain"),
    ("Prompt: a bird taking off", "a bird taking off"),
    ("\n\n**Description:** a small house.", "a small house"),
    ("1. a figure dancing", "a figure dancing"),
    ("a\x00 cat\ufffd\tdancing\x07", "a cat dancing"),
    ("  ", ""),
])
def test_the_answer_is_cleaned_to_one_line(answer, clean):
    from dreamy.prompt_helper import clean_answer, compose

    assert clean_answer(answer) == clean
    assert compose("prtkl dancing", "prtkl", "white background") == "prtkl dancing, white background"
    assert compose("a cat on a white background", "prtkl", "white background") == "prtkl, a cat on a white background"


def test_a_missing_model_is_one_sentence_naming_the_download(tmp_path, monkeypatch):
    from dreamy.prompt_helper import word_to_prompt

    monkeypatch.delenv("DREAMY_PROMPT_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SourceError) as e:
        word_to_prompt("love", "word-style")  # the default model, Qwen/Qwen2.5-3B-Instruct, is not here
    said = str(e.value)
    assert "'Qwen/Qwen2.5-3B-Instruct' is not on this machine" in said and "`hf download Qwen/Qwen2.5-3B-Instruct`" in said
    assert said.count(". ") == 0 and said.endswith(".")
    with pytest.raises(SourceError, match="No chat model at"):
        word_to_prompt("love", "word-style", str(tmp_path / "nowhere" / "model.bin"))
    with pytest.raises(DreamyError, match="Give a word"):
        word_to_prompt(" ", "word-style", "nobody/nothing")
    with pytest.raises(DreamyError, match="prompt seed"):
        word_to_prompt("love", "word-style", "nobody/nothing", seed=-1)


def test_a_tokenizer_without_a_chat_template_is_refused(chat_model, tmp_path):
    import shutil

    from dreamy.prompt_helper import word_to_prompt

    plain = tmp_path / "no-template"
    shutil.copytree(chat_model, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match="is not a chat model"):
        word_to_prompt("love", "word-style", str(plain))


def test_the_word_table_is_checked_like_the_rest_of_a_preset(tmp_path):
    bad = {"examples = [{ word = \"love\" }]": "examples\\[0\\] must be a table with exactly a 'word' and a 'prompt'",
           "temperature = 0": "'temperature' must be between",
           "tempreature = 1.0": "unknown setting 'tempreature' \\(did you mean 'temperature'\\?\\)",
           "locked = [\"model\"]": "\\[word\\] has no locks"}
    for line, said in bad.items():
        f = tmp_path / "mine.toml"
        f.write_text(f'extends = "word-style"\n[word]\n{line}\n')
        with pytest.raises(PresetError, match=said):
            load_preset(f)
    f.write_text('extends = "word-style"\n[word]\nsuffix = ""\n')
    mine = load_preset(f)  # inherits key by key
    assert mine.word.suffix == "" and mine.word.trigger == "prtkl" and len(mine.word.examples) == 4
    assert load_preset("biased-dreams").word.examples == ()  # no [word] table: the defaults


def test_dream_word_records_the_word_and_its_prompt_in_the_png(chat_model, tiny_model, tmp_path):
    from dreamy.dreaming.dreams import recall
    from dreamy.png.metadata import read_recipe
    from dreamy.prompt_helper import dream_word, word_to_prompt

    small = {"width": 64, "height": 64, "steps": 2}
    wp, results = dream_word("love", tiny_model, "word-style", "1,2", prompt_model=chat_model, prompt_seed=4,
                             overrides=small, unlock=["width", "height", "steps"], out_dir=tmp_path / "out")
    assert wp == word_to_prompt("love", "word-style", chat_model, 4)
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == ["contact-sheet.png", "seed000001.png",
                                                                       "seed000002.png"]
    for r in results:
        recipe = read_recipe(r.path)
        assert recipe.settings.prompt == wp.prompt and "prompt" not in recipe.unlocked  # open in word-style
        assert recipe.runtime["word"] == {"word": "love", "prompt": wp.prompt, "generated": wp.generated,
                                          "prompt_model": chat_model, "seed": 4, "preset": "word-style"}
    again = recall(results[0].path, model=tiny_model)  # the picture comes back from the recipe alone
    assert again.image.tobytes() == results[0].image.tobytes()
    # a preset that locks its prompt refuses the word's prompt unless it is unlocked, then records it
    with pytest.raises(LockedFieldError, match="prompt"):
        dream_word("love", tiny_model, "biased-dreams", "1", prompt_model=chat_model, overrides=small,
                   unlock=["width", "height", "steps"])
    _, [r] = dream_word("love", tiny_model, "biased-dreams", "1", prompt_model=chat_model, overrides=small,
                        unlock=["width", "height", "steps", "prompt"])
    assert r.recipe.unlocked["prompt"]["value"] == r.recipe.runtime["word"]["prompt"]


def test_cli_word_prints_the_prompt_and_dreams_it(chat_model, tmp_path, capsys):
    from dreamy.cli.main import main
    from dreamy.png.metadata import read_recipe
    from dreamy.prompt_helper import word_to_prompt

    assert main(["word", "love", "--prompt-model", chat_model, "--seed", "5", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == word_to_prompt("love", "word-style", chat_model, 5).prompt
    rc = main(["word", "love", "--prompt-model", chat_model, "--seed", "5", "--dream", "--model", "tiny", "--seeds", "3",
               "--out", str(tmp_path / "o"), "--unlock", "width,height,steps", "--width", "64", "--height", "64",
               "--steps", "2", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"prompt: {printed}" in out.err
    recipe = read_recipe(out.out.strip())
    assert recipe.settings.prompt == printed and recipe.runtime["word"]["word"] == "love"
    assert main(["word", "love", "--prompt-model", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "error: No chat model at" in capsys.readouterr().err
