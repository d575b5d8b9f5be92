"""The one benchmark suite: every bench next to its stock/official baseline, on whatever GPU is here.

    python -m bench [--only dream,train,enlarge] [--out-dir docs] [--budget-s S] [--supir-official PATH]
    python -m bench --only studio,train-e2e,enlarge-batch,train-sdxl   # where users wait (#18, #19)

Each bench is a module ``bench/<name>.py`` with ``main(argv)`` that takes ``--out PATH`` (and
``--budget-s``) and writes one JSON result; an optional ``markdown(result) -> str`` renders its
table. Each runs in its own process (a clean GPU, and one bench's crash cannot take the others
down); with several GPUs the benches run side by side, one per GPU (``CUDA_VISIBLE_DEVICES``),
longest budget first. The suite writes ``bench-suite-<gpu>-<name>.json`` per bench, and ``bench-suite-<gpu>.json``
and ``bench-suite-<gpu>.md`` for the whole run, into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (name, module, extra arguments, time budget in seconds). A module that is missing is recorded as
# "not present" and skipped. Budgets fit an H100; ``--budget-s`` overrides them all.
SUITE: list[tuple[str, str, list[str], float]] = [
    # stock vs the graph and compile levels at batch 1 and at the best sweep batch, time to first image
    ("dream", "bench.dream", ["--repeats", "5", "--batch", "32"], 600.0),
    # the full sweet-spot recipe: diffusers' train_dreambooth.py loop vs ours, plain and fused
    ("train", "bench.train", [], 420.0),
    # SUPIR 512->2048: what enlarge() picks (untiled with cuDNN attention on an H100), tiled, and
    # untiled with PyTorch's default attention; the official sampler when --supir-official is given
    ("enlarge", "bench.enlarge", ["--arms", "auto,tiled,untiled-flash", "--repeats", "2"], 540.0),
    # where users wait (issue #18): the studio's /dream through gradio_client beside dream_iter in one
    # process; train() end to end (sweet-spot, checkpoint + row every 100) beside the stock step; a batch
    # of 8 keepers enlarged with the models loaded once
    ("studio", "bench.studio", ["--model", "full", "--seeds", "32", "--batch", "16", "--rounds", "2"], 420.0),
    ("train-e2e", "bench.train", ["--e2e", "--steps", "300", "--every", "100"], 480.0),
    ("enlarge-batch", "bench.enlarge", ["--arms", "", "--batch", "8"], 420.0),
    # the word-style recipe on full-size random-init SDXL (issue #19): s/step and peak memory
    ("train-sdxl", "bench.train_sdxl", ["--preset", "word-style", "--steps", "100"], 480.0),
]
WHERE_USERS_WAIT = "studio,train-e2e,enlarge-batch,train-sdxl"


def gpu_slug() -> str:
    """'h100', 'h200', ... from the GPU's name (file names), 'cpu' without one."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    for token in name.replace("-", " ").split():
        if token[:1] in "abhlv" and token[1:].isdigit():
            return token
    return "gpu"


def run_one(name: str, module: str, extra: list[str], out: Path, budget_s: float, gpu: int | None = None) -> dict:
    if importlib.util.find_spec(module) is None:
        return {"bench": name, "status": "not present", "module": module}
    t = time.perf_counter()
    cmd = [sys.executable, "-m", module, "--out", str(out), "--budget-s", str(int(budget_s)), *extra]
    env = None if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget_s + 120, env=env)
        if p.returncode == 2 and "--budget-s" in p.stderr:  # a bench that takes no budget: run it without
            cmd = [c for c in cmd if c not in ("--budget-s", str(int(budget_s)))]
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=budget_s + 120, env=env)
    except subprocess.TimeoutExpired:
        return {"bench": name, "status": "timed out", "command": " ".join(cmd)}
    status = {"bench": name, "status": "ok" if p.returncode == 0 else f"exit {p.returncode}",
              "wall_s": time.perf_counter() - t, "command": " ".join(cmd[1:]), "gpu": gpu}
    if p.returncode:
        status["stderr_tail"] = p.stderr[-3000:]
    if out.exists():
        status["result"] = json.loads(out.read_text())
    return status


def markdown(runs: list[dict]) -> str:
    parts = []
    for run in runs:
        parts.append(f"### {run['bench']}: {run['status']}")
        result = run.get("result")
        if not result:
            continue
        module = importlib.import_module({n: m for n, m, *_ in SUITE}[run["bench"]])
        render = getattr(module, "markdown", None)
        parts.append(render(result) if render else "```json\n" + json.dumps(result, indent=1, default=str) + "\n```")
    return "\n\n".join(parts) + "\n"


def _side_by_side(jobs: list[tuple], gpus: int) -> list[dict]:
    """Run ``jobs`` on ``gpus`` GPUs, each GPU one bench at a time, longest budget first; results in suite order."""
    import queue
    import threading

    todo: queue.Queue = queue.Queue()
    for job in sorted(jobs, key=lambda j: -j[4]):
        todo.put(job)
    done: dict[str, dict] = {}

    def worker(gpu: int) -> None:
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            done[job[0]] = run_one(*job, gpu=gpu)
            print(f"{job[0]} (GPU {gpu}): {done[job[0]]['status']} ({done[job[0]].get('wall_s', 0):.0f} s)", flush=True)

    threads = [threading.Thread(target=worker, args=(g,)) for g in range(gpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [done[j[0]] for j in jobs]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(n for n, *_ in SUITE))
    ap.add_argument("--out-dir", default="docs")
    ap.add_argument("--budget-s", type=float, default=None, help="per bench (default: each bench's own)")
    ap.add_argument("--supir-official", default=None, metavar="PATH",
                    help="a Fanghua-Yu/SUPIR checkout: Enlarge is also timed against the official sampler")
    ap.add_argument("--allow-cpu", action="store_true", help="run even without a GPU (full-size models: slow)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("No CUDA GPU here: the suite times full-size models on a GPU; nothing run (--allow-cpu to insist).")
        return []
    wanted = set(args.only.split(","))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = gpu_slug()
    jobs = []
    for name, module, extra, budget in SUITE:
        if name not in wanted:
            continue
        if name == "enlarge" and args.supir_official:
            extra = [*extra, "--official", args.supir_official]
        jobs.append((name, module, extra, out_dir / f"bench-suite-{slug}-{name}.json", args.budget_s or budget))
    gpus = torch.cuda.device_count()
    if gpus > 1:  # one bench per GPU at a time, side by side; each its own process, as alone
        runs = _side_by_side(jobs, gpus)
    else:
        runs = []
        for job in jobs:
            runs.append(run_one(*job))
            print(f"{job[0]}: {runs[-1]['status']} ({runs[-1].get('wall_s', 0):.0f} s)", flush=True)
    (out_dir / f"bench-suite-{slug}.json").write_text(json.dumps(runs, indent=2, default=str))
    text = markdown(runs)
    (out_dir / f"bench-suite-{slug}.md").write_text(text)
    print(text)
    return runs


if __name__ == "__main__":
    main()
