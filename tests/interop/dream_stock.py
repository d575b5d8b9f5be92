"""Dream one picture with stock diffusers from a Dreamy export, in whatever environment runs this.

tests/test_interop.py runs it with the isolated transformers-4.x/diffusers-0.3x interpreter, so it
imports nothing of Dreamy's. Usage: ``python dream_stock.py REQUEST.json OUT.npz``; the request names
the export's diffusers folder, the prompt, the sampler settings, and the loads, each with its prompt:
``"folder"`` (default arguments), ``"fp16"`` (the fp16 variant in fp16), ``"single_file"`` (the LDM
file, with a plain SD1.5-shaped folder as its config), optionally plus a textual-inversion embedding. OUT.npz gets one uint8 picture per load, the prompt's token ids, the
text encoder's missing/unexpected keys, and the versions that ran.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def main(request_path: str, out_path: str) -> None:
    import diffusers
    import transformers
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    req = json.loads(open(request_path, encoding="utf-8").read())
    folder = req["folder"]
    out: dict[str, np.ndarray] = {
        "versions": np.array([torch.__version__, transformers.__version__, diffusers.__version__]),
    }
    # The slow tokenizer (what model_index.json names) and the text encoder's keys, checked on their own
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    out["token_ids"] = np.array(tokenizer(req["prompt"]).input_ids)
    _, info = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", output_loading_info=True)
    out["te_missing"] = np.array(sorted(info["missing_keys"]), dtype=str)
    out["te_unexpected"] = np.array(sorted(info["unexpected_keys"]), dtype=str)

    for load in req["loads"]:
        how = load["how"]
        if how == "folder":  # what a user types: no dtype, no variant
            pipe = StableDiffusionPipeline.from_pretrained(folder)
        elif how == "fp16":
            pipe = StableDiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
        elif how == "single_file":  # configs (and tokenizer) from a plain SD1.5-shaped folder, weights from the file
            pipe = StableDiffusionPipeline.from_single_file(load["file"], config=load["config"], local_files_only=True)
        else:
            raise ValueError(f"unknown load {how!r}")
        if load.get("embedding"):
            pipe.load_textual_inversion(load["embedding"], token=load["token"])
        pipe.scheduler = DDIMScheduler(**req["scheduler"])
        pipe.set_progress_bar_config(disable=True)
        image = pipe(load["prompt"], num_inference_steps=req["steps"], guidance_scale=req["guidance"],
                     height=req["size"], width=req["size"], output_type="pil",
                     generator=torch.Generator("cpu").manual_seed(req["seed"])).images[0]
        out[f"image_{how}"] = np.asarray(image, dtype=np.uint8)
        out[f"dtypes_{how}"] = np.array([str(pipe.unet.dtype), str(pipe.text_encoder.dtype), str(pipe.vae.dtype)])
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
