"""The Research tab's words on a real store: export summary, command for the download, leaderboard columns,
agreement guide and small-sample warnings."""

from __future__ import annotations

import shlex
import shutil
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from store_fixtures import make_store

from annotation.store.demo import seed_demo_data
from annotation.store.research import ExportFilters, ResearchService
from annotation.store.users import get_user_by_name
from annotation.ui.research_handlers import (
    MIN_GOLD_VOTES,
    agreement_table,
    annotator_table,
    export_status,
    leaderboard_table,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("research"))
    with store.sessions() as s:
        seed_demo_data(s, store.data_dir, candidates=24, votes=80, annotators=3, seed=3, gold_rate=0.05)
    return ResearchService(store.sessions, store.data_dir), store


def test_export_summary_matches_the_files(service):
    research, store = service
    with store.sessions() as s:
        uid = get_user_by_name(s, "researcher").id
    download = research.export(uid, ExportFilters(with_images=True, min_votes=3))
    rows = pq.read_table(download.out_dir / "data").to_pylist()
    result = download.result
    text = export_status(download)
    assert f"**Exported {len(rows)} row(s)**" in text
    votes = sum(r["num_votes"] for r in rows)
    assert f"**{votes}** vote(s) on **{len(rows)}** comparison(s)" in text
    assert f"the store holds {research.counts()['votes']} votes in all" in text
    ties = sum(r["label_0"] == 0.5 for r in rows)
    assert f"Ties: **{ties}** row(s) kept with labels 0.5/0.5" in text
    assert f"Both bad: **{sum(not r['has_label'] for r in rows)}** row(s)" in text
    for reason, n in result.dropped.items():
        assert f"**{n}** comparison(s), {reason}" in text
    assert "fewer than 3 vote(s)" in " ".join(result.dropped)
    for split, n in result.rows_per_split.items():
        assert f"{split} **{n}**" in text
    assert "Dataset card" in text and "# IdGlow group preferences" in text and "config_name" not in text


def test_training_command_uses_relative_paths_that_work_after_unzipping(service, tmp_path):
    research, store = service
    with store.sessions() as s:
        uid = get_user_by_name(s, "researcher").id
    download = research.export(uid, ExportFilters(with_images=True))
    lines = download.command.splitlines()
    assert lines[0] == f"unzip {download.archive.name} -d {download.archive.stem}"
    for line in lines:
        assert str(store.data_dir) not in line and not any(a.startswith("/") for a in shlex.split(line))
    # do what the first line says, then read train_data as the trainer does
    zipfile.ZipFile(download.archive).extractall(tmp_path / download.archive.stem)
    train_data = next(a.split("=", 1)[1] for a in shlex.split(lines[1]) if a.startswith("train_data="))
    from idglow.training.files import _export_files

    assert _export_files(tmp_path / train_data)


def test_leaderboard_columns_and_guide(service):
    research, _ = service
    board = research.leaderboard()
    table, notes = leaderboard_table(board)
    assert table["headers"][:5] == ["model", "votes", "win rate", "score", "95% interval"]
    for row, r in zip(table["data"], board.rows):
        assert row[1] == int(r.wins + r.losses + r.ties)
        assert row[2] == f"{(r.wins + 0.5 * r.ties) / row[1]:.0%}"
    assert board.last_vote_at is not None and board.last_vote_at.strftime("%Y-%m-%d %H:%M UTC") in notes
    assert "How to read it" in notes


def test_small_sample_warnings(service):
    research, _ = service
    stats = research.annotator_stats()
    table, notes = annotator_table(stats)
    few = [s for s in stats if 0 < s.gold_votes < MIN_GOLD_VOTES]
    assert few, "the demo store should hold annotators with a few gold votes"
    row = next(r for r in table["data"] if r[0] == few[0].username)
    assert row[4].endswith(f"⚠ n={few[0].gold_votes}")
    assert few[0].username in notes and "too few" in notes
    agreements = list(research.agreement().values())
    _, guide = agreement_table(agreements)
    assert "How to read α" in guide
    if any(a.alpha is not None and a.units < 20 for a in agreements):
        assert "rough estimate" in guide


def test_the_shown_training_command_trains_on_the_demo_model(tmp_path):
    """The commands the Research page shows for the tiny demo model run as shown in a checkout: unzip the
    download, train DPO on it (README's tiny-model flags), and leave an adapter to register."""
    import os
    import subprocess
    import sys

    from annotation.store.demo import demo_references, tiny_model_images
    from idglow.faces.dlib_backend import DlibAnalyzer

    store = make_store(tmp_path / "store")
    with store.sessions() as s:  # as `idglow demo-data` makes it: the people's faces are real portraits
        seed_demo_data(s, store.data_dir, candidates=8, votes=12, annotators=2, seed=3, gold_rate=0.0,
                       images=tiny_model_images(8, 3), references=demo_references(DlibAnalyzer()))
        uid = get_user_by_name(s, "researcher").id
    research = ResearchService(store.sessions, store.data_dir)
    download = research.export(uid, ExportFilters(with_images=True))
    unzip, train, register = download.command.splitlines()
    assert "--set model=tiny" in train and "idglow models add" in register
    tmp_path = tmp_path / "checkout"
    tmp_path.mkdir()
    shutil.copy(download.archive, tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for line in (unzip, train):
        args = shlex.split(line)
        args = [sys.executable, "-m", "idglow", *args[1:]] if args[0] == "idglow" else args
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    adapter = shlex.split(register)[-1]
    assert (tmp_path / adapter).is_dir() and any((tmp_path / adapter).iterdir())
