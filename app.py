"""Dreamy studio: Train, Dream, Enlarge and Particles tabs, a thin Gradio layer over the `dreamy` core.

Every handler only turns widget values into a core call (the ``studio`` package: one module per tab,
studio/dream_tab.py, train_tab.py, enlarge_tab.py, particles_tab.py). Locks are enforced by the core,
so the HTTP API behind this page cannot bypass them either; one GPU queue serves all tabs.

    python app.py                                  # http://127.0.0.1:7860 on SD 1.5 (downloaded once; offline: tiny demo)
    python app.py --model PATH_OR_HUB_ID           # start on another model
    python app.py --share --auth-file users.txt    # a public link: sign-in required
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local studio

import gradio as gr  # noqa: E402

from dreamy.layout import models_root, outputs_root
from dreamy.models import hub
from dreamy.models.sources import TINY_NAME, starting_model
from studio import dream_tab, enlarge_tab, history, particles_tab, train_tab
from studio.errors import user_errors
from studio.session import Studio

CSS = """
.dreamy-note { font-size: 0.9em; opacity: 0.85; }
.dreamy-warning { border-left: 4px solid #d97706; padding: 4px 10px; background: rgba(217,119,6,.08); }
.dreamy-step { margin-top: 6px; }
.dreamy-differs [data-testid="block-info"] { color: #b45309; font-weight: 600; }  /* unlocked, not the preset's */
#offline-banner { border-left: 4px solid #2563eb; padding: 4px 10px; background: rgba(37,99,235,.08); }
#particles-canvas canvas { width: 100%; height: auto; background: #000; border-radius: 8px; }
#train-grid .image-frame { padding-top: 34px; box-sizing: border-box; }  /* below the label, not under it */
#train-log textarea { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre; overflow-x: auto; }
"""


def build(studio: Studio) -> gr.Blocks:
    """The whole studio as one Blocks app (not launched)."""
    with gr.Blocks(title="Dreamy", delete_cache=(3600, 24 * 3600)) as demo:
        gr.Markdown("## Dreamy · latent space photography")
        if studio.default_model == TINY_NAME:
            gr.Markdown("Offline demo: the **tiny** model has random weights and paints noise. Pick Stable "
                        "Diffusion 1.5 or a trained model in Dream once it is on this machine.",
                        elem_id="offline-banner")
        with gr.Tabs(selected="dream") as tabs:
            with gr.Tab("Train", id="train") as train_page:
                train = train_tab.build(studio)
            with gr.Tab("Dream", id="dream"):
                dream = dream_tab.build(studio)
            with gr.Tab("Enlarge", id="enlarge"):
                enlarge = enlarge_tab.build(studio)
            with gr.Tab("Particles", id="particles"):
                particles = particles_tab.build(studio)

        # Hand-offs between tabs (UI only: the API works on files, not on a visitor's selection).
        def to_enlarge(paths: list[str], index: int | None):
            return dream.send(paths, index), gr.Tabs(selected="enlarge")

        def to_particles(paths: list[str], index: int | None):
            return dream.send(paths, index), gr.Tabs(selected="particles")

        dream.send_enlarge.click(to_enlarge, [dream.paths, dream.selected], [enlarge.image, tabs],
                                 api_visibility="private")
        dream.send_particles.click(to_particles, [dream.paths, dream.selected], [particles.image, tabs],
                                   api_visibility="private")

        def all_to_enlarge(paths: list[str]):  # the gallery (a sweep's keepers, a grid's cells) as one batch
            first, rest = enlarge_tab.split_batch(paths)
            return first, rest, gr.Tabs(selected="enlarge")

        dream.send_all_enlarge.click(all_to_enlarge, [dream.paths], [enlarge.image, enlarge.more, tabs],
                                     api_visibility="private")

        def cell_to_dream(run: str, index: int | None, current_preset: str):
            """The corridor loop's hand-off: a cell of Train's grid opens its checkpoint and seed in Dream,
            with the cell's own settings (its preset, prompt, sampler, size: the run's validation recipe),
            so Dream's picture is the cell's."""
            source, cell, folder = history.cell_of(studio, run, index)
            models, runs = dream_tab.refresh_pickers(studio)  # a run trained since the page loaded is listed
            with user_errors("dream"):
                form = dream.form_from(str(cell.path), current_preset)
            gr.Info(f"Dream is set to {run} · step {cell.step} with seed {cell.seed} and the grid's settings: "
                    "press Dream, or widen the seeds.")
            return [{**models, "value": source}, str(cell.seed), {**runs, "value": folder}, gr.Tabs(selected="dream"),
                    *form]

        train.to_dream.click(cell_to_dream, [*train.picked, dream.form[0]],
                             [dream.model, dream.seeds, dream.run, tabs, *dream.form], api_visibility="private")
        # the log box scrolls to its newest line on change; one filled while the tab was hidden does so when shown
        train_page.select(None, None, None, js=train_tab.LOG_TO_END, queue=False, api_visibility="private")
        # Sets made since the page loaded (Dream's "Add selected to training set") appear in Train's list
        train_page.select(train.shown, train.shown_inputs, train.shown_outputs, api_visibility="private")
        for ev in train.events:  # a finished run's checkpoints appear in Dream's pickers
            ev.then(lambda: dream_tab.refresh_pickers(studio), None, [dream.model, dream.run],
                    api_visibility="private")

        def on_load():
            # Lists only (models, runs, sets), never a value: on a busy machine this answer comes late,
            # after the visitor may have picked a preset or ticked Unlock. The forms hold their presets'
            # values and locks from the build (tests/test_page_load.py).
            return [*dream_tab.refresh_pickers(studio), *dream.init(), *train.init(), *enlarge.init()]

        demo.load(on_load, None, [dream.model, dream.run, *dream.init_outputs, *train.init_outputs,
                                  *enlarge.init_outputs], api_visibility="private", show_progress="hidden")
    return demo


def launch(demo: gr.Blocks, studio: Studio, *, host: str = "127.0.0.1", port: int | None = None,
           share: bool = False, auth: list[tuple[str, str]] | None = None, prevent_thread_lock: bool = False,
           quiet: bool = False):
    """Queue and serve: one GPU queue, files only from outputs/ and models/, uploads capped.

    Gradio's own start-up lines are silenced (its "set `share=True` in `launch()`" contradicts
    ``--share``/``--auth``); unless ``quiet``, Dreamy prints its own: the address and how to share."""
    demo.queue(default_concurrency_limit=2, max_size=studio.max_queue)
    forget_estimates(demo)
    result = demo.launch(
        server_name=host, server_port=port, share=share, auth=auth or None,
        allowed_paths=[str(studio.outputs.resolve()), str(studio.models.resolve())],
        max_file_size=studio.max_file_size,
        run_history=not studio.shared,  # a shared link keeps no visitor's runs in their browser
        footer_links=["api", "settings"],
        prevent_thread_lock=True, quiet=True, show_error=False, css=CSS,
        auth_message="Sign in to this Dreamy studio." if auth else None,
    )
    if not quiet:
        print(address_lines(result[1], result[2], host, bool(auth)), flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return result


def address_lines(local_url: str, share_url: str | None, host: str, signed_in: bool) -> str:
    """What Dreamy prints once the studio listens: where it is, and how to share it (with sign-in)."""
    lines = [f"dreamy: the studio is at {local_url}" + ("" if is_loopback(host) else f" (listening on {host})")]
    if share_url:
        lines.append(f"dreamy: public link {share_url}" + (" (sign-in required)" if signed_in else " (open to anyone)"))
    elif is_loopback(host):
        lines.append("dreamy: only this machine can open it; for a public link: python app.py --share "
                     "--auth USER:PASSWORD (or --auth-file FILE)")
    return "\n".join(lines)


def forget_estimates(demo: gr.Blocks) -> None:
    """No ETA from Gradio's queue: it is the mean time of the same event's earlier runs (of a stream:
    until its first picture), whatever each run asked for, so a 100-seed dream showed the 4-seed
    dream's time. Jobs say their own time left from their own pace (Dream's progress line, Train's
    status). Gradio (6.x) sends an estimate only for events in this table; with none listed it shows
    the elapsed time alone, and the queue position as before."""

    class NoEstimates(dict):
        def __missing__(self, fn):  # the queue still records each run's time: kept nowhere
            from gradio.queueing import ProcessTime

            return ProcessTime()

        def __contains__(self, fn) -> bool:
            return False

    queue = getattr(demo, "_queue", None)
    if queue is not None and isinstance(getattr(queue, "process_time_per_fn", None), dict):
        queue.process_time_per_fn = NoEstimates()


def read_auth(pairs: Sequence[str], auth_file: str | None) -> list[tuple[str, str]]:
    """user:pass pairs from --auth and from a file (one per line; # comments)."""
    lines = list(pairs)
    if auth_file:
        try:
            lines += [x.strip() for x in Path(auth_file).read_text(encoding="utf-8").splitlines()
                      if x.strip() and not x.lstrip().startswith("#")]
        except OSError as e:
            raise SystemExit(f"Cannot read the auth file {auth_file}: {e.strerror or e}.") from None
    out = []
    for line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user or len(password) < 8:
            raise SystemExit("Each sign-in must be user:password with a password of 8 characters or more.")
        out.append((user, password))
    return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(share: bool, host: str, auth: list, insecure: bool) -> str | None:
    """Why the studio must not start as asked, or None."""
    if insecure or auth:
        return None
    if share:
        return ("--share makes the studio public: add --auth user:password (or --auth-file FILE), "
                "or pass --insecure-share if you really want an open link.")
    if not is_loopback(host):
        return (f"--host {host} opens the studio to the network: add --auth user:password (or --auth-file FILE), "
                "or pass --insecure-share if you really want it open.")
    return None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Dreamy studio")
    p.add_argument("--model", default=None, help="model to start on (default: $DREAMY_MODEL, else Stable Diffusion "
                   "1.5, downloaded once when it is not cached (~4.3 GB); offline, the tiny demo)")
    p.add_argument("--host", default=None, help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="a public gradio.live link (needs --auth)")
    p.add_argument("--auth", action="append", default=[], metavar="USER:PASS", help="a sign-in (repeatable)")
    p.add_argument("--auth-file", default=None, help="a file of user:password lines (keeps them out of `ps`)")
    p.add_argument("--insecure-share", action="store_true", help="allow --share or --host without sign-in")
    p.add_argument("--max-queue", type=int, default=64, help="jobs waiting at most; more are refused")
    return p.parse_args(argv)


def preload() -> None:
    """Import the engines (torch, diffusers, transformers: ~17 s cold on the GPU image) while SD 1.5
    downloads, so the first job does not pay for them. Failures are left for that job to report."""
    try:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextModel  # noqa: F401

        import dreamy.dreaming.dreams  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is reported by the job that needs it
        pass


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    auth = read_auth(args.auth, args.auth_file)
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    on_space = bool(os.environ.get("SPACE_ID"))  # a Hugging Face Space: its own settings decide who may visit
    problem = None if on_space else exposure_problem(args.share, host, auth, args.insecure_share)
    if problem:
        print(f"dreamy: {problem}", file=sys.stderr)
        raise SystemExit(2)
    shared = on_space or args.share or not is_loopback(host)
    engines = threading.Thread(target=preload, name="dreamy-preload", daemon=True)
    engines.start()  # imports while SD 1.5 downloads
    model = args.model or starting_model(note=lambda line: print(f"dreamy: {line}", flush=True))
    # Built only once the imports are done: diffusers' lazy module is not safe to import from two threads
    # at once (the page's build reads its schedulers; on a 2-core machine it crashed every start).
    engines.join()
    if shared:  # what the studio needs is fetched above; its visitors must not fill the disk
        hub.turn_off_downloads("a shared studio")
    if os.environ.get("SPACES_ZERO_GPU"):  # ZeroGPU wants weights loaded at start; @spaces.GPU only computes
        from dreamy.models.sources import cached_model

        cached_model(model)
    studio = Studio(default_model=model, outputs=outputs_root(), models=models_root(), shared=shared,
                    extra_models=(model,), prompt_model=os.environ.get("DREAMY_PROMPT_MODEL") or None,
                    max_queue=args.max_queue)
    launch(build(studio), studio, host=host, port=args.port, share=args.share, auth=auth)


if __name__ == "__main__":
    main()
