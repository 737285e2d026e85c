"""`idglow users add|list|set-role|activate|deactivate|reset-password` through the real command line, on a real
SQLite file, with the rules the app enforces (an admin must remain; a deactivated user cannot sign in)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.commands import main
from annotation.store.database import make_store
from annotation.store.errors import AuthenticationError
from annotation.store.users import authenticate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path):
    """The SQLite file of a fresh data folder, as the commands' --db URL."""
    store = make_store(tmp_path / "data")
    store.engine.dispose()
    return store


def idglow(db, capsys, monkeypatch, *argv, password=None):
    """(exit code, stdout, stderr) of ``idglow ARGV --db URL``; ``password`` is the first line of stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{password}\n" if password is not None else ""))
    try:
        code = main([*argv, "--db", db.url])
    except SystemExit as stop:  # argparse refusing an argument
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def listed(db, capsys, monkeypatch) -> dict[str, tuple[str, str]]:
    code, out, _ = idglow(db, capsys, monkeypatch, "users", "list")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    return {name: (role, status) for _, name, role, status in rows}


def signs_in(db, name: str, password: str) -> bool:
    with db.sessions() as session:
        try:
            authenticate(session, name, password)
            return True
        except AuthenticationError:
            return False


@pytest.fixture
def team(db, capsys, monkeypatch):
    for name, role in (("ada", "admin"), ("ann", "annotator")):
        code, _, _ = idglow(db, capsys, monkeypatch, "users", "add", name, "--role", role, "--password-stdin",
                            password=f"{name}-password")
        assert code == 0
    return db


def test_list_shows_every_user_with_role_and_status(team, capsys, monkeypatch):
    assert listed(team, capsys, monkeypatch) == {"ada": ("admin", "active"), "ann": ("annotator", "active")}


def test_set_role_changes_what_the_user_signs_in_as(team, capsys, monkeypatch):
    code, out, _ = idglow(team, capsys, monkeypatch, "users", "set-role", "ann", "researcher")
    assert code == 0 and "ann (researcher, active)" in out
    with team.sessions() as session:
        assert authenticate(session, "ann", "ann-password").role.value == "researcher"
    code, _, err = idglow(team, capsys, monkeypatch, "users", "set-role", "ann", "owner")
    assert code == 2 and "owner" in err  # not a role


def test_deactivate_stops_sign_in_and_activate_restores_it(team, capsys, monkeypatch):
    assert signs_in(team, "ann", "ann-password")
    assert idglow(team, capsys, monkeypatch, "users", "deactivate", "ann")[0] == 0
    assert not signs_in(team, "ann", "ann-password")
    assert listed(team, capsys, monkeypatch)["ann"] == ("annotator", "deactivated")
    assert idglow(team, capsys, monkeypatch, "users", "activate", "ann")[0] == 0
    assert signs_in(team, "ann", "ann-password")


def test_the_last_active_admin_can_be_neither_demoted_nor_deactivated(team, capsys, monkeypatch):
    for argv in (("deactivate", "ada"), ("set-role", "ada", "researcher")):
        code, _, err = idglow(team, capsys, monkeypatch, "users", *argv)
        assert code == 2 and "last active admin" in err
        assert listed(team, capsys, monkeypatch)["ada"] == ("admin", "active")
    # with a second admin, the first may go; then the second is the last one
    assert idglow(team, capsys, monkeypatch, "users", "set-role", "ann", "admin")[0] == 0
    assert idglow(team, capsys, monkeypatch, "users", "deactivate", "ada")[0] == 0
    code, _, err = idglow(team, capsys, monkeypatch, "users", "set-role", "ann", "annotator")
    assert code == 2 and "last active admin" in err
    assert idglow(team, capsys, monkeypatch, "users", "activate", "ada")[0] == 0
    assert idglow(team, capsys, monkeypatch, "users", "set-role", "ann", "annotator")[0] == 0
    assert listed(team, capsys, monkeypatch) == {"ada": ("admin", "active"), "ann": ("annotator", "active")}


def test_reset_password_replaces_the_old_one_under_the_same_rules(team, capsys, monkeypatch):
    code, _, err = idglow(team, capsys, monkeypatch, "users", "reset-password", "ann", "--password-stdin",
                          password="short")
    assert code == 2 and "too short" in err
    assert signs_in(team, "ann", "ann-password")
    code, out, _ = idglow(team, capsys, monkeypatch, "users", "reset-password", "ann", "--password-stdin",
                          password="a-brand-new-password")
    assert code == 0 and "ann" in out
    assert not signs_in(team, "ann", "ann-password") and signs_in(team, "ann", "a-brand-new-password")
    code, _, err = idglow(team, capsys, monkeypatch, "users", "reset-password", "nobody", "--password-stdin",
                          password="a-brand-new-password")
    assert code == 2 and "nobody" in err


def test_the_idglow_command_lists_users_in_its_own_process(team):
    """The installed ``idglow`` console command (its plugin loading, parser and exit codes), reading the same
    SQLite file."""
    command = Path(sys.executable).parent / "idglow"
    if not command.exists():
        pytest.skip("the idglow console command is not installed in this environment")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([command, "users", "list", "--db", team.url], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "ada" in run.stdout and "annotator" in run.stdout
    run = subprocess.run([command, "users", "deactivate", "ada", "--db", team.url], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "last active admin" in run.stderr
