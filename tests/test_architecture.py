"""The house: the import graph flows one way (studio -> core -> files), the core never imports gradio,
the public API stays functions, and the README's Python example runs as written."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path

from conftest import REPO


def _modules() -> dict[str, Path]:
    """Every module of dreamy/, studio/ and app.py, by dotted name."""
    files = [*REPO.glob("dreamy/**/*.py"), *REPO.glob("studio/**/*.py"), REPO / "app.py"]
    out = {}
    for f in files:
        parts = f.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that ``name`` imports, lazy (function-level) imports included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, base] if base else head)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _package_of(name: str, modules: dict[str, Path]) -> str:
    return name if modules[name].name == "__init__.py" else name.rpartition(".")[0]


def test_no_import_circles():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # a submodule importing names from its own package's __init__ is how packages re-export: not a circle
        graph[name] = {m for m in _imports(name, path, modules)
                       if not (modules[m].name == "__init__.py" and name.startswith(m + "."))}
    assert _cycles(graph) == []


def test_the_core_never_imports_the_studio_or_gradio():
    modules = _modules()
    for name, path in modules.items():
        if not name.startswith("dreamy"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"gradio", "gradio_client", "studio", "app"} & set(roots), f"{name} imports {roots}"


def test_data_flows_one_way_between_packages():
    """Engines may use models/recipes/png and the shared modules, never each other's insides upwards:
    models/ and recipes/ know nothing of the engines, and no engine imports the CLI."""
    modules = _modules()
    lower = ("dreamy.models", "dreamy.recipes", "dreamy.png", "dreamy.layout", "dreamy.paths", "dreamy.errors",
             "dreamy.events", "dreamy.atomic", "dreamy.images")
    engines = ("dreamy.dreaming", "dreamy.training", "dreamy.enlarging")
    for name, path in modules.items():
        deps = _imports(name, path, modules)
        if name.startswith(lower):
            bad = sorted(d for d in deps if d.startswith((*engines, "dreamy.cli")))
            assert not bad, f"{name} (a lower layer) imports {bad}"
        if name.startswith(engines):
            assert not [d for d in deps if d.startswith("dreamy.cli")], name


def test_top_level_is_small_and_every_package_says_what_it_is_for():
    top = [p for p in (REPO / "dreamy").glob("*.py")]
    assert len(top) <= 12, sorted(p.name for p in top)
    for init in [*(REPO / "dreamy").glob("*/__init__.py"), *(REPO / "studio").glob("__init__.py"),
                 REPO / "dreamy" / "__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split(".")[0]) > 20, f"{init} has no docstring saying what it is for"


PUBLIC = ["dream", "dream_iter", "recall", "sweep", "train", "export", "enlarge", "load_model", "load_preset",
          "resolve", "parse_seeds"]


def test_public_api_names_stay_functions_after_every_module_is_imported():
    import dreamy

    before = {n: getattr(dreamy, n) for n in PUBLIC}
    for info in pkgutil.walk_packages(dreamy.__path__, "dreamy."):
        if info.name != "dreamy.__main__":
            importlib.import_module(info.name)
    for n in PUBLIC:
        assert callable(getattr(dreamy, n)) and not isinstance(getattr(dreamy, n), type(sys)), n
        assert getattr(dreamy, n) is before[n], n


def test_public_api_called_twice(tmp_path, tiny_model):
    import dreamy

    quick = {"steps": 2, "width": 64, "height": 64}
    for _ in range(2):
        assert dreamy.load_model("tiny", device="cpu").ref.kind == "tiny"
        first = dreamy.dream(tiny_model, "biased-dreams", "0", overrides=quick, unlock=True, out_dir=tmp_path / "d")
        assert len(first) == 1
        again = dreamy.recall(first[0].path, out_dir=tmp_path / "r")
        assert again.path.read_bytes() == first[0].path.read_bytes()
        result = dreamy.sweep("tiny", "biased-dreams", "0", tmp_path / "s", overrides=quick, unlock=True, device="cpu")
        assert result["images"]


def test_train_and_export_called_twice(tmp_path):
    """dreamy.train / dreamy.export stay the functions after the training package has been imported and used."""
    from PIL import Image

    import dreamy

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i + 40, 120, 200)).save(photos / f"{i}.png")
    quick = {"resolution": 64, "max_train_steps": 1, "checkpointing_steps": 1, "validation_seeds": ""}
    for i in range(2):
        events = list(dreamy.train(photos, name=f"twice{i}", base="tiny", models_dir=tmp_path / "models",
                                   overrides=quick, unlock=True))
        assert type(events[-1]).__name__ == "Finished"
        files = dreamy.export(events[-1].checkpoint, tmp_path / f"export{i}", formats=["card"])
        assert files


def _readme_python_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = _readme_python_block()
    exec(compile(code, "README.md (## Python)", "exec"), {"__name__": "readme_example"})
    assert sorted(p.name for p in (tmp_path / "out").glob("seed*.png"))
    assert list((tmp_path / "again").glob("*.png"))
    assert os.path.isdir(tmp_path / "out")
