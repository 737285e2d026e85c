"""The ``idglow`` command explains itself: every command has a description, every option a help text that shows
its default, the app's commands say which extra to install when it is missing, and no command prints
transformers' torchvision fallback warnings."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from annotation.commands import COMMANDS
from annotation.commands import register as register_store_commands
from idglow.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser, help of the command in its parent's list) for the parser and every sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert listed.get(name), f"idglow {' '.join((*path, name))} has no help in its parent's list"
                yield from walk(sub, (*path, name))


def every_command():
    return list(walk(build_parser(extra=[register_store_commands])))


def test_the_walk_sees_every_command():
    names = {" ".join(path) for path, _ in every_command()}
    expected = {"generate", "samples", "faces", "score", "prompt", "eval", "train sft", "train dpo", "data build-sft",
                "serve", "db upgrade", "users add", "models add", "models list", "export", "demo-data",
                "train-from-db"}
    assert expected <= names, expected - names


def test_every_command_has_a_description_and_every_option_help_text():
    problems = []
    for path, parser in every_command():
        command = "idglow " + " ".join(path)
        if path and not (parser.description or "").strip():
            problems.append(f"{command}: no description")
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip():
                problems.append(f"{command} {name}: no help text")
    assert problems == []


def test_every_option_with_a_default_shows_it():
    problems = []
    for path, parser in every_command():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.default in (None, [], "", argparse.SUPPRESS):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text.lower():
                problems.append(f"idglow {' '.join(path)} {action.option_strings[0]}: {text!r}")
    assert problems == []


@pytest.mark.parametrize("argv,shown", [
    (["export"], ["file format of the rows (default: parquet)", "drop (default: half)",
                  "only comparisons with at least N votes (default: 1)"]),
    (["demo-data"], ["candidate images to generate (default: 200)", "votes to cast", "(default: 1000)"]),
    (["generate"], ["--num-images N", "seed+1, ... (default: 1)"]),
    (["models", "add"], ["--base-model", "recorded for reference", "--notes TEXT"]),
    (["samples"], ["Write sample portraits"]),
    (["train-from-db"], ["Export the preference store with images"]),
])
def test_help_pages_read_as_written(argv, shown, capsys):
    parser = build_parser(extra=[register_store_commands])
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    page = " ".join(capsys.readouterr().out.split())
    for text in shown:
        assert text in page, page


def test_train_sft_has_no_dpo_face_options(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "sft", "--help"])
    sft = capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "dpo", "--help"])
    dpo = capsys.readouterr().out
    assert "--faces" not in sft and "DPO:" not in sft
    assert "--faces" in dpo


# A stand-in for an install without the app extra: these modules cannot be imported (as if absent).
BLOCKER = textwrap.dedent("""
    import importlib.abc
    import os
    import sys

    BLOCKED = set(os.environ["IDGLOW_TEST_BLOCK"].split(","))

    class _Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Absent())
""")


def idglow(tmp_path: Path, *argv: str, block: str = "") -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "IDGLOW_TEST_BLOCK": block,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "idglow", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_the_blocker_hides_the_modules(tmp_path):
    idglow(tmp_path, "--version")  # writes the site folder
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "IDGLOW_TEST_BLOCK": "sqlalchemy,gradio"}
    code = "import importlib\nfor m in ('sqlalchemy', 'gradio', 'yaml'):\n    try:\n        importlib.import_module(m)\n" \
           "        print(m, 'present')\n    except ModuleNotFoundError:\n        print(m, 'absent')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stdout
    assert out.split("\n")[:3] == ["sqlalchemy absent", "gradio absent", "yaml present"]


def test_without_the_app_extra_help_lists_the_app_commands_with_what_to_install(tmp_path):
    installed = idglow(tmp_path, "--help")
    assert installed.returncode == 0 and "export" in installed.stdout
    assert "idglow[app]" not in installed.stdout  # positive control: with the extra, no install hint
    missing = idglow(tmp_path, "--help", block="sqlalchemy,gradio")
    assert missing.returncode == 0, missing.stderr
    page = " ".join(missing.stdout.split())
    for command, text in COMMANDS.items():
        assert f"{command} {text} [needs pip install 'idglow[app]']" in page, missing.stdout
    assert page.count("idglow[app]") == len(COMMANDS)
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("argv", [
    ["export", "--out", "prefs", "--with-images"],
    ["users", "add", "bob", "--role", "admin", "--password-stdin"],
    ["demo-data"],
    ["models", "list"],
])
def test_without_the_app_extra_an_app_command_says_what_to_install(tmp_path, argv):
    proc = idglow(tmp_path, *argv, block="sqlalchemy,gradio")
    assert proc.returncode == 2
    assert "needs sqlalchemy" in proc.stderr and "pip install 'idglow[app]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert not (tmp_path / "prefs").exists() and not (tmp_path / "data").exists()


def test_a_command_whose_extra_is_missing_names_it(tmp_path):
    proc = idglow(tmp_path, "serve", "--ray-address", "127.0.0.1:1", block="ray")
    assert proc.returncode == 2
    assert "`idglow serve` needs ray, which is not installed: pip install 'idglow[serve]'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_transformers_torchvision_fallback_is_not_printed(tmp_path, sample_portraits):
    probe = "import logging\nfrom transformers import CLIPImageProcessor, SiglipImageProcessor"
    control = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    if "requires torchvision" not in control.stderr:
        pytest.skip("transformers prints no torchvision fallback here (torchvision installed?)")
    proc = idglow(tmp_path, "generate", "--subject", str(sample_portraits["person1"]), "--steps", "2", "--seed", "1",
                  "--out", "out")
    assert proc.returncode == 0, proc.stderr
    assert "torchvision" not in proc.stderr, proc.stderr
