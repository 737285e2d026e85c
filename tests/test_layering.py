"""One dependency direction: app.py → annotation → (db, idglow). The library and the database layer never
import what is above them, not even inside a function, and the app's commands reach `idglow` through the
`idglow.commands` entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "idglow": {"annotation", "db", "app", "gradio", "sqlalchemy", "alembic"},
    "db": {"annotation", "idglow", "app", "gradio"},
}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import statement, at any depth (functions, classes, branches)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return sorted(found)


def forbidden_imports(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path.read_text(encoding="utf-8")):
            if module in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_the_scan_sees_imports_inside_functions():
    source = "def f():\n    if True:\n        from annotation.store.export import x\n    import db.engine\n"
    assert imported_modules(source) == [(3, "annotation"), (4, "db")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    assert forbidden_imports(package) == []


def test_app_commands_are_declared_as_an_idglow_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    group = project["entry-points"]["idglow.commands"]
    module, _, attr = group["annotation"].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), attr))


def test_registered_plugins_appear_in_idglow_help(monkeypatch, capsys):
    """`idglow --help` lists the commands of every installed `idglow.commands` entry point."""
    import importlib.metadata as md

    from idglow import cli

    point = md.EntryPoint("annotation", "annotation.commands:register", cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(md, "entry_points", lambda group: [point] if group == cli.ENTRY_POINT_GROUP else [])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    for command in ("demo-data", "export", "models", "users", "train-from-db", "generate", "train"):
        assert command in listed
    monkeypatch.setattr(md, "entry_points", lambda group: [])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "demo-data" not in capsys.readouterr().out  # the library alone has no app commands


def test_a_broken_plugin_does_not_break_the_library_commands(monkeypatch, capsys):
    import importlib.metadata as md

    from idglow import cli

    point = md.EntryPoint("broken", "no_such_module_xyz:register", cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(md, "entry_points", lambda group: [point])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "generate" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ inside annotation/
LAYERS = {"store": 0, "privacy": 1, "generation": 2, "ui": 3}  # each imports only its own layer and those below
TOP = 4  # annotation.commands, annotation.crashcheck: the entry points, on top of everything


def annotation_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every ``annotation…`` module imported, at any depth; ``from annotation.x import y``
    counts as module ``annotation.x.y`` when that is a module, else ``annotation.x``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "annotation"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "annotation":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((node.lineno, full if _module_path(full) is not None else node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, "<relative import>"))
    return sorted(found)


def _module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package's own __init__: a docstring only
    return LAYERS.get(parts[1], TOP)


def _annotation_modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((ROOT / "annotation").rglob("*.py"))}


def layer_violations() -> list[str]:
    bad = []
    for module, path in _annotation_modules().items():
        for line, target in annotation_imports(path.read_text(encoding="utf-8")):
            if target == "<relative import>" or _layer(target) > _layer(module) or _layer(target) == TOP:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def annotation_graph() -> dict[str, set[str]]:
    """Module → the annotation modules it imports (at any depth; a package's ``__init__`` counts as the
    package)."""
    modules = _annotation_modules()
    return {m: {t for _, t in annotation_imports(p.read_text(encoding="utf-8")) if t in modules and t != m}
            for m, p in modules.items()}


def test_the_layer_scan_sees_imports_inside_functions_and_by_name():
    source = "def f():\n    from annotation.store import votes\n    import annotation.ui.blocks\n"
    assert annotation_imports(source) == [(2, "annotation.store.votes"), (3, "annotation.ui.blocks")]
    assert _layer("annotation.store.votes") < _layer("annotation.privacy.uploads") < _layer("annotation.ui.wiring")
    assert _layer("annotation.commands") == TOP


def test_annotation_layers_import_only_downward():
    """ui → generation → privacy → store, and nothing imports the entry points."""
    assert layer_violations() == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_annotation():
    graph = annotation_graph()
    assert len(graph) > 30  # the scan sees the package
    assert import_cycles(graph) == []


def test_fixtures_live_under_tests():
    assert not [p for p in (ROOT / "annotation").rglob("testing.py")]
