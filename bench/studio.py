"""The studio against its own core: the same dream through ``gradio_client`` and in one process.

    python -m bench.studio [--model full|tiny] [--seeds 32] [--batch 16] [--rounds 3]

Three arms, interleaved round by round on one loaded model (the studio's model cache is this
process's, so every arm dreams with the same weights, warm):

- ``studio``: ``Client.predict(..., api_name="/dream")`` against the real studio (``app.build`` +
  ``app.launch`` on a loopback port), streaming every PNG into the gallery as a browser sees it.
- ``core_files``: ``dream_stream`` writing the same PNGs (recipe chunks included): what the studio
  handler calls.
- ``core_gpu``: ``dream_iter`` with no output folder: decoding, no PNG files.

Prints JSON: seconds per call (median of ``--rounds``), images/s and the ratios studio/core_files
and core_files/core_gpu. ``--model tiny`` runs on a CPU in seconds (64 px, 2 steps): there the
core's work is small, so the ratio shows the studio's own overhead per picture.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PACKAGE_DEAL = "monumental, dramatic, atmospheric, transcendent"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("full", "tiny"), default="full")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=None, help="px (default: 512 full, 64 tiny)")
    ap.add_argument("--steps", type=int, default=None, help="default: 50 full, 2 tiny")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import os

    import torch
    from gradio_client import Client

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    import app
    from bench.common import build_full_sd15, versions
    from dreamy.dreaming.dreams import dream_iter, dream_stream
    from studio.session import Studio

    root = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    if args.model == "full":
        source = str(build_full_sd15(root / "sd15-random"))
        size, steps = 512, 50
    else:
        source, size, steps = "tiny", 64, 2
    size, steps = args.size or size, args.steps or steps
    fields = [PACKAGE_DEAL, "", 3.0, steps, size, size]
    overrides = {"steps": steps, "width": size, "height": size}
    seeds = f"0-{args.seeds - 1}"
    studio = Studio(default_model=source, outputs=root / "outputs", models=root / "models")
    studio.models.mkdir(parents=True)
    demo = app.build(studio)
    _, url, _ = app.launch(demo, studio, port=free_port(), prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False, download_files=False)

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def studio_arm() -> int:
        gallery, *_ = client.predict(source, "biased-dreams", seeds, True, args.batch, *fields, api_name="/dream")
        return len(gallery)

    def core_files() -> int:
        out = Path(tempfile.mkdtemp(dir=root))
        n = sum(1 for e in dream_stream(source, "biased-dreams", seeds, out_dir=out, overrides=overrides,
                                         unlock=True, batch_size=args.batch, keep_loaded=True)
                if type(e).__name__ == "Landed")
        shutil.rmtree(out)
        return n

    def core_gpu() -> int:
        return sum(1 for _ in dream_iter(_loaded(source), "biased-dreams", seeds, overrides=overrides, unlock=True,
                                         batch_size=args.batch))

    arms = {"studio": studio_arm, "core_files": core_files, "core_gpu": core_gpu}
    result: dict = {"bench": "studio", "model": args.model, "seeds": args.seeds, "batch": args.batch,
                    "size": size, "steps": steps, "versions": versions(),
                    "command": "python -m bench.studio " + " ".join(argv if argv is not None else sys.argv[1:])}
    for fn in arms.values():  # warm: model load, graph capture, Gradio's first request
        fn()
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(args.rounds):
        for name, fn in arms.items():
            sync()
            t = time.perf_counter()
            n = fn()
            sync()
            times[name].append(time.perf_counter() - t)
            assert n == args.seeds, f"{name} made {n} of {args.seeds} images"
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = {"median_s": med, "all_s": ts, "images_per_s": args.seeds / med}
    result["ratio_studio_over_core_files"] = result["studio"]["median_s"] / result["core_files"]["median_s"]
    result["ratio_core_files_over_core_gpu"] = result["core_files"]["median_s"] / result["core_gpu"]["median_s"]
    client.close()
    demo.close()
    shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return result


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loaded(source: str):
    """The model the studio's cache holds (dream_stream's keep_loaded), so no arm loads its own copy."""
    from dreamy.dreaming.dreams import dream_model
    from dreamy.recipes.presets import load_preset

    return dream_model(source, precision=load_preset("biased-dreams").dream.precision, keep_loaded=True)


if __name__ == "__main__":
    main()
