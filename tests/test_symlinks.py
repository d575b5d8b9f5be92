"""Symbolic links planted inside the studio's own folders never let the core read or write outside them.

Issue #15: the HTTP layer refused links, but the core followed them. Each test plants one link (a
training set, a run, a run's export folder, a file inside a checkpoint, a job folder, the
training-sets folder), calls the API the way a visitor would, and checks that the call is refused
with one sentence and that nothing outside was read into a reply or written. Links that stay inside
the folders keep working. Loopback only, tiny model, 2 training steps at 64 px.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_app_api import SMALL, running_studio

from dreamy.errors import PathError

pytestmark = pytest.mark.timeout(600)

TRAIN = {"max_train_steps": 2, "checkpointing_steps": 2, "resolution": 64, "learning_rate": 1e-4,
         "train_batch_size": 1, "gradient_accumulation_steps": 1}


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (80, 72), (70 * i, 110, 190)).save(folder / f"p{i}.png")
    return folder


def _train(images: Path, name: str, models: Path) -> None:
    from dreamy.training import train

    for _ in train(images, name=name, base="tiny", overrides=TRAIN, unlock=True, models_dir=models, device="cpu",
                   validation={"width": 64, "height": 64, "steps": 2}):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("links")
    with running_studio(root) as (url, studio):
        _train(_photos(studio.training_sets / "subject"), "run", studio.models)
        yield url, studio, root


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    c = Client(served[0], verbose=False, download_files=str(served[2] / "downloads"))
    yield c
    c.close()


@pytest.fixture
def outside(tmp_path):
    """A folder elsewhere with a photo and a file of its own, to see whether anything reads or writes it."""
    folder = _photos(tmp_path / "elsewhere", 1)
    (folder / "secret.txt").write_text("not yours")
    return folder


def _untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["p0.png", "secret.txt"]


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target, target_is_directory=target.is_dir())
    return link


def test_a_training_set_that_is_a_link_out_is_neither_listed_nor_filled_nor_trained_on(client, served, outside,
                                                                                          tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    studio = served[1]
    link = _link(studio.training_sets / "linkset", outside)
    try:
        photo = tmp_path / "new.png"
        Image.new("RGB", (80, 80), "red").save(photo)
        with pytest.raises(AppError, match="symbolic link"):
            client.predict([handle_file(str(photo))], "linkset", 64, api_name="/add_photos")
        train_args = ("linkset", "tiny", "sweet-spot", "linkset-run", True, "full", 1e-4, 2, 2, 64, 1, 1,
                      "a photo of sks person", "", "0", 64, 64, 2)
        with pytest.raises(AppError, match="symbolic link") as refused:
            client.predict(*train_args, api_name="/train")
        assert "p0.png" not in str(refused.value)
        _untouched(outside)
        assert not (studio.models / "linkset-run").exists()
        from dreamy.training.sets import list_training_sets

        assert list_training_sets(studio.training_sets) == ["subject"]
    finally:
        link.unlink()


def test_a_photo_inside_a_set_that_links_out_refuses_the_set(served, outside):
    from dreamy.training.sets import training_set_report

    studio = served[1]
    link = _link(studio.training_sets / "subject" / "borrowed.png", outside / "p0.png")
    try:
        with pytest.raises(PathError, match="borrowed.png' is a symbolic link that leads outside"):
            training_set_report(studio.training_sets, "subject", 64)
    finally:
        link.unlink()


def test_a_run_name_that_is_a_link_out_writes_nothing_and_reveals_nothing(client, served, outside):
    from gradio_client.exceptions import AppError

    studio = served[1]
    shutil.copytree(studio.models / "run", outside / "a-run")  # a real run lies behind the link
    link = _link(studio.models / "linkrun", outside)
    try:
        for endpoint in ("/train", "/resume_train"):
            train_args = ("subject", "tiny", "sweet-spot", "linkrun", True, "full", 1e-4, 2, 2, 64, 1, 1,
                          "a photo of sks person", "", "0", 64, 64, 2)
            with pytest.raises(AppError, match="symbolic link") as refused:
                client.predict(*train_args, api_name=endpoint)
            assert "checkpoint" not in str(refused.value)
        assert sorted(p.name for p in outside.iterdir()) == ["a-run", "p0.png", "secret.txt"]
        from dreamy.layout import model_choices, runs

        assert [label for label, _ in runs(studio.models)] == ["run (1 checkpoints, last step 2)"]
        assert not any("linkrun" in label for label, _ in model_choices(studio.models, []))
    finally:
        link.unlink()


def test_an_export_folder_that_is_a_link_out_is_refused(client, served, outside):
    from gradio_client.exceptions import AppError

    run = served[1].models / "run"
    link = _link(run / "export", outside)
    try:
        with pytest.raises(AppError, match="symbolic link"):
            client.predict("run", "", "single-file,card", api_name="/export")
        _untouched(outside)
    finally:
        link.unlink()


def test_a_checkpoint_file_that_links_out_is_not_loaded(client, served, tmp_path):
    from gradio_client.exceptions import AppError

    step = served[1].models / "run" / "checkpoints" / "step-0002"
    elsewhere = tmp_path / "unet"
    shutil.copytree(step / "unet", elsewhere)  # the same weights: only where they lie differs
    shutil.rmtree(step / "unet")
    _link(step / "unet", elsewhere)
    try:
        with pytest.raises(AppError, match="unet' is a symbolic link"):
            client.predict(str(step), "biased-dreams", "0", True, 1, *SMALL.values(), api_name="/dream")
        with pytest.raises(AppError, match="unet' is a symbolic link"):
            client.predict(str(step.parent.parent), "all", "biased-dreams", "0", True, *SMALL.values(),
                           api_name="/checkpoint_grid")
        with pytest.raises(AppError, match="symbolic link"):
            client.predict("run", "", "single-file,card", api_name="/export")
    finally:
        (step / "unet").unlink()
        shutil.copytree(elsewhere, step / "unet")


def test_links_that_stay_inside_keep_working(client, served):
    studio = served[1]
    alias = _link(studio.models / "alias", studio.models / "run")  # a second name for a run, inside models/
    try:
        gallery, *_ = client.predict(str(alias / "checkpoints" / "step-0002"), "biased-dreams", "0", True, 1,
                                     *SMALL.values(), api_name="/dream")
        assert len(gallery) == 1
    finally:
        alias.unlink()


def test_job_folders_and_the_training_sets_folder_that_link_out_are_refused(client, served, outside, tmp_path):
    from gradio_client.exceptions import AppError

    studio = served[1]
    dream_jobs = studio.outputs / "dream"
    kept = tmp_path / "dream-jobs"
    if dream_jobs.exists():
        dream_jobs.rename(kept)
    _link(dream_jobs, outside)
    try:
        with pytest.raises(AppError, match="symbolic link"):
            client.predict("tiny", "biased-dreams", "0", True, 1, *SMALL.values(), api_name="/dream")
        _untouched(outside)
    finally:
        dream_jobs.unlink()
        if kept.exists():
            kept.rename(dream_jobs)
    sets = studio.training_sets
    sets.rename(tmp_path / "sets")
    _link(sets, outside)
    try:
        with pytest.raises(AppError, match="training-sets folder .* symbolic link"):
            client.predict([], "subject", 64, api_name="/add_photos")
        _untouched(outside)
    finally:
        sets.unlink()
        (tmp_path / "sets").rename(sets)


def test_core_path_checks(tmp_path, outside):
    """The same rules without the studio: a run name, a set name, a model path and a job folder."""
    from dreamy.layout import claim_run_dir
    from dreamy.paths import check_model_source, check_tree
    from dreamy.training.runs import run_dir_for

    models = tmp_path / "models"
    models.mkdir()
    _link(models / "out", outside)
    with pytest.raises(PathError, match="leads outside .* through a symbolic link"):
        run_dir_for("out", models)
    with pytest.raises(PathError, match="leads outside .* through a symbolic link"):
        check_model_source(str(models / "out"), [models])
    (models / "ok").mkdir()
    _link(models / "ok" / "loop", models / "ok")  # a link loop inside: checked once, not forever
    assert check_tree(models / "ok", [models]) == (models / "ok").resolve()
    _link(models / "ok" / "deep", outside / "p0.png")
    with pytest.raises(PathError, match="deep' is a symbolic link"):
        run_dir_for("ok", models)
    _link(models / "jobs-out", outside / "not-yet")  # a dangling link: nothing may be made at its end
    with pytest.raises(PathError, match="symbolic link"):
        claim_run_dir(models, "jobs-out")
    _untouched(outside)
    linked_root = _link(tmp_path / "models-on-another-disk", models)  # the root itself may be a link
    assert run_dir_for("new-run", linked_root) == linked_root / "new-run"
