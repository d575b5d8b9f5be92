"""What users bring (issue 14): other tools' recipes, read as those tools write them, never misread.

A1111/Forge infotext (values that span lines, lines appended by extensions), the same text in a
JPEG's or WebP's EXIF UserComment, Fooocus' JSON scheme, ComfyUI's workflow chunks; and what
``info``, ``recall`` (CLI and core) and the Dream form make of them.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from dreamy.errors import RecallError
from dreamy.png.info import describe_png, dream_form, reproducible
from dreamy.png.metadata import decode_user_comment, parse_a1111, read_text_chunks

LIGHTHOUSE = ("a lighthouse on a cliff at dusk\n"
              "Negative prompt: blurry, lowres\n"
              "Steps: 28, Sampler: DPM++ 2M, CFG scale: 6.5, Seed: 123456, Size: 512x768, Model hash: abcdef1234, "
              "Template: a {lighthouse|windmill}\n"
              "on a cliff, Version: v1.5.1")
LIGHTHOUSE_VALUES = {"prompt": "a lighthouse on a cliff at dusk", "negative_prompt": "blurry, lowres", "steps": 28,
                     "guidance": 6.5, "width": 512, "height": 768, "prompt_syntax": "a1111", "sampler": "dpmpp_2m",
                     "scheduler": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}}


def _png(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    Image.new("RGB", (64, 80)).save(path, pnginfo=info)
    return path


def _exif_image(path, comment: bytes, fmt: str = "JPEG", maker_note: bytes | None = None):
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x9286] = comment
    if maker_note is not None:
        ifd[0x927C] = maker_note
    Image.new("RGB", (64, 80), (90, 120, 200)).save(path, format=fmt, exif=exif.tobytes())
    return path


# ---- A1111 / Forge infotext ----

def test_a_value_with_a_raw_line_break_does_not_swallow_the_settings():
    p = parse_a1111(LIGHTHOUSE)
    assert p["prompt"] == "a lighthouse on a cliff at dusk"
    assert p["negative_prompt"] == "blurry, lowres"
    assert (p["Steps"], p["CFG scale"], p["Seed"], p["Size"]) == ("28", "6.5", "123456", "512x768")
    assert p["Template"] == "a {lighthouse|windmill}\non a cliff" and p["Version"] == "v1.5.1"


@pytest.mark.parametrize("text, expected", [
    # an extension appends whole lines of settings after A1111's
    (LIGHTHOUSE + "\nADetailer model: face_yolov8n.pt, ADetailer prompt: \"smile, detailed eyes\"\n"
                  "ControlNet 0: \"Module: canny, Model: control_v11p\"",
     {"ADetailer model": "face_yolov8n.pt", "ADetailer prompt": "smile, detailed eyes",
      "ControlNet 0": "Module: canny, Model: control_v11p", "Steps": "28", "Version": "v1.5.1"}),
    # Windows line ends, a multi-line prompt and negative prompt
    ("a cat\r\non a mat\r\nNegative prompt: dogs,\r\nbirds\r\nSteps: 20, CFG scale: 7, Seed: 5, Size: 64x64",
     {"prompt": "a cat\non a mat", "negative_prompt": "dogs,\nbirds", "Steps": "20", "Seed": "5"}),
    # a value spanning several lines, the last field on its own line
    ("p\nSteps: 9, Wildcards: one\ntwo\nthree, Seed: 3", {"Wildcards": "one\ntwo\nthree", "Seed": "3", "prompt": "p"}),
    # no Steps line: A1111's rule, the last line with three or more fields
    ("a dog\nSampler: Euler, CFG scale: 5, Seed: 8", {"prompt": "a dog", "CFG scale": "5", "Seed": "8"}),
    # a prompt that merely mentions settings keeps them as prompt text
    ("photo, style: noir, light: soft\nSteps: 4, Seed: 1", {"prompt": "photo, style: noir, light: soft", "Steps": "4"}),
    # a multi-line prompt with a blank line and a line that looks like settings, "Negative prompt:" again in
    # the negative prompt: only the last Steps line is the settings line, only the first marker splits
    ("a castle\n\nSteps: 3\n  in the clouds \nNegative prompt: blurry\nNegative prompt: twice\n"
     "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 64x64",
     {"prompt": "a castle\n\nSteps: 3\n  in the clouds ", "negative_prompt": "blurry\nNegative prompt: twice",
      "Steps": "20", "Seed": "9", "Size": "64x64"}),
    # no settings at all: all prompt
    ("just a prompt\nover two lines", {"prompt": "just a prompt\nover two lines", "negative_prompt": ""}),
])
def test_a1111_variants(text, expected):
    p = parse_a1111(text)
    for k, v in expected.items():
        assert p[k] == v, (k, p)


def test_a_png_with_the_broken_line_gives_the_right_form_values(tmp_path):
    info = describe_png(_png(tmp_path / "a.png", parameters=LIGHTHOUSE))
    assert info.kind == "foreign" and info.tool == "A1111/Forge"
    assert info.values == LIGHTHOUSE_VALUES and info.seed == 123456
    can, cannot = reproducible(info)
    assert can == [*LIGHTHOUSE_VALUES, "seed"] and "Sampler" not in cannot and "Model hash" in cannot


# ---- JPEG and WebP: EXIF UserComment ----

@pytest.mark.parametrize("fmt, comment", [
    ("JPEG", b"UNICODE\0" + LIGHTHOUSE.encode("utf-16-be")),  # A1111's piexif: big-endian
    ("JPEG", b"UNICODE\0" + LIGHTHOUSE.encode("utf-16-le")),  # other writers: little-endian
    ("JPEG", b"UNICODE\0" + "\ufeff".encode("utf-16-le") + LIGHTHOUSE.encode("utf-16-le")),  # with a BOM
    ("JPEG", b"ASCII\0\0\0" + LIGHTHOUSE.encode()),
    ("WEBP", b"UNICODE\0" + LIGHTHOUSE.encode("utf-16-be")),
    ("WEBP", b"ASCII\0\0\0" + LIGHTHOUSE.encode()),
])
def test_jpeg_and_webp_carry_the_infotext_in_exif(tmp_path, fmt, comment):
    path = _exif_image(tmp_path / f"a.{fmt.lower()}", comment, fmt)
    assert read_text_chunks(path)["parameters"] == LIGHTHOUSE
    info = describe_png(path)
    assert info.kind == "foreign" and info.values == LIGHTHOUSE_VALUES and info.seed == 123456
    form = dream_form(path, "biased-dreams")
    assert form.values == LIGHTHOUSE_VALUES and form.seed == 123456 and "prompt" in form.unlock


def test_a_jpeg_without_a_comment_says_so(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (64, 80)).save(path)
    info = describe_png(path)
    assert info.kind == "none" and "carries no recipe" in info.message


@pytest.mark.parametrize("raw", [None, b"", b"UNICODE", b"JIS\0\0\0\0\0abc", b"UNICODE\0\xff", 42, b"\0" * 8,
                                 b"UNICODE\0" + b"\xd8\x00" * 3])
def test_odd_user_comments_are_no_text_never_a_crash(raw):
    out = decode_user_comment(raw)
    assert out is None or isinstance(out, str)


# ---- Fooocus ----

FOOOCUS = {"prompt": "a red fox in snow", "negative_prompt": "cartoon", "styles": "['Fooocus V2']",
           "performance": "Speed", "steps": 30, "resolution": "(1152, 896)", "guidance_scale": 4.0,
           "sharpness": 2.0, "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": "1234567",
           "base_model": "juggernautXL_v8Rundiffusion", "version": "Fooocus v2.5.0"}
FOX = {"prompt": "a red fox in snow", "negative_prompt": "cartoon", "steps": 30, "guidance": 4.0, "width": 1152,
       "height": 896}


def test_fooocus_json_scheme_is_read_not_taken_for_a_prompt(tmp_path):
    info = describe_png(_png(tmp_path / "f.png", parameters=json.dumps(FOOOCUS), fooocus_scheme="fooocus"))
    assert info.tool == "Fooocus" and info.values == FOX and info.seed == 1234567
    assert "base_model" in reproducible(info)[1] and info.parameters["sampler"] == "dpmpp_2m_sde_gpu"


def test_fooocus_jpeg_and_spelling_variants(tmp_path):
    data = {"Prompt": "a red fox in snow", "Negative Prompt": "cartoon", "Steps": "30", "Guidance Scale": "4",
            "Resolution": "(1152, 896)", "Seed": 1234567}
    comment = b"UNICODE\0" + json.dumps(data).encode("utf-16-be")
    info = describe_png(_exif_image(tmp_path / "f.jpg", comment, maker_note=b"fooocus"))
    assert info.tool == "Fooocus" and info.values == FOX and info.seed == 1234567


def test_fooocus_a1111_scheme_is_plain_a1111(tmp_path):
    info = describe_png(_png(tmp_path / "f.png", parameters=LIGHTHOUSE, fooocus_scheme="a1111"))
    assert info.tool == "A1111/Forge" and info.values == LIGHTHOUSE_VALUES


@pytest.mark.parametrize("data", [{"resolution": "huge", "steps": "many", "seed": -4, "prompt": ["x"]},
                                  {"guidance_scale": float("nan"), "seed": 2**70}, {}])
def test_odd_fooocus_values_are_left_out(tmp_path, data):
    info = describe_png(_png(tmp_path / "f.png", parameters=json.dumps(data), fooocus_scheme="fooocus"))
    assert info.tool == "Fooocus" and info.seed is None
    assert set(info.values) == {"prompt", "negative_prompt"} and info.values["prompt"] == ""


# ---- ComfyUI ----

COMFY = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8.0,
                                               "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                               "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery, glass bottle", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
}
WORKFLOW = {"nodes": [
    {"id": 6, "type": "CLIPTextEncode", "widgets_values": ["beautiful scenery"]},
    {"id": 7, "type": "CLIPTextEncode", "widgets_values": ["text, watermark"]},
    {"id": 3, "type": "KSampler", "widgets_values": [42, "randomize", 25, 7.5, "euler", "normal", 1]},
]}


def test_a_comfyui_png_is_named_and_shown_not_run(tmp_path):
    info = describe_png(_png(tmp_path / "c.png", prompt=json.dumps(COMFY), workflow=json.dumps(WORKFLOW)))
    assert info.kind == "foreign" and info.tool == "ComfyUI" and "ComfyUI workflow" in info.message
    assert "does not run" in info.message
    assert info.parameters["positive"] == "beautiful scenery, glass bottle"
    assert info.parameters["negative"] == "text, watermark"
    assert (info.parameters["steps"], info.parameters["cfg"], info.parameters["sampler"]) == (20, 8.0, "euler")
    assert info.seed is None  # ComfyUI's seed is past A1111's 32-bit range: shown, not used
    assert info.parameters["seed"] == 156680208700286
    assert info.values == {"prompt": "beautiful scenery, glass bottle", "negative_prompt": "text, watermark",
                           "steps": 20, "guidance": 8.0, "width": 512, "height": 640}


def test_a_comfyui_png_with_only_its_workflow(tmp_path):
    info = describe_png(_png(tmp_path / "c.png", workflow=json.dumps(WORKFLOW)))
    assert info.tool == "ComfyUI" and info.seed == 42 and info.values["steps"] == 25
    assert info.parameters["text 1"] == "beautiful scenery" and info.parameters["text 2"] == "text, watermark"


@pytest.mark.parametrize("prompt", [
    "{not json", "[]", "null", "[" * 50000 + "]" * 50000, json.dumps({"1": "x", "2": None}),
    json.dumps({"3": {"class_type": "KSampler", "inputs": {"positive": ["3", 0], "negative": ["99"],
                                                           "latent_image": 5, "seed": "x", "steps": True}}}),
    json.dumps({"3": {"class_type": "KSampler", "inputs": ["a"]}, "6": {"class_type": "CLIPTextEncode"}}),
])
def test_odd_comfyui_json_never_crashes(tmp_path, prompt):
    info = describe_png(_png(tmp_path / "c.png", prompt=prompt, workflow='{"nodes": [1, {"type": "KSampler"}]}'))
    assert info.kind == "foreign" and info.tool == "ComfyUI"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                        st.sampled_from(["3", "6", "class_type", "inputs", "text", "positive", "seed", "KSampler",
                                         "nodes", "widgets_values", "type"]), kids, max_size=4),
                    max_leaves=30))
def test_any_json_in_comfyui_or_fooocus_chunks(tmp_path, data):
    text = json.dumps(data)
    for chunks in ({"prompt": text, "workflow": text}, {"parameters": text, "fooocus_scheme": "fooocus"}):
        info = describe_png(_png(tmp_path / "fuzz.png", **chunks))
        assert info.kind == "foreign"


# ---- recall (core) and the CLI ----

def test_core_recall_says_what_it_can_and_cannot_reproduce(tmp_path):
    from dreamy.dreaming.dreams import recall

    with pytest.raises(RecallError, match=r"made by another tool \(A1111/Forge\).*prompt, negative_prompt, steps, "
                                          r"guidance, width, height, prompt_syntax, sampler, scheduler, seed; "
                                          r"not with its Model hash"):
        recall(_exif_image(tmp_path / "a.jpg", b"UNICODE\0" + LIGHTHOUSE.encode("utf-16-be")))
    with pytest.raises(RecallError, match=r"ComfyUI"):
        recall(_png(tmp_path / "c.png", prompt=json.dumps(COMFY)))


def _cli(capsys, *args):
    from dreamy.cli.main import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_info_prints_what_a_foreign_file_says(tmp_path, capsys):
    rc, out, err = _cli(capsys, "info", str(_exif_image(tmp_path / "a.jpg", b"UNICODE\0" + LIGHTHOUSE.encode("utf-16-le"))))
    assert rc == 0 and "made by another tool" in err and "not with its Model hash" in err
    shown = json.loads(out)
    assert shown["tool"] == "A1111/Forge" and shown["settings"] == LIGHTHOUSE_VALUES and shown["seed"] == 123456
    rc, out, err = _cli(capsys, "info", str(_png(tmp_path / "c.png", prompt=json.dumps(COMFY))))
    assert rc == 0 and "ComfyUI workflow" in err and json.loads(out)["parameters"]["negative"] == "text, watermark"
    rc, out, err = _cli(capsys, "info", str(_png(tmp_path / "none.png")))
    assert rc == 2 and "carries no recipe" in err


def test_cli_recall_of_a_foreign_file(tmp_path, capsys):
    png = _png(tmp_path / "a.png", parameters="a small boat\nNegative prompt: fog\nSteps: 2, Sampler: Euler a, "
                                               "CFG scale: 4.5, Seed: 77, Size: 64x64, Model: dreamshaper_8")
    rc, out, err = _cli(capsys, "recall", str(png), "--out", str(tmp_path / "out"))
    assert rc == 2 and "cannot re-create it exactly" in err and "not with its Model" in err
    assert "--use-settings" in err and not (tmp_path / "out").exists()
    rc, out, err = _cli(capsys, "recall", str(png), "--out", str(tmp_path / "out"), "--use-settings", "--model", "tiny")
    assert rc == 2 and "which locks them" in err and "--unlock" in err
    rc, out, err = _cli(capsys, "recall", str(png), "--out", str(tmp_path / "out"), "--use-settings", "--model", "tiny",
                        "--unlock", "--device", "cpu")
    assert rc == 0, err
    assert "not reproduced: Model" in err
    from dreamy.png.metadata import read_recipe

    r = read_recipe(out.strip())
    s = r.settings
    assert (r.seed, s.prompt, s.negative_prompt, s.steps, s.guidance, s.width, s.height) == \
        (77, "a small boat", "fog", 2, 4.5, 64, 64)
    assert set(r.unlocked) >= {"prompt", "steps", "width", "height"}
