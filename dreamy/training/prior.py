"""Prior preservation's class images: a folder the user gives, topped up with images of the base model.

Missing images are generated before training, with the base model, the class image prompt (else the
class prompt), the class negative prompt and the preset's [dream] sampler, scheduler and prompt
syntax, each from its own seed, as ``class-NNNNN.png`` carrying its recipe; images already there are
reused, so a second run (or a resumed one) generates nothing. They are trained under the class prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..images import image_files
from ..models.sources import SDModel
from ..png.metadata import save_png
from ..recipes.presets import Preset
from ..recipes.recipe import resolve
from ..recipes.settings import TrainSettings
from .data import TrainingSet, derived_seed, prepare_images
from .validation import render_seeds


def class_folder(s: TrainSettings, run_dir: Path) -> Path:
    return Path(s.class_images_dir).expanduser() if s.class_images_dir else run_dir / "class-images"


def missing_class_images(s: TrainSettings, folder: Path) -> list[int]:
    have = len(image_files(folder)[0]) if folder.is_dir() else 0
    taken = {p.name for p in folder.glob("class-*.png")} if folder.is_dir() else set()
    out, i = [], 0
    while len(out) < s.num_class_images - have:
        if f"class-{i:05d}.png" not in taken:
            out.append(i)
        i += 1
    return out


def generate_class_images(
    model: SDModel, preset: Preset | str, s: TrainSettings, folder: Path, indices: list[int]
) -> Iterator[Path]:
    """Render the missing class images with the base model (live modules untouched), one by one."""
    recipe = resolve(preset, "dream", {
        "prompt": s.class_image_prompt or s.class_prompt, "negative_prompt": s.class_negative_prompt,
        "guidance": s.class_guidance, "steps": s.class_steps,
        "width": s.resolution, "height": s.resolution,
    }, unlock=True)
    recipe = recipe.replace(runtime={"class_image_for": "prior preservation"})
    for i in indices:
        seed = derived_seed(s.seed, "class-image", i) % 2**32
        for image, r in render_seeds(model, recipe, [seed]):
            yield save_png(image, folder / f"class-{i:05d}.png", r)


def load_class_images(s: TrainSettings, folder: Path) -> TrainingSet:
    files = image_files(folder)[0][: s.num_class_images]
    return prepare_images(files, resolution=s.resolution, prompt=s.class_prompt, crop=s.crop, what="class")
