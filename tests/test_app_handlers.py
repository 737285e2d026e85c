"""Tab handlers with fake services: widgets → typed request → one service call → widgets; callers checked."""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from annotation.generation.reference_faces import DetectedSubject
from annotation.generation.request import CandidateResult, Downloads, GenerationResult
from annotation.store.errors import PermissionDenied
from annotation.store.sampling import ServedComparison, ShownCandidate
from annotation.store.votes import UndoResult
from annotation.ui.annotate_handlers import (
    AnnotateHandlers,
    PairState,
    SignInHandlers,
    form_names,
    shown_names,
)
from annotation.ui.auth import NotSignedIn
from annotation.ui.generate_handlers import CardValues, GenerateForm, GenerateHandlers, Person, VisitorState
from annotation.ui.research_handlers import ExportForm, ResearchHandlers
from db.models import Role
from idglow.errors import NoFaceError

ROOT = Path(__file__).resolve().parents[1]


class FakeGeneration:
    """Finds one person per photo, none in a photo whose name starts with "landscape"."""

    def __init__(self):
        from annotation.generation.gpu_queue import GpuQueue

        self.requests = []
        self.queue = GpuQueue(concurrency=1, max_waiting=0)

    def people_in_photo(self, name, image, group=False):
        if name.startswith("landscape"):
            raise NoFaceError(0, name)
        return [DetectedSubject(image, 0, name)]

    def example_people(self):
        return [DetectedSubject(Image.new("RGB", (4, 4)), 0, f"person{i}.jpg") for i in (1, 3, 6)]

    def generate(self, request, on_step=None, on_wait=None):
        self.requests.append(request)
        on_wait(2)
        for i in range(3):
            on_step(i + 1, 3)
        img = Image.new("RGB", (8, 8))
        return GenerationResult("a prompt", "template", 41, [
            CandidateResult(img, 41, "tiny-demo", [0.5, None], candidate_id=1, estimated_ages=[36.4, None]),
            CandidateResult(None, 42, "tiny-demo", [None, None], withheld="withheld by the safety checker (nsfw, 0.99)"),
        ], generation_ids=[7], downloads=Downloads([Path("/d/idglow_41.png")], Path("/d/idglow_x_seed41.zip")))


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


ANNA = SimpleNamespace(id=1, username="anna", role=Role.annotator)
AUTH = FakeAuth({"t-ann": ANNA, "t-ann2": ANNA,
                 "t-res": SimpleNamespace(id=2, username="rita", role=Role.researcher)})


def _photo(folder: Path, name: str) -> str:
    path = folder / name
    Image.new("RGB", (16, 16)).save(path)
    return str(path)


def test_photos_chosen_before_consent_wait_and_are_processed_when_it_is_ticked(tmp_path):
    handlers = GenerateHandlers(FakeGeneration())
    files = [_photo(tmp_path, "mum.png"), _photo(tmp_path, "dad.png")]
    view = handlers.photos(None, files, False, [])
    assert "Tick the consent box" in view["photo_status"] and "mum.png, dad.png" in view["photo_status"]
    assert view["state"].people == [] and all(Path(f).exists() for f in files), "nothing is read before consent"
    view = handlers.photos(view["state"], files, True, [])
    assert [p.subject.source for p in view["state"].people] == ["mum.png", "dad.png"]
    assert "2 people ready" in view["photo_status"] and not any(Path(f).exists() for f in files)
    assert view["card_0"]["visible"] and view["card_1"]["visible"] and not view["card_2"]["visible"]


def test_a_bad_photo_is_named_alone_and_the_good_ones_are_kept(tmp_path):
    handlers = GenerateHandlers(FakeGeneration())
    files = [_photo(tmp_path, "mum.png"), _photo(tmp_path, "landscape.png"), str(tmp_path / "notes.png")]
    (tmp_path / "notes.png").write_text("not an image")
    view = handlers.photos(None, files, True, [])
    status = view["photo_status"]
    assert "landscape.png: no face found" in status and "notes.png: not a JPEG/PNG/WEBP/HEIC image" in status
    assert [p.subject.source for p in view["state"].people] == ["mum.png"] and "1 person ready" in status
    # the visitor removes the bad files from the list: the good person (and what was typed) stays
    view = handlers.photos(view["state"], files[:1], True, [CardValues("Mum", 40, 1.2)])
    assert "no face" not in view["photo_status"] and view["label_0"]["value"] == "Mum" and view["age_0"] == 40
    view = handlers.photos(view["state"], files[:1] + [_photo(tmp_path, "dad.png")], True,
                           [CardValues("Mum", 40, 1.2)])
    assert [(p.label, p.subject.source) for p in view["state"].people] == [("Mum", "mum.png"), ("", "dad.png")]


def test_remove_one_person_and_try_the_example_family(tmp_path):
    handlers = GenerateHandlers(FakeGeneration())
    view = handlers.photos(None, [_photo(tmp_path, "a.png"), _photo(tmp_path, "b.png")], True, [])
    view = handlers.remove_person(view["state"], [CardValues("Ann"), CardValues("Bob")], 0)
    assert [p.label for p in view["state"].people] == ["Bob"] and not view["card_1"]["visible"]
    view = handlers.example_family(view["state"])
    assert [p.subject.source for p in view["state"].people] == ["person1.jpg", "person3.jpg", "person6.jpg"]
    assert view["files"] is None and view["scene"] and "Example family" in view["photo_status"]
    assert handlers.request(view["state"], GenerateForm()).consent, "bundled example photos need no consent"
    assert len(handlers.photos(view["state"], None, False, [])["state"].people) == 3  # clearing the list keeps them
    view = handlers.photos(view["state"], [_photo(tmp_path, "me.png")], True, [])
    assert [p.subject.source for p in view["state"].people] == ["me.png"], "own photos replace the example family"
    assert not handlers.request(view["state"], GenerateForm()).consent


def test_a_full_queue_refuses_generate_before_the_request_is_built():
    """The busy answer comes before any work: no request is built (no subjects, no database) and nothing is
    queued, even for a visitor with nobody added yet."""
    service = FakeGeneration()
    handlers = GenerateHandlers(service, default_steps=8, default_size=64)
    with service.queue.slot(owner="someone-else"):
        with pytest.raises(gr.Error, match=r"The generator is busy \(1 requests running or waiting, the limit is 1\)"):
            handlers.generate(VisitorState(), GenerateForm(consent=True))
    assert service.requests == [] and service.queue.admitted == 0
    out = handlers.generate(VisitorState(), GenerateForm(consent=True))  # with room, the request is checked as before
    assert "Add 1–6 people first" in out["status"]
    assert service.queue.admitted == 0, "the place taken for a request that failed its checks is given back"


def test_generate_builds_a_typed_request_and_shows_scores_in_words():
    service = FakeGeneration()
    handlers = GenerateHandlers(service, default_steps=8, default_size=64)
    state = VisitorState(people=[Person("a", DetectedSubject(Image.new("RGB", (4, 4)), 1, "a.jpg")),
                                 Person("b", DetectedSubject(Image.new("RGB", (4, 4)), 0, "b.jpg"))])
    form = GenerateForm(task="age", scene="park", consent=True, seed=-1, steps=12, guidance=3.0, id_scale=0.8,
                        window_lo=0.1, window_hi=0.9, id_profile="linear", num_images=2, size=128,
                        model_versions="tiny-demo",
                        cards=[CardValues("Mum", 6, 1.5), CardValues("", None, None)])
    progress = []
    out = handlers.generate(state, form, progress=lambda value, desc=None, unit=None: progress.append((value, desc)))
    req = service.requests[0]
    assert req.seed is None and req.num_inference_steps == 12 and (req.height, req.width) == (128, 128)
    assert req.id_window == (0.1, 0.9) and req.id_profile == "linear"
    assert req.model_versions == ["tiny-demo"] and req.visitor_id == state.visitor_id
    assert [(s.label, s.target_age, s.weight, s.face_index) for s in req.subjects] == [
        ("Mum", 6.0, 1.5, 1), (None, None, 1.0, 0)]
    assert progress[0] == (0.0, "In the queue: 2 ahead of you") and [v for v, _ in progress[1:]] == [
        (1, 3), (2, 3), (3, 3)]
    rows = out["scores"]["data"]
    assert rows[0] == ["#1 · seed 41", "Mum: 0.50 (looks 36, target 6) · Person 2: face not found"]
    assert rows[1] == ["#2 · seed 42", "withheld by the safety checker (nsfw, 0.99)"]
    assert len(out["gallery"]) == 1 and "**41**" in out["seed_used"] and "1 image(s) withheld" in out["status"]
    assert out["pngs"] == ["/d/idglow_41.png"] and out["archive"]["value"].endswith("seed41.zip")
    assert out["state"].generation_ids == [7]


def test_generate_without_people_and_bad_numbers_are_said_under_the_button():
    """Mistakes in the form come back as a line under Generate (no error state over the gallery), nothing is
    generated, and the seed of an earlier run is not shown as this one's."""
    service = FakeGeneration()
    handlers = GenerateHandlers(service)

    def note(state, form):
        out = handlers.generate(state, form)
        assert set(out) == {"status", "seed_used", "state"} and out["seed_used"] == ""
        shown = handlers.run_note(out["state"])  # the line under the button
        assert "idglow-problem" in shown and out["status"] in html.unescape(shown)
        return shown

    assert "Add 1–6 people first" in note(None, GenerateForm(consent=True))
    state = VisitorState(people=[Person("a", DetectedSubject(Image.new("RGB", (4, 4)), 0, "a.jpg"))])
    assert "Person 1: target age &#x27;six&#x27; is not a number" in note(
        state, GenerateForm(consent=True, cards=[CardValues("A", "six", 1.0)]))
    assert "Person 1: target age 130.0 must be between 0 and 120" in note(
        state, GenerateForm(consent=True, cards=[CardValues("", 130, 1.0)]))
    assert "Gran: ID weight 5.0 must be between 0 and 3" in note(
        state, GenerateForm(consent=True, cards=[CardValues("Gran", None, 5)]))
    assert service.requests == []
    state.people = state.people * 2
    handlers.generate(state, GenerateForm(consent=True))
    assert handlers.run_note(state) == "" and len(service.requests) == 1  # fixed: the line goes


def test_the_generate_wiring_passes_widget_values_by_name():
    """Every Generate event names its inputs (no positional lists): the generate event's keyword inputs are
    exactly the form's fields, the cards and the state."""
    from annotation.ui.generate_tab import FORM_FIELDS, build_generate_tab

    with gr.Blocks() as demo:
        build_generate_tab(GenerateHandlers(FakeGeneration(), default_size=64), lambda: ["tiny-demo"], tiny=True)
    deps = {d.api_name: d for d in demo.fns.values() if d.api_name}
    names = set(deps["generate"].input_keyword_names)
    cards = {f"{k}_{i}" for i in range(6) for k in ("label", "age", "describe", "weight")}
    assert names == {*FORM_FIELDS, *cards, "state"}
    # every event the server runs takes its inputs by name (events with only a page script never reach it)
    server_events = [d for d in demo.fns.values() if d.api_name and d.fn is not None]
    assert len(server_events) >= 6 and all(not d.inputs or d.input_keyword_names for d in server_events)


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
        return UndoResult(1, 9, {"overall": "a", "strength": "clear", "identity": {0: "b", 1: "tie"},
                                 "texture": "a"})

    def flag(self, user_id, candidate_id, types, note):
        self.calls.append(("flag", user_id, candidate_id, list(types), note))


def _answers(overall=None, strength=None, texture=None, artifacts=None, *identity):
    return {"overall": overall, "strength": strength, "texture": texture, "artifacts": artifacts,
            **{f"identity_{i}": v for i, v in enumerate(identity)}}


def test_vote_translates_screen_sides_to_candidates_and_checks_the_caller():
    service = FakeAnnotation([])
    handlers = AnnotateHandlers(service, AUTH, clock=lambda: 100.0)
    shown = handlers.show("t-ann")
    pair = shown["pair"]
    assert shown["left"] == "/data/b.png" and shown["right"] == "/data/a.png"
    assert shown["refs"]["value"] == [("/data/r0.png", "Mum · age 6"), ("/data/r1.png", "Person 2")]
    assert "p &lt;img src=x&gt;" in shown["prompt"] and "<img" not in shown["prompt"]  # shown as text
    assert [shown[f"identity_{i}"]["visible"] for i in range(6)] == [True, True, False, False, False, False]
    with pytest.raises(gr.Error, match="sign in as annotator"):
        handlers.vote(None, pair, _answers("left", "clear", None, None, "left"))
    handlers.vote("t-ann", pair, _answers("left", "clear", "right", "tie", "left", "right", "left"))
    _, user, comparison, kwargs = service.calls[0]
    # candidate 30 (B) was on the left: "left" means b
    assert (user, comparison) == (1, 9)
    assert kwargs["overall"] == "b" and kwargs["answers"] == {
        "strength": "clear", "texture": "a", "artifacts": "tie", "identity": {0: "b", 1: "a"}}  # no slot 2 here
    assert kwargs["key"] == pair.key and kwargs["duration_ms"] == 0
    handlers.vote("t-ann", pair, _answers("tie", "clear"))
    assert "strength" not in service.calls[1][3]["answers"]  # strength only for a or b
    saved = handlers.vote("t-ann", pair, _answers("right"))
    assert "Vote saved" in saved["notice"] and "idglow-done" in saved["notice"]  # said beside the buttons


def test_a_vote_without_an_overall_choice_is_refused_inline_leaving_the_pair_and_answers():
    """A mistake in the form is said in words beside the buttons; nothing else on screen changes (no error state
    that would cover the pair), and nothing is stored."""
    service = FakeAnnotation([])
    handlers = AnnotateHandlers(service, AUTH)
    pair = handlers.show("t-ann")["pair"]
    out = handlers.vote("t-ann", pair, _answers(None, "clear", "left", None, "left"))
    assert not [c for c in service.calls if c[0] == "vote"]
    assert set(out) == {"notice", "overall"}  # every other output stays as it is
    assert "Choose A, B, tie or both bad first" in out["notice"] and "idglow-problem" in out["notice"]
    assert out["overall"] == {"__type__": "update", "label": "Overall: choose A, B, tie or both bad first (keys a, b, "
                                                             "t, x)"}  # on the choice itself, its value kept
    assert handlers.show("t-ann")["overall"]["label"] == "Overall: which group photo is better?"  # then back
    status, *rest = handlers.flag("t-ann", pair, None, ["artifact"], "")
    assert "Choose which image (A or B)" in status and all(u == gr.skip() for u in rest)
    assert not [c for c in service.calls if c[0] == "flag"]


def test_every_pair_starts_with_an_empty_form_one_update_per_output():
    handlers = AnnotateHandlers(FakeAnnotation([]), AUTH)
    shown = handlers.show("t-ann")
    assert list(shown) == shown_names()
    form = [shown[n] for n in [*form_names(), "flag_side", "flag_types", "flag_note"]]
    assert len({id(u) for u in form}) == len(form)  # never one update object repeated for several outputs
    assert [u["value"] for u in form] == [None] * 11 + [[], ""]
    assert shown["flag_status"] == ""  # the flag status of the previous pair is gone
    assert shown["flag_hint"] == {"__type__": "update", "value": "", "visible": False}  # no ages: no suggestion
    assert shown["notice"] == ""  # no notice of the previous pair


def test_an_apparent_age_far_from_its_target_suggests_the_wrong_age_flag():
    """Mum's target age is 6: looking 14 in A suggests the flag (off by more than 5 years); looking 9 in B does
    not; person 2 has no target age, so their apparent age suggests nothing. Labels are shown as text."""
    served = FakeAnnotation([]).next_pair(1)
    served = replace(served, subject_labels=("Mum <img src=x>", None),
                     left=replace(served.left, apparent_ages=(14.0, 70.0)),
                     right=replace(served.right, apparent_ages=(9.0, 3.0)))
    service = FakeAnnotation([])
    service.next_pair = lambda user_id: served
    update = AnnotateHandlers(service, AUTH).show("t-ann")["flag_hint"]
    hint = update["value"]
    assert update["visible"]
    assert "Wrong age [5]" in hint
    assert "in A, Mum &lt;img src=x&gt; looks 14 (target 6)" in hint
    assert "in B" not in hint and "looks 70" not in hint and "<img" not in hint
    service.next_pair = lambda user_id: replace(served, left=replace(served.left, apparent_ages=(10.0, 70.0)))
    assert not AnnotateHandlers(service, AUTH).show("t-ann")["flag_hint"]["visible"]


def test_show_before_sign_in_changes_nothing_and_sign_in_collapses_the_panel():
    handlers = AnnotateHandlers(FakeAnnotation([]), AUTH)

    assert handlers.show_after_sign_in(None) == {}  # no output: nothing changes
    shown = handlers.show_after_sign_in("t-ann")  # the sign-in shows the pair
    assert shown["left"] == "/data/b.png"
    # a second sign-in as the same annotator leaves the pair on screen and the answers being given alone
    assert handlers.show_after_sign_in("t-ann", shown["pair"]) == {}
    # another sign-in on a page that still holds someone else's pair: this annotator's pair is shown
    assert handlers.show_after_sign_in("t-ann2", replace(shown["pair"], user_id=2))["left"] == "/data/b.png"
    signed = SimpleNamespace(token="tok", user=SimpleNamespace(username="anna", role=Role.annotator))
    sign_in = SignInHandlers(SimpleNamespace(sign_in=lambda user, password, client="": signed, sign_out=lambda token: None))
    token, status, password, form, bar, content, intro, research, tabs = sign_in.sign_in("anna", "pw")
    assert token == "tok" and status.startswith("Signed in as **anna**") and password == ""
    assert [u["visible"] for u in (form, bar, content, intro, research)] == [False, True, True, False, False]
    assert tabs == {"__type__": "update", "selected": "annotate"}  # from Generate (where all land) to the work
    assert sign_in.sign_in("anna", "pw", "research")[-1] == gr.skip()  # a tab chosen by the person stays
    out = sign_in.sign_out("tok")
    assert out[0] is None and [u["visible"] for u in out[3:-1]] == [True, False, False, True, False]


def test_selecting_the_annotate_tab_changes_no_answer():
    """The sign-in shows the pair; selecting the tab runs in the page only (focus), so no reply on the way can
    race with the keys being pressed."""
    from annotation.ui.annotate_tab import build_annotate_tab

    with gr.Blocks() as demo:
        build_annotate_tab(AnnotateHandlers(FakeAnnotation([]), AUTH), gr.State(None))
    tab_id = next(b._id for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.elem_id == "annotate-tab")
    selected = [d for d in demo.fns.values() if (tab_id, "select") in [tuple(t) for t in d.targets]]
    assert selected and all(d.fn is None and not d.outputs and d.js for d in selected)


def test_undo_shows_the_undone_answers_and_flag_names_the_candidate_on_screen():
    service = FakeAnnotation([])
    handlers = AnnotateHandlers(service, AUTH)
    pair = PairState(FakeAnnotation([]).next_pair(1), 0.0, "k")
    shown = handlers.undo("t-ann", pair)
    assert service.calls == [("undo", 1)]  # the pair on screen is not stored as skipped
    # candidate B (30) is on the left: a → right, b → left
    identity = [shown["identity_0"], shown["identity_1"]]
    overall, strength, texture, artifacts = (shown[n] for n in ("overall", "strength", "texture", "artifacts"))
    assert [u["value"] for u in identity] == ["left", "tie"]
    assert (overall["value"], strength["value"], texture["value"], artifacts["value"]) == (
        "right", "clear", "right", None)
    status, *flag_form = handlers.flag("t-ann", pair, "right", ["identity_swap"], "swap")
    assert status == "Flagged image B as Identity swap."
    assert [u["value"] for u in flag_form] == [None, [], ""]
    assert service.calls[-1] == ("flag", 1, 20, ["identity_swap"], "swap")


def test_research_needs_a_researcher_and_passes_the_export_filters():
    exported = []
    service = SimpleNamespace(export=lambda user_id, filters: exported.append((user_id, filters)) or SimpleNamespace(
        archive=Path("/x/e.zip"), data_files=[Path("/x/data/train.parquet")], rows=3, command="idglow train dpo ..."))
    published = []
    downloads = SimpleNamespace(publish=lambda paths, **grant: published.append((paths, grant)) or [
        f"/tmp/served/{p.name}" for p in paths])
    handlers = ResearchHandlers(service, AUTH, downloads=downloads, download_ttl_s=600)
    form = ExportForm("parquet", True, "drop", 2, "2025-01-31")
    for token, message in [(None, "sign in as researcher"), ("t-ann", "anna may not export")]:
        with pytest.raises(gr.Error, match=message):
            handlers.export(token, form)
    files, status = handlers.export("t-res", form, "b" * 43)
    user_id, filters = exported[0]
    assert user_id == 2 and filters.tie_policy == "drop" and filters.min_votes == 2 and filters.with_images
    assert filters.since.isoformat() == "2025-01-31T00:00:00+00:00"
    assert files == ["/tmp/served/e.zip", "/tmp/served/train.parquet"] and "idglow train dpo" in status
    paths, grant = published[0]
    assert paths == [Path("/x/e.zip"), Path("/x/data/train.parquet")] and grant["browser"] == "b" * 43
    assert grant["ttl_s"] == 600 and grant["allowed"]() and "for 10 minutes" in status
    with pytest.raises(gr.Error, match="'since' 'yesterday' is not a date"):
        handlers.export("t-res", ExportForm("parquet", False, "half", 1, "yesterday"))


def test_app_py_is_a_small_composition_root():
    text = (ROOT / "app.py").read_text()
    assert len(text.splitlines()) < 100
    assert "import gradio" not in text and "share=True" not in text


def test_photos_beyond_six_people_are_not_decoded(tmp_path):
    service = FakeGeneration()
    handlers = GenerateHandlers(service)
    files = [_photo(tmp_path, f"p{i}.png") for i in range(8)]
    view = handlers.photos(None, files, True, [])
    assert len(view["state"].people) == 6 and "p6.png: not used; at most 6 people" in view["photo_status"]
    assert not any(Path(f).exists() for f in files)
