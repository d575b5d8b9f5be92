#!/usr/bin/env bash
# Wheels for the GPU machine (no package registry there; its image has torch, transformers,
# huggingface_hub, numpy, pillow, httpx): the studio's and diffusers' own needs, at the versions
# of requirements-lock.txt, for CPython 3.12 on x86-64. Run in the repo root; `.whl/` is git-ignored
# locally (.git/info/exclude) and travels with `carry: [".whl"]`. On the device:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
names="gradio gradio_client diffusers fastapi starlette uvicorn h11 click brotli groovy hf-gradio orjson
pandas pytz tzdata python-dateutil pydantic pydantic_core annotated-types typing-inspection pydub
python-multipart safehttpx semantic-version tomlkit typer rich shellingham markdown-it-py mdurl Pygments
anyio peft accelerate annotated-doc opentelemetry-api bitsandbytes prodigyopt torchsde trampoline"
pins=()
for n in $names; do
  pin=$(grep -i "^${n//_/[-_]}==" requirements-lock.txt || true)
  [ -n "$pin" ] && pins+=("$pin") || pins+=("$n")
done
pins+=("six" "py-spy")  # python-dateutil's need; a sampling profiler for the studio bench
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
# The studio's API needs none of gradio's media demos, ffmpeg.wasm or server-side-rendering build:
# drop them so the wheels and the repo fit the device's 64 MiB (pip does not check RECORD hashes).
python3 - <<'PY'
import glob, os, zipfile
# bitsandbytes ships one native library per CUDA/ROCm/XPU version (~190 MB): the device's torch is
# built for CUDA 13.0, so only its library and the CPU one travel.
drop = ("gradio/media_assets/", "gradio/templates/node/", "gradio/templates/frontend/static/ffmpeg/")
keep_so = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so")
for w in glob.glob(".whl/gradio-[0-9]*.whl") + glob.glob(".whl/bitsandbytes-[0-9]*.whl"):
    src = zipfile.ZipFile(w)
    with zipfile.ZipFile(w + ".tmp", "w", zipfile.ZIP_DEFLATED) as dst:
        for i in src.infolist():
            name = i.filename
            if name.startswith(drop) or (name.endswith(".so") and "libbitsandbytes_" in name
                                         and not name.endswith(keep_so)):
                continue
            dst.writestr(i, src.read(i))
    os.replace(w + ".tmp", w)
PY
du -sh .whl
