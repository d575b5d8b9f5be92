"""Shared links and the API: sign-in required, files served only from outputs/ and models/, uploads and the
queue capped, and many concurrent users whose jobs all finish (or are refused with a message) unmixed.

Loopback only, tiny model at 64 px with 2 steps, every wait bounded.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from test_app_api import SMALL, running_studio

pytestmark = pytest.mark.timeout(300)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# ---- the command line: no open shared links by accident ----

@pytest.mark.parametrize("argv", [["--share"], ["--host", "0.0.0.0"], ["--share", "--host", "192.168.1.5"]])
def test_an_exposed_studio_refuses_to_start_without_sign_in(argv, capsys):
    import app

    with pytest.raises(SystemExit) as e:
        app.main(argv)
    assert e.value.code == 2
    assert "add --auth user:password" in capsys.readouterr().err


def test_the_studio_is_built_only_after_the_engines_are_imported(monkeypatch, tmp_path):
    """`python app.py` crashed on every start on a 2-core machine: the page's build read diffusers'
    schedulers while the preload thread was importing diffusers (its lazy module is not thread-safe)."""
    import app

    order: list[str] = []

    def slow_preload() -> None:
        time.sleep(0.5)  # a slow machine: the imports outlast everything main() does before the build
        order.append("preloaded")

    monkeypatch.setattr(app, "preload", slow_preload)
    monkeypatch.setattr(app, "build", lambda studio: order.append("built") or "ui")
    monkeypatch.setattr(app, "launch", lambda ui, studio, **kw: order.append("launched"))
    monkeypatch.setenv("DREAMY_OUTPUTS", str(tmp_path / "outputs"))
    app.main(["--model", "tiny"])
    assert order == ["preloaded", "built", "launched"]


def test_sign_ins_must_be_well_formed_and_can_come_from_a_file(tmp_path):
    import app

    with pytest.raises(SystemExit, match="8 characters"):
        app.read_auth(["ann:short"], None)
    with pytest.raises(SystemExit, match="user:password"):
        app.read_auth(["no-colon-here"], None)
    f = tmp_path / "users.txt"
    f.write_text("# friends\nann:correct horse\nbob:battery staple\n")
    assert app.read_auth([], str(f)) == [("ann", "correct horse"), ("bob", "battery staple")]
    assert app.exposure_problem(True, "127.0.0.1", [("ann", "x" * 8)], False) is None
    assert app.exposure_problem(True, "127.0.0.1", [], True) is None  # --insecure-share, said explicitly
    assert app.exposure_problem(False, "localhost", [], False) is None


# ---- one running studio for the serving, upload and concurrency checks ----

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    with running_studio(root, max_file_size="200kb", max_queue=48) as (url, studio):
        yield url, studio


def test_files_are_served_only_from_outputs_and_models(served, tmp_path):
    from gradio_client import Client

    url, studio = served
    c = Client(url, verbose=False, download_files=str(tmp_path))
    gallery, *_ = c.predict("tiny", "biased-dreams", "0", True, 1, *SMALL.values(), api_name="/dream")
    c.close()
    mine = next((studio.outputs / "dream").glob("*/seed000000.png"))
    secret = studio.outputs.parent / "secret.txt"  # beside outputs/, not in it
    secret.write_text("not for visitors")
    escape = studio.outputs / "escape.txt"
    escape.symlink_to(secret)
    repo_file = Path(__file__).resolve().parents[1] / "README.md"  # in the working directory

    def get(path: str) -> int:
        return status_of(f"{url}gradio_api/file={urllib.parse.quote(path)}")

    assert get(str(mine)) == 200
    for refused in ("/etc/passwd", str(secret), str(repo_file), f"{studio.outputs}/../secret.txt",
                    f"{studio.outputs}/../../../../etc/passwd", str(escape)):
        assert get(refused) in (403, 404), refused


def test_uploads_over_the_size_limit_are_refused(served, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = served
    big = tmp_path / "big.png"
    Image.effect_noise((400, 400), 64).convert("RGB").save(big)  # ~480 kB of noise: over the 200 kB cap
    assert big.stat().st_size > 200_000
    c = Client(url, verbose=False, download_files=str(tmp_path))
    with pytest.raises(Exception, match="(?i)exceeds the maximum file size|too large|413"):
        c.predict(handle_file(str(big)), api_name="/read_recipe")
    c.close()


def test_eight_users_five_jobs_each_all_finish_unmixed_and_nothing_is_lost(served, tmp_path):
    """8 gradio_client users submit 5 one-seed dreams each at once; every job ends with its own images."""
    from gradio_client import Client

    from dreamy.png.metadata import read_recipe

    url, studio = served
    results: dict[tuple[int, int], object] = {}
    errors: list[str] = []

    def user(u: int) -> None:
        c = Client(url, verbose=False, download_files=str(tmp_path / f"user{u}"))
        jobs = {j: c.submit("tiny", "biased-dreams", str(1000 * u + j), True, 1, *SMALL.values(), api_name="/dream")
                for j in range(5)}
        for j, job in jobs.items():
            try:
                results[(u, j)] = job.result(timeout=240)
            except Exception as e:  # noqa: BLE001 - a refusal must carry a message
                results[(u, j)] = e
                errors.append(f"user {u} job {j}: {e}")
        c.close()

    before = set((studio.outputs / "dream").glob("*")) if (studio.outputs / "dream").exists() else set()
    t0 = time.monotonic()
    threads = [threading.Thread(target=user, args=(u,)) for u in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=270)
    assert not any(t.is_alive() for t in threads), "a user never got an answer"
    assert len(results) == 40, f"only {len(results)} of 40 jobs answered"
    finished = {k: v for k, v in results.items() if not isinstance(v, Exception)}
    assert all(str(v).strip() for k, v in results.items() if isinstance(v, Exception)), "a refusal without a message"
    assert len(finished) >= 32, errors  # the queue holds them all; refusals would be rare and explained
    folders = set()
    for (u, j), (gallery, _sheet, status, *_) in finished.items():
        assert len(gallery) == 1 and gallery[0]["caption"] == f"seed {1000 * u + j}"
        assert read_recipe(Path(gallery[0]["image"])).seed == 1000 * u + j  # the user's own picture
        folders.add(status.split("`")[1])
    assert len(folders) == len(finished)  # one folder per job: outputs never mix
    made = set((studio.outputs / "dream").glob("*")) - before
    assert len(made) == len(finished)
    for d in made:
        files = list(d.iterdir())
        assert [f.name for f in files if f.suffix == ".png"] and not [f for f in files if f.name.startswith(".")]
    print(f"40 jobs from 8 users in {time.monotonic() - t0:.1f} s")


def test_a_full_queue_refuses_the_job_beyond_max_queue_with_a_message(tmp_path, monkeypatch):
    """--max-queue 2: one job on the GPU, two waiting, the fourth is refused with "Queue is full"; the others
    all finish. The first job holds the GPU until the refusal was seen (bounded), so no job can slip through."""
    from gradio_client import Client
    from gradio_client.utils import Status

    from dreamy.dreaming import dreams

    on_gpu, release, real = threading.Event(), threading.Event(), dreams.dream_stream

    def held(*args, **kwargs):  # a slow dream: waits for the test (at most 120 s), then dreams for real
        on_gpu.set()
        release.wait(timeout=120)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(dreams, "dream_stream", held)
    with running_studio(tmp_path, max_queue=2) as (url, _):
        c = Client(url, verbose=False, download_files=str(tmp_path / "dl"))

        def submit(seed: int):
            return c.submit("tiny", "biased-dreams", str(seed), True, 1, *SMALL.values(), api_name="/dream")

        try:
            first = submit(0)
            assert on_gpu.wait(timeout=60), "the first job never reached the GPU"
            waiting = [submit(1), submit(2)]
            deadline = time.monotonic() + 60
            while any(j.status().code != Status.IN_QUEUE for j in waiting):
                assert time.monotonic() < deadline, [j.status().code for j in waiting]
                time.sleep(0.05)
            refused = submit(3)
            with pytest.raises(Exception, match="Queue is full") as refusal:
                refused.result(timeout=60)
            release.set()
            results = [job.result(timeout=120) for job in (first, *waiting)]
        finally:
            release.set()
            c.close()
    print(f"refused with: {refusal.value}")
    assert [r[0][0]["caption"] for r in results] == ["seed 0", "seed 1", "seed 2"]
