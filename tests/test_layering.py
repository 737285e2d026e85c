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
    source = "def f():\n    if True:\n        from annotation.export import x\n    import db.engine\n"
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
