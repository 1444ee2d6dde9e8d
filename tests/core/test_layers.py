"""The dependency rules of docs/architecture.md, checked on every import statement in vislib (function-level
imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

VISLIB = Path(__file__).resolve().parents[2] / "vislib"

# Each top-level part of vislib and its layer: a module may import from its own layer or a lower one.
LAYERS = {
    "errors": 0, "registry": 0, "params": 0, "io": 0, "preprocessing": 0, "runlog": 0, "losses": 0, "devices": 0,
    "cluster": 0, "stats": 0,
    "data": 1, "models": 1,
    "methods": 2, "featvis": 2, "lavise": 2, "metrics": 2, "training": 2, "pipeline": 2, "aggregate": 2,
    "figures": 2, "config": 2,
    "jobs": 3, "cli": 3, "catalog": 3,
}
# Dataset kinds' own modules: a dataset's constants belong to it, not to LaViSE or anything else above data.
DATASET_KIND_MODULES = {"vislib.data.synthetic", "vislib.data.coco", "vislib.data.vg", "vislib.data.imagenet",
                        "vislib.data.photos", "vislib.data.imagefolder", "vislib.data.cocofile", "vislib.data.csvfile",
                        "vislib.data.builtin"}


def module_name(path: Path, root: Path = VISLIB) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = VISLIB) -> set[str]:
    """Every module `path` imports, absolute names (relative imports resolved)."""
    names = set()
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


MODULES = sorted(VISLIB.rglob("*.py"))


def part(name: str) -> str:
    return name.split(".")[1]


def test_every_part_of_vislib_has_a_layer():
    assert {part(module_name(p)) for p in MODULES if module_name(p) != "vislib"} <= set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_follow_the_layers(path):
    name = module_name(path)
    if name == "vislib":
        return
    own = LAYERS[part(name)]
    for imported in imports_of(path):
        assert not imported.startswith("snakemake"), f"{name} imports snakemake"
        if not imported.startswith("vislib.") or part(imported) not in LAYERS:
            continue
        layer = LAYERS[part(imported)]
        assert layer <= own, f"{name} (layer {own}) imports {imported} (layer {layer})"
        if part(name) == "data":
            assert part(imported) != "models", f"{name}: vislib.data must not import vislib.models ({imported})"
        if part(name) == "config":
            assert part(imported) != "jobs", f"{name}: the config check must not import a job module ({imported})"
        if part(name) not in ("data", "jobs"):
            assert not any(imported == m or imported.startswith(m + ".") for m in DATASET_KIND_MODULES), (
                f"{name} imports the dataset module {imported}; read what it needs from the annotations instead")


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    module = tmp_path / "vislib" / "data" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from vislib.models import load\n    from . import dataset\n")
    found = imports_of(module, tmp_path / "vislib")
    assert {"vislib.models", "vislib.models.load", "vislib.data", "vislib.data.dataset"} <= found
