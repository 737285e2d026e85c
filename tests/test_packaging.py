"""Packaging: pyproject.toml declares what the code imports, and requirements.txt pins every declared package."""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"idglow", "annotation", "db", "benchmarks", "tests", "app"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]).lower()


def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: {_name(r) for r in reqs if not _name(r) == "idglow"} for group, reqs in groups.items()}


def _pinned(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not an exact pin"
            pins[_name(name)] = version
    return pins


def _imports(folder: Path) -> dict[str, str]:
    """Top-level third-party modules imported anywhere under ``folder`` (also inside functions) → a file."""
    found = {}
    for path in sorted(folder.rglob("*.py")) if folder.is_dir() else [folder]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in LOCAL and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@functools.cache
def _top_level_modules() -> dict[str, set[str]]:
    """Top-level module → the distributions that install it, read from their file lists (some wheels'
    top_level.txt omits the package they ship)."""
    index: dict[str, set[str]] = {}
    for dist in md.distributions():
        for f in dist.files or []:
            parts = Path(str(f)).parts
            if len(parts) == 2 and parts[1] == "__init__.py" or len(parts) == 1 and parts[0].endswith(".py"):
                index.setdefault(Path(parts[0]).stem, set()).add(_name(dist.metadata["Name"]))
    for module, dists in md.packages_distributions().items():
        index.setdefault(module, set()).update(_name(d) for d in dists)
    return index


def _installed_by(module: str) -> set[str]:
    return _top_level_modules().get(module, set())


def _check(folders: list[str], allowed: set[str]) -> list[str]:
    problems = []
    for module, where in {k: v for f in folders for k, v in _imports(ROOT / f).items()}.items():
        names = _installed_by(module)
        if not names & allowed:
            problems.append(f"{module} (imported in {where}; installed by {sorted(names) or 'nothing'})")
    return problems


def test_the_library_imports_only_core_training_and_serving_dependencies():
    declared = _declared()
    assert _check(["idglow"], declared["core"] | declared["train"] | declared["serve"]) == []


def test_the_app_imports_only_declared_dependencies():
    allowed = set().union(*_declared().values())
    assert _check(["annotation", "db", "app.py"], allowed) == []


def test_every_declared_dependency_is_pinned_and_every_pin_is_declared():
    declared = set().union(*_declared().values())
    pins = {**_pinned(ROOT / "requirements.txt"), **_pinned(ROOT / "requirements-dev.txt")}
    # psycopg[binary] installs psycopg-binary too; setuptools is pinned for face-recognition-models' pkg_resources
    assert declared - set(pins) == set()
    assert set(pins) - declared - {"psycopg-binary"} == set()


def test_face_recognition_itself_is_not_a_dependency():
    assert "face-recognition" not in set().union(*_declared().values())
