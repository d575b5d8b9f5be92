"""Sweep scaling: the same seed sweep on 1 process and on N processes (one per GPU), same weights.

    python -m bench.sweep [--seeds 256] [--batch 8] [--processes 2] [--out results.json]

Both runs are the user's command (`python -m dreamy sweep` and `accelerate launch -m dreamy sweep`)
timed end to end (start-up and model loading included) on a full-size random-init SD1.5 in fp16.
Also reported: steady-state throughput from the manifests, and whether every image made by N
processes is byte-identical to the one made by one process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import build_full_sd15, emit, versions

REPO = Path(__file__).resolve().parent.parent


def run_sweep(model: Path, out: Path, seeds: int, batch: int, processes: int) -> dict:
    args = ["-m", "dreamy", "sweep", "--model", str(model), "--seeds", f"0-{seeds - 1}", "--out", str(out),
            "--batch-size", str(batch)]
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"sweep failed ({processes} processes):\n{p.stderr[-4000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    runs = manifest["last_run"]
    dreaming = max(r["dream_s"] for r in runs)  # the slowest process sets the pace
    loading = max(r["load_s"] for r in runs)
    n = len(manifest["images"])
    return {"processes": processes, "images": n, "wall_s": wall, "images_per_s_end_to_end": n / wall,
            "images_per_s_steady": n / dreaming, "dream_s_per_process": [r["dream_s"] for r in runs],
            "model_load_s": loading, "start_up_and_sheets_s": wall - dreaming - loading,
            "duplicates": len(manifest["duplicates"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    work = Path(tempfile.mkdtemp())
    model = build_full_sd15(work / "sd15-random")
    torch.cuda.empty_cache()
    one = run_sweep(model, work / "one", args.seeds, args.batch, 1)
    many = run_sweep(model, work / "many", args.seeds, args.batch, args.processes)
    files = sorted(p.relative_to(work / "one") for p in (work / "one").rglob("seed*.png"))
    same = sum((work / "one" / f).read_bytes() == (work / "many" / f).read_bytes() for f in files)
    result = {
        "bench": "sweep", "model": "full-size SD1.5 architecture, random weights, fp16",
        "recipe": "biased-dreams (512x512, 50 DDIM steps, guidance 3.0)", "gpus": torch.cuda.device_count(),
        "versions": versions(), "one": one, "many": many,
        "scaling_end_to_end": many["images_per_s_end_to_end"] / one["images_per_s_end_to_end"],
        "scaling_steady": many["images_per_s_steady"] / one["images_per_s_steady"],
        "identical_images": f"{same}/{len(files)}",
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
