"""The bad-case loop: flags stored by annotators shape the app's next prompts and travel with the export."""

from __future__ import annotations

import json

import pytest

from annotation.generation.service import GenerationRequest, GenerationService
from idglow.images import decode_image
from idglow.prompting.badcases import FAILURE_CONSTRAINTS, Badcase, wrong_age_slots
from idglow.subjects import SubjectRef


@pytest.fixture(scope="module")
def pipe():
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.testing import tiny_pipeline

    return tiny_pipeline(face_analyzer=DlibAnalyzer())


def _service(pipe, store) -> GenerationService:
    service = GenerationService(pipe, store.sessions, store.data_dir, base_version="tiny-demo", default_steps=2,
                                default_size=64)
    service.ensure_base_version()
    return service


def _request(portraits, **kwargs) -> GenerationRequest:
    subjects = [SubjectRef(decode_image(portraits[n]), label=n) for n in ("person1", "person2")]
    return GenerationRequest(subjects=subjects, visitor_id="v1", consent=True, **{"seed": 3, "num_images": 1, **kwargs})


def _flag(store, candidate_id: int, types: list[str], note: str = "") -> int:
    from annotation.store.votes import flag_badcase

    with store.sessions() as session:
        flag = flag_badcase(session, candidate_id, types, note)
        session.commit()
        return flag.id


def test_flagged_failures_shape_the_next_prompt_and_are_recorded(pipe, tmp_path, sample_portraits):
    from store_fixtures import make_store

    from annotation.store.badcase_store import recent_badcases
    from db.models import Generation

    store = make_store(tmp_path / "data")
    service = _service(pipe, store)
    first = service.generate(_request(sample_portraits))
    sentence = FAILURE_CONSTRAINTS["identity_swap"].sentence
    assert sentence not in first.prompt and first.params["prompt_badcases"] == []

    flag_id = _flag(store, first.candidates[0].candidate_id, ["identity_swap"], "the two people swapped faces")
    with store.sessions() as session:
        (stored,) = recent_badcases(session, task="fusion")
        assert recent_badcases(session, task="age") == []
    assert stored.id == flag_id and stored.prompt == first.prompt and stored.num_subjects == 2
    assert stored.failure_types == ("identity_swap",) and stored.note == "the two people swapped faces"

    second = service.generate(_request(sample_portraits, seed=9))
    assert sentence in second.prompt  # the flag became an explicit constraint of the template prompt
    with store.sessions() as session:
        params = session.get(Generation, second.generation_ids[0]).params
    assert params["prompt_badcases"] == [flag_id]


def test_export_writes_the_badcases_in_the_format_the_prompt_command_reads(pipe, tmp_path, sample_portraits):
    from store_fixtures import make_store

    from annotation.store.export import export_preferences
    from idglow.prompting.badcases import FAILURE_TYPES

    store = make_store(tmp_path / "data")
    result = _service(pipe, store).generate(_request(sample_portraits))
    ids = [_flag(store, result.candidates[0].candidate_id, ["missing_person"]),
           _flag(store, result.candidates[0].candidate_id, ["artifact", "texture_mismatch"], "hands")]
    with store.sessions() as session:
        out = export_preferences(session, tmp_path / "export", data_dir=store.data_dir).out_dir
    lines = (out / "badcases.jsonl").read_text().splitlines()
    cases = [Badcase.from_dict(json.loads(line)) for line in lines]
    assert [c.id for c in cases] == ids[::-1]  # newest first
    assert cases[0].failure_types == ("artifact", "texture_mismatch") and cases[0].note == "hands"
    assert all(t in FAILURE_TYPES for c in cases for t in c.failure_types)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "badcases.jsonl" in manifest["files"] and "badcases.jsonl" in (out / "README.md").read_text()


@pytest.fixture
def declared_badcase_store(monkeypatch):
    """The ``idglow.badcase_stores`` entry point as pyproject.toml declares it (the shared environment's installed
    metadata may predate a move of the reader)."""
    import importlib.metadata as md
    from pathlib import Path

    import tomllib

    from idglow.commands.prompt import BADCASE_STORES

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    points = [md.EntryPoint(name, value, BADCASE_STORES) for name, value in project["entry-points"][BADCASE_STORES].items()]
    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: points if kw.get("group") == BADCASE_STORES else real(**kw))
    return points


def test_prompt_and_eval_commands_read_the_flags_straight_from_the_store(pipe, tmp_path, sample_portraits, capsys,
                                                                         declared_badcase_store):
    """``--badcases URL``: the newest flags of the store at that database URL, through the annotation app's
    ``idglow.badcase_stores`` entry point; a report records the URL without its password."""
    from store_fixtures import make_store

    from idglow.cli import main
    from idglow.commands.prompt import badcases_source

    store = make_store(tmp_path / "data")
    result = _service(pipe, store).generate(_request(sample_portraits))
    fusion = _flag(store, result.candidates[0].candidate_id, ["identity_swap"], "swapped")
    url = str(store.engine.url)
    assert url.startswith("sqlite:///")
    subjects = [arg for n in ("person1", "person2") for arg in ("--subject", str(sample_portraits[n]))]
    assert main(["prompt", *subjects, "--badcases", url, "--no-faces"]) == 0
    shaped = json.loads(capsys.readouterr().out)
    assert shaped["badcase_ids"] == [fusion]
    assert FAILURE_CONSTRAINTS["identity_swap"].sentence in shaped["text"]
    # the age task reads only the age task's flags: there are none
    assert main(["prompt", *subjects, "--task", "age", "--target-age", "6", "--target-age", "-",
                 "--badcases", url, "--no-faces"]) == 0
    assert json.loads(capsys.readouterr().out)["badcase_ids"] == []
    assert main(["prompt", *subjects, "--badcases", f"sqlite:///{tmp_path / 'none.db'}", "--no-faces"]) == 2
    assert "no such database file" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    (tmp_path / "empty.db").touch()
    assert main(["prompt", *subjects, "--badcases", f"sqlite:///{tmp_path / 'empty.db'}", "--no-faces"]) == 2
    assert "no preference store there" in capsys.readouterr().err
    assert badcases_source("postgresql://ann:secret@db:5432/idglow") == "postgresql://ann:***@db:5432/idglow"
    assert badcases_source("flags.jsonl") == "flags.jsonl"


def test_wrong_age_needs_both_ages_and_a_gap_past_5_years_or_a_quarter_of_the_target():
    targets = [6.0, 60.0, 60.0, None, 30.0, 6.0]
    apparent = [11.0, 74.0, 76.0, 50.0, None, 0.5]
    assert wrong_age_slots(apparent, targets) == [2, 5]
