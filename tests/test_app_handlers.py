"""Tab handlers with fake services: widgets → typed request → one service call → widgets; callers checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from annotation.errors import PermissionDenied
from annotation.generation import CandidateResult, DetectedSubject, GenerationResult
from annotation.sampling import ServedComparison, ShownCandidate
from annotation.ui.annotate_handlers import SHOWN_OUTPUTS, AnnotateHandlers, PairState, SignInHandlers
from annotation.ui.auth import NotSignedIn
from annotation.ui.generate_handlers import GenerateForm, GenerateHandlers, VisitorState
from annotation.ui.research_handlers import ExportForm, ResearchHandlers
from annotation.votes import UndoResult
from db.models import Role

ROOT = Path(__file__).resolve().parents[1]


class FakeGeneration:
    def __init__(self):
        self.requests = []

    def detect_subjects(self, images):
        return [DetectedSubject(img, 0, name) for name, img in images]

    def generate(self, request, on_step=None, on_wait=None):
        self.requests.append(request)
        for i in range(3):
            on_step(i + 1, 3)
        img = Image.new("RGB", (8, 8))
        return GenerationResult("a prompt", "template", 41, [
            CandidateResult(img, 41, "tiny-demo", [0.5, 0.25], candidate_id=1),
            CandidateResult(None, 42, "tiny-demo", [0.0, 0.0], withheld="withheld by the safety checker (nsfw, 0.99)"),
        ], generation_ids=[7])


class FakeAuth:
    def __init__(self, users):
        self.users = users

    def user(self, token):
        return self.users.get(token)

    def require(self, token, role, action):
        user = self.users.get(token)
        if user is None:
            raise NotSignedIn(f"sign in as {Role(role).value} to {action}")
        if user.role == Role.annotator and Role(role) != Role.annotator:
            raise PermissionDenied(f"{user.username} may not {action}")
        return user


AUTH = FakeAuth({"t-ann": SimpleNamespace(id=1, username="anna", role=Role.annotator),
                 "t-res": SimpleNamespace(id=2, username="rita", role=Role.researcher)})


def test_upload_needs_consent_and_deletes_the_temporary_file(tmp_path):
    path = tmp_path / "me.png"
    Image.new("RGB", (16, 16)).save(path)
    handlers = GenerateHandlers(FakeGeneration())
    with pytest.raises(gr.Error, match="consent"):
        handlers.upload([str(path)], False, None)
    assert not path.exists()
    Image.new("RGB", (16, 16)).save(path)
    crops, table, status, state = handlers.upload([str(path)], True, None)
    assert table == [[1, "Person 1", None, 1.0]] and "Found 1 people in me.png" in status
    assert isinstance(state, VisitorState) and len(state.visitor_id) == 32 and not path.exists()


def test_generate_builds_a_typed_request_and_shows_scores_and_seed():
    service = FakeGeneration()
    handlers = GenerateHandlers(service, default_steps=8, default_size=64)
    state = VisitorState(subjects=[DetectedSubject(Image.new("RGB", (4, 4)), 1, "a.jpg"),
                                   DetectedSubject(Image.new("RGB", (4, 4)), 0, "b.jpg")])
    table = {"headers": [], "data": [[1, "Mum", "38", 1.5], [2, "", None, None]]}
    form = GenerateForm(table, "fusion", "park", "", True, -1, 12, 3.0, 0.8, 0.1, 0.9, 2, 128, "tiny-demo")
    progress = []
    gallery, scores, seed, status, download, out_state = handlers.generate(
        state, form, progress=lambda value, desc=None, unit=None: progress.append(value))
    req = service.requests[0]
    assert req.seed is None and req.num_inference_steps == 12 and (req.height, req.width) == (128, 128)
    assert req.id_window == (0.1, 0.9) and req.model_versions == ["tiny-demo"] and req.visitor_id == state.visitor_id
    assert [(s.label, s.target_age, s.weight, s.face_index) for s in req.subjects] == [
        ("Mum", 38.0, 1.5, 1), ("Person 2", None, 1.0, 0)]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert len(gallery) == 1 and "seed 41 · identity: Mum 0.50, Person 2 0.25" in gallery[0][1]
    assert scores["headers"] == ["#", "model", "seed", "Mum", "Person 2"] and len(scores["data"]) == 2
    assert "**41**" in seed and "1 image(s) withheld" in status and download.endswith(".zip")
    assert out_state.generation_ids == [7]


def test_generate_without_upload_and_bad_numbers_are_clear_errors():
    handlers = GenerateHandlers(FakeGeneration())
    form = GenerateForm([], "fusion", "", "", True, 1, 2, 3.5, 1.0, 0.0, 1.0, 1, 64, [])
    with pytest.raises(gr.Error, match="Upload 1–6 portraits"):
        handlers.generate(None, form)
    state = VisitorState(subjects=[DetectedSubject(Image.new("RGB", (4, 4)), 0, "a.jpg")])
    form.subjects_table = [[1, "A", "six", 1.0]]
    with pytest.raises(gr.Error, match="person 1: target age 'six' is not a number"):
        handlers.generate(state, form)


@dataclass
class FakeAnnotation:
    calls: list

    def image_path(self, rel):
        return None if rel is None else f"/data/{rel}"

    def next_pair(self, user_id):
        return ServedComparison(5, 9, 20, 30, left=ShownCandidate(30, "b.png"), right=ShownCandidate(20, "a.png"),
                                prompt="p <img src=x>", task="fusion", num_subjects=2, subject_labels=("Mum", None),
                                reference_paths=("r0.png", "r1.png"), is_gold=False, target_ages=(6.0, None))

    def progress(self, user_id):
        return SimpleNamespace(votes=len([c for c in self.calls if c[0] == "vote"]), remaining=3)

    def vote(self, user_id, comparison_id, **kwargs):
        self.calls.append(("vote", user_id, comparison_id, kwargs))

    def skip(self, user_id, comparison_id):
        self.calls.append(("skip", user_id, comparison_id))

    def undo(self, user_id):
        self.calls.append(("undo", user_id))
        return UndoResult(1, 9, overall="a", strength="clear", identity={0: "b", 1: "tie"}, texture="a",
                          artifacts=None)

    def flag(self, user_id, candidate_id, types, note):
        self.calls.append(("flag", user_id, candidate_id, list(types), note))


def test_vote_translates_screen_sides_to_candidates_and_checks_the_caller():
    service = FakeAnnotation([])
    handlers = AnnotateHandlers(service, AUTH, clock=lambda: 100.0)
    shown = handlers.show("t-ann")
    pair = shown[-1]
    assert shown[1] == "/data/b.png" and shown[2] == "/data/a.png"
    assert shown[0]["value"] == [("/data/r0.png", "Mum · age 6"), ("/data/r1.png", "Person 2")]
    assert "p &lt;img src=x&gt;" in shown[3] and "<img" not in shown[3]  # a visitor's text is shown as text
    assert [u["visible"] for u in shown[5:11]] == [True, True, False, False, False, False]
    with pytest.raises(gr.Error, match="sign in as annotator"):
        handlers.vote(None, pair, "left", "clear", None, None, "left")
    handlers.vote("t-ann", pair, "left", "clear", "right", "tie", "left", "right", "left", None, None, None)
    _, user, comparison, kwargs = service.calls[0]
    # candidate 30 (B) was on the left: "left" means b
    assert (user, comparison) == (1, 9)
    assert kwargs["overall"] == "b" and kwargs["strength"] == "clear" and kwargs["texture"] == "a"
    assert kwargs["artifacts"] == "tie" and kwargs["identity"] == {0: "b", 1: "a"}  # slot 2 is not in this group
    assert kwargs["key"] == pair.key and kwargs["duration_ms"] == 0
    handlers.vote("t-ann", pair, "tie", "clear", None, None)
    assert service.calls[1][3]["strength"] is None  # strength only for a or b


def test_every_pair_starts_with_an_empty_form_one_update_per_output():
    handlers = AnnotateHandlers(FakeAnnotation([]), AUTH)
    shown = handlers.show("t-ann")
    assert len(shown) == SHOWN_OUTPUTS
    form = shown[5:-2]  # identity radios, overall, strength, texture, artifacts, flag side, types, note
    assert len({id(u) for u in form}) == len(form)  # never one update object repeated for several outputs
    assert [u["value"] for u in form] == [None] * 11 + [[], ""]
    assert shown[-2] == ""  # the flag status of the previous pair is gone


def test_show_before_sign_in_changes_nothing_and_sign_in_collapses_the_panel():
    handlers = AnnotateHandlers(FakeAnnotation([]), AUTH)
    skipped = handlers.show_if_signed_in(None)
    assert len(skipped) == SHOWN_OUTPUTS and all(u == gr.skip() for u in skipped)
    assert handlers.show_if_signed_in("t-ann")[1] == "/data/b.png"
    signed = SimpleNamespace(token="tok", user=SimpleNamespace(username="anna", role=Role.annotator))
    sign_in = SignInHandlers(SimpleNamespace(sign_in=lambda user, password: signed, sign_out=lambda token: None))
    token, status, password, form, bar, content, intro, research = sign_in.sign_in("anna", "pw")
    assert token == "tok" and status.startswith("Signed in as **anna**") and password == ""
    assert [u["visible"] for u in (form, bar, content, intro, research)] == [False, True, True, False, False]
    out = sign_in.sign_out("tok")
    assert out[0] is None and [u["visible"] for u in out[3:]] == [True, False, False, True, False]


def test_undo_shows_the_undone_answers_and_flag_names_the_candidate_on_screen():
    service = FakeAnnotation([])
    handlers = AnnotateHandlers(service, AUTH)
    pair = PairState(FakeAnnotation([]).next_pair(1), 0.0, "k")
    shown = handlers.undo("t-ann", pair)
    assert service.calls == [("undo", 1), ("skip", 1, 9)]
    # candidate B (30) is on the left: a → right, b → left
    identity, (overall, strength, texture, artifacts) = shown[5:7], shown[11:15]
    assert [u["value"] for u in identity] == ["left", "tie"]
    assert (overall["value"], strength["value"], texture["value"], artifacts["value"]) == (
        "right", "clear", "right", None)
    status, *flag_form = handlers.flag("t-ann", pair, "right", ["identity_swap"], "swap")
    assert status == "Flagged image B as Identity swap."
    assert [u["value"] for u in flag_form] == [None, [], ""]
    assert service.calls[-1] == ("flag", 1, 20, ["identity_swap"], "swap")
    with pytest.raises(gr.Error, match="Choose which image"):
        handlers.flag("t-ann", pair, None, ["artifact"], "")


def test_research_needs_a_researcher_and_passes_the_export_filters():
    exported = []
    service = SimpleNamespace(export=lambda user_id, filters: exported.append((user_id, filters)) or SimpleNamespace(
        archive=Path("/x/e.zip"), data_files=[Path("/x/data/train.parquet")], rows=3, command="idglow train dpo ..."))
    handlers = ResearchHandlers(service, AUTH)
    form = ExportForm("parquet", True, "drop", 2, "2025-01-31")
    for token, message in [(None, "sign in as researcher"), ("t-ann", "anna may not export")]:
        with pytest.raises(gr.Error, match=message):
            handlers.export(token, form)
    files, status = handlers.export("t-res", form)
    user_id, filters = exported[0]
    assert user_id == 2 and filters.tie_policy == "drop" and filters.min_votes == 2 and filters.with_images
    assert filters.since.isoformat() == "2025-01-31T00:00:00+00:00"
    assert files == ["/x/e.zip", "/x/data/train.parquet"] and "idglow train dpo" in status
    with pytest.raises(gr.Error, match="'since' 'yesterday' is not a date"):
        handlers.export("t-res", ExportForm("parquet", False, "half", 1, "yesterday"))


def test_app_py_is_a_small_composition_root():
    text = (ROOT / "app.py").read_text()
    assert len(text.splitlines()) < 100
    assert "import gradio" not in text and "share=True" not in text
