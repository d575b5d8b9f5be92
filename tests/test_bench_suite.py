"""The benchmark suite's plumbing (no GPU): side-by-side runs on several GPUs, the end-to-end table."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from bench import run as suite
from bench.train import markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_benches_run_side_by_side_one_per_gpu_in_suite_order(monkeypatch):
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    busy: dict[int, int] = {}

    def fake(name, module, extra, out, budget, gpu=None):
        with lock:
            busy[gpu] = busy.get(gpu, 0) + 1
            assert busy[gpu] == 1, "two benches on one GPU at once"
            seen.append((name, gpu))
        with lock:
            busy[gpu] -= 1
        return {"bench": name, "status": "ok", "gpu": gpu}

    monkeypatch.setattr(suite, "run_one", fake)
    jobs = [(n, m, e, Path(f"/tmp/{n}.json"), b) for n, m, e, b in suite.SUITE]
    runs = suite._side_by_side(jobs, 2)
    assert [r["bench"] for r in runs] == [n for n, *_ in suite.SUITE]  # results in the suite's order
    assert {g for _, g in seen} <= {0, 1} and len(seen) == len(suite.SUITE)
    # the longest budgets start first
    first_two = {n for n, _ in seen[:2]}
    longest = sorted(suite.SUITE, key=lambda j: -j[3])[:2]
    assert first_two == {n for n, *_ in longest}


def test_the_where_users_wait_benches_are_in_the_suite():
    names = {n for n, *_ in suite.SUITE}
    assert set(suite.WHERE_USERS_WAIT.split(",")) <= names


def test_the_end_to_end_table_renders_from_the_published_run():
    result = json.loads((DOCS / "bench-suite-h200-train-e2e.json").read_text())
    table = markdown(result)
    assert "1200 steps (extrapolated)" in table and "**1.20**" in table
    assert table.count("\n") == 2  # header, rule, one row
