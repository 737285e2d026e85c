"""What a researcher meets first: the data dir found from the database URL, an export that leaves nothing
behind when it fails, stored identity embeddings carried to the DPO data path, an export summary."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from store_fixtures import make_store, pattern_image

from annotation.commands import main as cli_main
from annotation.store.demo import DemoReference, seed_demo_data
from annotation.store.export import export_preferences
from annotation.store.settings import resolve_data_dir
from idglow.errors import InputError
from idglow.training.files import PreferenceExportDataset


def _references(n: int = 4, dim: int = 128) -> list[DemoReference]:
    rng = np.random.default_rng(0)
    return [DemoReference(Image.fromarray(pattern_image(500 + i, 64)), [float(v) for v in rng.normal(size=dim)],
                          "dlib") for i in range(n)]


@pytest.fixture()
def store(tmp_path):
    st = make_store(tmp_path / "dd")
    with st.sessions() as s:
        seed_demo_data(s, st.data_dir, candidates=16, votes=40, annotators=3, seed=1, references=_references())
    return st


def test_data_dir_follows_the_sqlite_file(monkeypatch, tmp_path):
    monkeypatch.delenv("IDGLOW_DATA_DIR", raising=False)
    monkeypatch.delenv("IDGLOW_DB_URL", raising=False)
    assert resolve_data_dir(None, "sqlite:///dd/idglow.db") == resolve_data_dir(None, "sqlite:///dd/other.db")
    assert str(resolve_data_dir(None, "sqlite:///dd/idglow.db")) == "dd"
    assert str(resolve_data_dir(None, "postgresql+psycopg://u@h/db")) == "data"
    assert str(resolve_data_dir("given", "sqlite:///dd/idglow.db")) == "given"
    monkeypatch.setenv("IDGLOW_DB_URL", f"sqlite:///{tmp_path}/x/idglow.db")
    assert resolve_data_dir(None) == tmp_path / "x"


def test_cli_export_finds_the_images_beside_the_database(store, tmp_path, monkeypatch):
    monkeypatch.delenv("IDGLOW_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data does not exist here
    assert cli_main(["export", "--db", store.url, "--out", "exports/v1", "--with-images", "--quiet"]) == 0
    table = pq.read_table(tmp_path / "exports/v1/data/train.parquet")
    assert all(r is not None for r in table.column("jpg_0").to_pylist())


def test_a_failed_export_leaves_nothing_and_the_retry_works(store, tmp_path, capsys):
    out = tmp_path / "exports" / "v1"
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    rc = cli_main(["export", "--db", store.url, "--data-dir", str(wrong), "--out", str(out), "--with-images",
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(wrong.resolve()) in err and "--data-dir" in err  # says where it looked and how to change it
    assert list((tmp_path / "exports").iterdir()) == []  # no half-written folder, no temporary folder
    rc = cli_main(["export", "--db", store.url, "--data-dir", str(store.data_dir), "--out", str(out),
                   "--with-images", "--quiet"])
    assert rc == 0 and (out / "manifest.json").is_file()
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["v1"]


def test_export_carries_the_stored_embeddings_and_dpo_uses_them(store, tmp_path):
    refs = _references()
    with store.sessions() as s:
        export_preferences(s, tmp_path / "e", data_dir=store.data_dir, with_images=True)
    rows = pq.read_table(tmp_path / "e/data/train.parquet").to_pylist()
    assert rows
    known = {tuple(np.float32(r.embedding)) for r in refs}
    for row in rows:
        assert row["face_backend"] == "dlib"
        assert len(row["reference_embeddings"]) == row["num_subjects"]
        assert all(tuple(np.float32(e)) in known for e in row["reference_embeddings"])
    # no face analyzer at all: the stored embeddings are the identity inputs, nothing is detected again
    dataset = PreferenceExportDataset(tmp_path / "e", None, resolution=64, split="train")
    assert dataset.redetected == 0
    assert np.allclose(dataset[0]["id_embeds"], np.asarray(rows[0]["reference_embeddings"], dtype=np.float32))


def test_rows_without_stored_embeddings_need_an_analyzer(tmp_path):
    st = make_store(tmp_path / "plain")
    with st.sessions() as s:
        seed_demo_data(s, st.data_dir, candidates=8, votes=10, annotators=2, seed=2)
        export_preferences(s, tmp_path / "e", data_dir=st.data_dir, with_images=True)
    with pytest.raises(InputError, match="no identity embeddings"):
        PreferenceExportDataset(tmp_path / "e", None, resolution=64, split=None)


def test_export_summary_explains_votes_rows_ties_and_what_was_left_out(store, tmp_path):
    with store.sessions() as s:
        result = export_preferences(s, tmp_path / "e", tie_policy="drop", min_votes=2)
    rows = pq.read_table(tmp_path / "e/data").to_pylist() if result.rows else []
    assert result.rows == len(rows)
    assert result.votes == sum(r["num_votes"] for r in rows)
    assert result.both_bad == sum(not r["has_label"] for r in rows)
    assert result.ties == 0  # dropped by the policy …
    assert result.dropped.get("tie (tie policy drop)", 0) == result.dropped_ties
    assert any(k.startswith("gold item") for k in result.dropped)
    assert f"{result.votes} vote(s) on {result.rows} comparison(s)" in result.card
    assert (tmp_path / "e" / "README.md").read_text() == result.card


@pytest.mark.slow
def test_train_from_db_exports_to_a_temporary_folder_and_trains(store, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli_main(["train-from-db", "--db", store.url, "--set", "model=tiny", "--set", f"output_dir={out}",
                   "--set", "max_steps=1", "--set", "resolution=64", "--set", "mixed_precision=no",
                   "--set", "report_to=none", "--set", "split=train"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "rows from the database for training" in printed and "trained 1 steps" in printed
    assert (out / "adapter" / "config.json").is_file()


def test_the_app_stores_the_embeddings_it_generated_with_and_the_export_carries_them(tmp_path, sample_portraits):
    from annotation.generation.service import GenerationRequest, GenerationService
    from annotation.store.sampling import next_comparison
    from annotation.store.users import create_user
    from annotation.store.votes import VoteRequest, record_vote
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.images import decode_image
    from idglow.subjects import SubjectRef
    from idglow.testing import tiny_pipeline

    st = make_store(tmp_path / "app")
    pipe = tiny_pipeline(seed=0, face_analyzer=DlibAnalyzer())
    service = GenerationService(pipe, st.sessions, st.data_dir, base_version="base")
    service.ensure_base_version()
    portraits = [decode_image(sample_portraits["person1"]), decode_image(sample_portraits["person2"])]
    result = service.generate(GenerationRequest(
        subjects=[SubjectRef(p) for p in portraits], prompt="two friends", num_images=2, num_inference_steps=1,
        height=64, width=64, consent=True, seed=0, visitor_id="v1"))
    service.add_to_pool("v1", result.generation_ids)
    with st.sessions() as s:
        user = create_user(s, "ann", "annotate-pass-1", "annotator")
        served = next_comparison(s, user.id, gold_rate=0.0)
        record_vote(s, VoteRequest(comparison_id=served.comparison_id, user_id=user.id, overall="a",
                                   idempotency_key="k1"), group_commit=False)
        export_preferences(s, tmp_path / "e", data_dir=st.data_dir, with_images=True)
    row = pq.read_table(tmp_path / "e/data").to_pylist()[0]
    expected = pipe.encode_subjects([SubjectRef(p) for p in portraits]).numpy()
    assert row["face_backend"] == "dlib"
    assert np.allclose(np.asarray(row["reference_embeddings"]), expected, atol=1e-5)
    assert PreferenceExportDataset(tmp_path / "e", DlibAnalyzer(), resolution=64, split=None).redetected == 0
