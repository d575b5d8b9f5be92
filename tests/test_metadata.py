"""PNG recipes: A1111's parameters chunk, our JSON chunk, and refusals for foreign or hostile files."""

import json
import re

import pytest
from PIL import Image, PngImagePlugin

from dreamy.errors import RecallError
from dreamy.models.a1111_prompt import escape_plain
from dreamy.png.metadata import a1111_parameters, parse_a1111, read_recipe, save_png
from dreamy.recipes.recipe import ModelRef, Recipe, resolve


def _recipe(**overrides) -> Recipe:
    r = resolve("biased-dreams", overrides=overrides, unlock=list(overrides))
    model = ModelRef("m.safetensors", "file", "ab" * 32, "my model, v2", None, single_file_sha256="ab" * 32)
    return r.replace(seed=42, model=model, runtime={"device": "cpu"})


def test_a1111_parameters_text_is_what_a1111_writes():
    text = a1111_parameters(_recipe())
    lines = text.split("\n")
    assert lines[0] == "monumental, dramatic, atmospheric, transcendent"
    assert len(lines) == 2  # no "Negative prompt:" line when it is empty, as A1111
    assert lines[1].startswith(
        'Steps: 50, Sampler: DDIM, CFG scale: 3.0, Seed: 42, Size: 512x512, Model hash: abababab'
        'ab, Model: "my model, v2", Preset: biased-dreams, Version: dreamy ')
    parsed = parse_a1111(a1111_parameters(_recipe(negative_prompt="blurry", guidance=5.0)))
    assert parsed["prompt"] == "monumental, dramatic, atmospheric, transcendent"
    assert parsed["negative_prompt"] == "blurry"
    assert parsed["CFG scale"] == "5.0" and parsed["Seed"] == "42" and parsed["Model"] == "my model, v2"
    assert parsed["Unlocked"] == "guidance negative_prompt"


def test_the_model_hash_is_a1111s_or_absent():
    r = _recipe()
    folder = ModelRef("models/run/checkpoints/step-0002", "checkpoint", "cd" * 32, "run step 2", 2,
                      single_file_sha256="0123456789" + "ab" * 27)
    assert "Model hash: 0123456789, Model: run step 2," in a1111_parameters(r.replace(model=folder))
    plain = ModelRef("some/folder", "folder", "cd" * 32, "folder", None)  # no single file known: no hash claimed
    text = a1111_parameters(r.replace(model=plain))
    assert "Model hash" not in text and "Model: folder, Preset:" in text
    assert "Model hash `0123456789`" in r.replace(model=folder).summary(markdown=True)


# A1111's reader (parse_generation_parameters, modules/infotext_utils.py), restated from its behaviour:
# the last line is the settings line when it holds three or more "Key: value" fields; every line
# before it is stripped, and belongs to the negative prompt from a line that starts "Negative prompt:".
_A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _a1111_reads(text: str) -> dict[str, str]:
    *lines, last = text.strip().split("\n")
    if len(_A1111_PARAM.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in (x.strip() for x in lines):
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return {"prompt": "\n".join(prompt).strip("\n"), "negative": "\n".join(negative), "settings": last}


MULTI = {"prompt": "a castle\n\n  in the clouds, (gold:1.2)\nSteps: 3\nthe end ",
         "negative_prompt": "blurry\nNegative prompt: twice\n\nSteps: 3, Sampler: x, CFG scale: 1"}


def test_multi_line_prompts_keep_their_lines_as_a1111_writes_them():
    text = a1111_parameters(_recipe(**MULTI))
    assert text.startswith(escape_plain(MULTI["prompt"]) + "\nNegative prompt: " + MULTI["negative_prompt"]
                           + "\nSteps: 50, ")  # a plain prompt's brackets escaped for A1111 (test_a1111_escape.py)
    assert len(text.split("\n")) == 10  # nothing flattened: 5 prompt lines, 4 negative lines, the settings
    back = parse_a1111(text)  # Dreamy's reader: exactly what was written
    assert (back["prompt"], back["negative_prompt"]) == (MULTI["prompt"], MULTI["negative_prompt"])
    assert back["Steps"] == "50" and back["Seed"] == "42" and back["Model"] == "my model, v2"
    a1111 = _a1111_reads(text)  # A1111's reader: the same lines (it strips each), our settings line
    # a plain prompt's brackets are escaped for A1111, which then reads them as text, not weights
    assert a1111["prompt"] == "\n".join(x.strip() for x in escape_plain(MULTI["prompt"]).split("\n"))
    assert "\\(gold:1.2\\)" in a1111["prompt"]
    assert a1111["negative"] == "blurry\ntwice\n\nSteps: 3, Sampler: x, CFG scale: 1"
    assert a1111["settings"].startswith("Steps: 50, Sampler: DDIM")
    windows = parse_a1111(a1111_parameters(_recipe(prompt="one\r\ntwo\rthree", negative_prompt=" lead\n")))
    assert (windows["prompt"], windows["negative_prompt"]) == ("one\ntwo\nthree", " lead\n")


def test_a_multi_line_prompt_png_is_recalled_byte_for_byte(tiny_model, tmp_path):
    from dreamy.dreaming.dreams import dream, recall

    overrides = {**MULTI, "width": 64, "height": 64, "steps": 2}
    first = dream(tiny_model, seeds=7, overrides=overrides, unlock=True, out_dir=tmp_path / "a")[0].path
    with Image.open(first) as im:
        assert parse_a1111(im.text["parameters"])["prompt"] == MULTI["prompt"]
    assert read_recipe(first).settings.negative_prompt == MULTI["negative_prompt"]
    again = recall(first, tmp_path / "b", model=tiny_model)
    assert again.path.read_bytes() == first.read_bytes()


def test_parse_a1111_reads_a_foreign_file():
    text = ("a castle, (masterpiece:1.2)\nin the clouds\nNegative prompt: ugly, bad\n"
            'Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, '
            'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1234, b: 5678", Version: v1.10.1')
    p = parse_a1111(text)
    assert p["prompt"] == "a castle, (masterpiece:1.2)\nin the clouds"
    assert p["negative_prompt"] == "ugly, bad"
    assert p["Sampler"] == "Euler a" and p["Size"] == "512x768" and p["Lora hashes"] == "a: 1234, b: 5678"


def test_round_trip_through_png(tmp_path):
    r = _recipe()
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", r)
    assert read_recipe(path) == r
    with Image.open(path) as im:
        assert im.text["parameters"] == a1111_parameters(r)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary file left behind


def test_a_recipe_summary_for_people():
    r = _recipe(steps=2, width=64).replace(
        model=ModelRef("models/run/checkpoints/step-0400", "folder", "cd" * 32, "run", 400),
        runtime={"device": "cpu", "dtype": "float32"})
    assert r.summary().split("\n") == [
        "Dreamy recipe · preset biased-dreams · seed 42 · model run (cdcdcdcdcd, step 400)",
        "prompt: monumental, dramatic, atmospheric, transcendent",
        "guidance 3.0 · 2 ddim steps · 64×512 · fp16",
        "unlocked: steps 50 → 2, width 512 → 64",
        "made on cpu in float32",
    ]
    md = r.summary(markdown=True)  # the studio's Recall panel
    assert md.startswith("**Dreamy recipe** · preset **biased-dreams** · seed **42** · model run (`cdcdcdcdcd`, step 400)")
    assert "\n\n> monumental, dramatic" in md and "steps 50 → 2" in md
    train = resolve("biased-dreams", "train")
    assert train.summary().split("\n") == ["Dreamy recipe · preset biased-dreams · seed None · model ?", "a train recipe"]


def _png_with(tmp_path, **chunks) -> str:
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    path = tmp_path / "in.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    "chunks, message",
    [
        ({}, "carries no recipe"),
        ({"parameters": "a cat\nSteps: 20, Seed: 1"}, "made by another tool"),
        ({"dreamy": "{not json"}, "not valid JSON"),
        ({"dreamy": "[]"}, "not a Dreamy recipe"),
        ({"dreamy": json.dumps({"format": 1, "job": "dream"})}, "incomplete or malformed"),
        ({"dreamy": json.dumps({"format": 1, "job": "rm -rf", "settings": {}})}, "unknown job"),
        ({"dreamy": "[" * 100000 + "]" * 100000}, "not valid JSON|oversized"),
        ({"dreamy": "x" * (2 << 20)}, "oversized"),
    ],
)
def test_recall_refuses_missing_foreign_or_malformed_recipes(tmp_path, chunks, message):
    with pytest.raises(RecallError, match=message):
        read_recipe(_png_with(tmp_path, **chunks))


def test_recall_refuses_wrong_types_inside_a_recipe(tmp_path):
    d = _recipe().to_dict()
    d["settings"]["steps"] = "fifty"
    with pytest.raises(RecallError, match="'steps' must be an integer"):
        read_recipe(_png_with(tmp_path, dreamy=json.dumps(d)))
    d = _recipe().to_dict()
    d["seed"] = 2**40
    with pytest.raises(RecallError, match="malformed"):
        read_recipe(_png_with(tmp_path, dreamy=json.dumps(d)))


def test_recall_refuses_files_that_are_not_pngs(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(RecallError, match="not a readable PNG"):
        read_recipe(text)
    with pytest.raises(RecallError, match="No file at"):
        read_recipe(tmp_path / "missing.png")
    good = save_png(Image.new("RGB", (8, 8)), tmp_path / "good.png", _recipe())
    data = bytearray(good.read_bytes())
    idx = data.find(b"zTXt")  # the recipe is stored compressed
    assert idx > 0
    data[idx + 12] ^= 0xFF  # corrupt the compressed recipe: the chunk CRC no longer matches
    good.write_bytes(bytes(data))
    with pytest.raises(RecallError, match="not a readable PNG"):
        read_recipe(good)
