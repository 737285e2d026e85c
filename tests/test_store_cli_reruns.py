"""The preference-store commands of README's tiny-model walk-through can be run again: demo-data leaves a store
with demo data as it is (unless --more), export and models add replace their earlier result with --overwrite,
and models list says which version the app offers first."""

from __future__ import annotations

import pytest

from annotation.commands import main
from annotation.store.model_versions import list_model_versions
from idglow.tiny import tiny_adapter, tiny_components

DEMO = ["demo-data", "--candidates", "8", "--votes", "12", "--annotators", "2", "--images", "pattern"]


def idglow(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    tiny_adapter(tiny_components(0)["transformer"]).save_pretrained(str(folder))
    return folder


def generations(data):
    from annotation.store.database import make_store

    store = make_store(data)
    try:
        with store.sessions() as session:
            return {v.name: v.generations for v in list_model_versions(session)}
    finally:
        store.engine.dispose()


def test_demo_data_twice_adds_nothing_the_second_time(tmp_path, capsys):
    data = tmp_path / "demo"
    code, first, err = idglow(capsys, *DEMO, "--data-dir", str(data))
    assert code == 0, err
    seeded = generations(data)
    assert sum(seeded.values()) > 0 and "true model order" in first
    code, second, _ = idglow(capsys, *DEMO, "--data-dir", str(data))
    assert code == 0
    assert "demo data already in this store" in second and "password: demo-password" in second
    assert generations(data) == seeded
    code, _, _ = idglow(capsys, *DEMO, "--data-dir", str(data), "--more")
    assert code == 0
    assert sum(generations(data).values()) > sum(seeded.values())  # control: --more does add


def test_export_and_models_add_rerun_with_overwrite(tmp_path, capsys, adapter):
    data = tmp_path / "demo"
    assert idglow(capsys, *DEMO, "--data-dir", str(data))[0] == 0
    db = f"sqlite:///{data / 'idglow.db'}"
    export = ["export", "--db", db, "--out", str(tmp_path / "exports"), "--format", "jsonl", "--quiet"]
    assert idglow(capsys, *export)[0] == 0
    code, _, err = idglow(capsys, *export)
    assert code == 2 and "is not empty" in err
    code, out, err = idglow(capsys, *export, "--overwrite")
    assert code == 0, err
    assert (tmp_path / "exports" / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if "replaced" in p.name]

    add = ["models", "add", "dpo-v1", "--adapter", str(adapter), "--db", db]
    assert idglow(capsys, *add)[0] == 0
    code, _, err = idglow(capsys, *add)
    assert code == 2 and "already exists" in err
    code, out, err = idglow(capsys, *add, "--overwrite", "--notes", "second run")
    assert code == 0 and "replaced model version dpo-v1" in out, err
    # a version with generations is never replaced
    code, _, err = idglow(capsys, "models", "add", "demo-base", "--db", db, "--overwrite")
    assert code == 2 and "generations" in err


def test_models_list_says_which_version_is_offered_first(tmp_path, capsys, adapter):
    db = f"sqlite:///{tmp_path / 'idglow.db'}"
    assert idglow(capsys, "models", "add", "sft-v1", "--adapter", str(adapter), "--db", db)[0] == 0
    code, out, err = idglow(capsys, "models", "list", "--db", db)
    assert code == 0 and "no default set" in err and "(default)" not in out
    assert idglow(capsys, "models", "default", "sft-v1", "--db", db)[0] == 0
    code, out, err = idglow(capsys, "models", "list", "--db", db)
    assert "sft-v1 (default)" in out and "no default set" not in err
