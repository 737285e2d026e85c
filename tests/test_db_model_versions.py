"""`idglow models add|list|remove|default` on a real SQLite store, and YAML booleans in training options."""

from __future__ import annotations

import pytest
from store_fixtures import make_store

from annotation.commands import main as cli_main
from annotation.store.model_versions import default_model_version, list_model_versions
from idglow.training.config import DPOConfig, SFTConfig


def _adapter(folder):
    from idglow.testing import tiny_pipeline

    tiny_pipeline(seed=0).adapter.save_pretrained(str(folder))
    return folder


def test_models_list_remove_default(tmp_path, capsys):
    store = make_store(tmp_path / "dd")
    db = ["--db", store.url]
    adapter = _adapter(tmp_path / "adapter")
    assert cli_main(["models", "add", "v1", "--adapter", str(adapter), *db]) == 0
    assert cli_main(["models", "add", "v2", *db]) == 0
    capsys.readouterr()
    assert cli_main(["models", "list", *db]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["v1", "v2"]
    assert str(adapter.resolve()) in listed[0]

    assert cli_main(["models", "default", "v2", *db]) == 0
    assert cli_main(["models", "default", "v1", *db]) == 0  # only one default at a time
    with store.sessions() as s:
        assert default_model_version(s) == "v1"
        assert [v.is_default for v in list_model_versions(s)] == [True, False]
    capsys.readouterr()
    assert cli_main(["models", "list", *db]) == 0
    assert "(default)" in capsys.readouterr().out.splitlines()[0]

    assert cli_main(["models", "remove", "v2", *db]) == 0
    assert cli_main(["models", "remove", "v2", *db]) == 2
    assert "unknown model version 'v2'" in capsys.readouterr().err
    with store.sessions() as s:
        assert [v.name for v in list_model_versions(s)] == ["v1"]


def test_a_version_with_generations_is_not_removed(tmp_path, capsys):
    from annotation.store.demo import seed_demo_data

    store = make_store(tmp_path / "dd")
    with store.sessions() as s:
        seed_demo_data(s, store.data_dir, candidates=6, votes=2, annotators=1)
    assert cli_main(["models", "remove", "demo-base", "--db", store.url]) == 2
    assert "generation(s)" in capsys.readouterr().err


@pytest.mark.parametrize("cls", [SFTConfig, DPOConfig])
def test_mixed_precision_no_is_not_read_as_a_yaml_boolean(cls):
    assert cls.from_yaml(None, ["mixed_precision=no", "train_data=x"]).mixed_precision == "no"
    assert cls.from_yaml(None, ["mixed_precision=bf16", "train_data=x"]).mixed_precision == "bf16"
    with pytest.raises(ValueError, match="mixed_precision"):
        cls.from_yaml(None, ["mixed_precision=yes", "train_data=x"])


def test_the_app_offers_the_default_version_first_and_skips_missing_adapters(tmp_path):
    import shutil

    from annotation.generation.service import GenerationService
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.testing import tiny_pipeline

    store = make_store(tmp_path / "dd")
    db = ["--db", store.url]
    service = GenerationService(tiny_pipeline(seed=0, face_analyzer=DlibAnalyzer()), store.sessions,
                                store.data_dir, base_version="base")
    service.ensure_base_version()
    assert cli_main(["models", "add", "v1", "--adapter", str(_adapter(tmp_path / "a1")), *db]) == 0
    assert cli_main(["models", "add", "v2", "--adapter", str(_adapter(tmp_path / "a2")), *db]) == 0
    assert service.model_versions() == ["base", "v1", "v2"]
    assert cli_main(["models", "default", "v2", *db]) == 0
    assert service.model_versions() == ["v2", "base", "v1"]  # read from the database: no restart needed here
    shutil.rmtree(tmp_path / "a2")
    assert service.model_versions() == ["base", "v1"]  # a version whose adapter folder is gone is not served
