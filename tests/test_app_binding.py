"""The app judges who is who by place: the tiny pipeline with built faces (a face analyzer that knows the people by
the colour of their reference photo and draws the generated faces where the test says), a migrated SQLite file,
the template prompt writer, the Generate tab's score text and the Annotate tab's identity question."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from annotation.generation.service import GenerationRequest, GenerationService, typed_prompt_positions
from db.models import Candidate
from idglow.faces.base import Face
from idglow.subjects import SubjectRef

DIM = 128
COLOURS = {"Anna": (220, 40, 40), "Ben": (40, 40, 220)}
EMBEDDINGS = {name: np.eye(DIM, dtype=np.float32)[k] for k, name in enumerate(COLOURS)}


class BuiltFaces:
    """Reference photos: one face whose identity is the photo's colour. Generated pictures: the faces of
    ``arrangement`` (people's names, left to right), side by side."""

    embedding_dim = DIM
    same_person_threshold = 0.92
    backend_name = "built"

    def __init__(self, arrangement: list[str]):
        self.arrangement = arrangement

    def detect(self, image) -> list[Face]:
        """The built faces of ``image``."""
        pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
        for name, colour in COLOURS.items():
            if np.abs(pixels - colour).max() < 1:  # a reference photo
                return [Face((8.0, 8.0, 56.0, 56.0), embedding=EMBEDDINGS[name])]
        return [Face((4.0 + 30 * k, 10.0, 28.0 + 30 * k, 34.0), embedding=EMBEDDINGS[name])
                for k, name in enumerate(self.arrangement)]


@pytest.fixture(scope="module")
def pipe():
    from idglow.testing import tiny_pipeline

    return tiny_pipeline(face_analyzer=BuiltFaces(["Anna", "Ben"]))


@pytest.fixture()
def service(pipe, tmp_path):
    from store_fixtures import make_store

    store = make_store(tmp_path / "data")
    service = GenerationService(pipe, store.sessions, store.data_dir, base_version="tiny-demo", default_steps=2,
                                default_size=64)
    service.ensure_base_version()
    return service


def _request(**kwargs) -> GenerationRequest:
    subjects = [SubjectRef(Image.new("RGB", (64, 64), COLOURS[name]), label=name) for name in COLOURS]
    return GenerationRequest(subjects=subjects, visitor_id="v1", consent=True, seed=3, num_images=1, **kwargs)


def _stored(service) -> list[Candidate]:
    with service.sessions() as session:
        return list(session.scalars(select(Candidate).order_by(Candidate.id)))


@pytest.mark.parametrize("arrangement, swaps, in_place, instead", [
    (["Anna", "Ben"], 0, [True, True], [None, None]),  # positive control: everyone in their own place
    (["Ben", "Anna"], 2, [False, False], [1, 0]),  # Ben's face where the prompt puts Anna, and Anna's in Ben's
])
def test_a_swapped_generation_is_stored_with_its_swaps(pipe, service, arrangement, swaps, in_place, instead):
    pipe.face_analyzer.arrangement = arrangement
    result = service.generate(_request())
    assert "The first person from the left is Anna" in result.prompt  # the template writer placed the people
    assert result.params["subject_positions"] == [1, 2]
    (cand,) = result.candidates
    assert cand.identity_scores == [1.0, 1.0]  # the identity match alone cannot see the swap
    assert cand.in_place == in_place and cand.instead == instead
    (stored,) = _stored(service)
    binding = stored.face_matches["binding"]
    assert binding["places"] == "order" and binding["swaps"] == swaps
    assert binding["in_place"] == in_place and binding["instead"] == instead
    assert stored.face_matches["similarity"] == [1.0, 1.0]  # the FaceMatch record is kept as before
    assert stored.metrics["swaps"] == swaps and stored.metrics["binding_accuracy"] == (1.0 if swaps == 0 else 0.0)


def test_the_pipeline_binds_the_faces_it_found_once(pipe):
    from idglow.faces.binding import GroupBinding

    calls = []
    detect = pipe.face_analyzer.detect
    pipe.face_analyzer.arrangement = ["Ben", "Anna"]
    pipe.face_analyzer.detect = lambda image: calls.append(1) or detect(image)
    try:
        subjects = [SubjectRef(Image.new("RGB", (64, 64), c)) for c in COLOURS.values()]
        kwargs = {"subjects": subjects, "num_images": 2, "seed": 1, "num_inference_steps": 2, "height": 64, "width": 64}
        placed = pipe("two people", subject_positions=[2, 1], **kwargs)  # Anna stands right, Ben left
        assert len(calls) == 2 + 2  # two references, then each image's faces once
        unplaced = pipe("two people", **kwargs)
    finally:
        del pipe.face_analyzer.detect
    assert all(isinstance(b, GroupBinding) for b in placed.bindings)
    assert [b.swaps for b in placed.bindings] == [0, 0] and placed.bindings[0].in_place == [True, True]
    assert [b.match for b in placed.bindings] == placed.face_matches
    assert unplaced.bindings[0].in_place == [None, None] and unplaced.bindings[0].swaps is None
    assert unplaced.face_matches[0].face_of_slot == placed.face_matches[0].face_of_slot == [1, 0]
    with pytest.raises(ValueError, match=r"subject_positions=\[1, 1\]"):
        pipe("two people", subject_positions=[1, 1], **kwargs)


def test_a_typed_prompt_gives_places_by_name():
    text = "the first person from the left (Ben) waves, the second person from the left (Anna) smiles"
    assert typed_prompt_positions(text, ["Anna", "Ben"]) == [2, 1]
    assert typed_prompt_positions("two friends at the beach", ["Anna", "Ben"]) is None
    assert typed_prompt_positions(text, [None, None]) == [1, 2]


def test_the_score_text_says_whose_face_is_in_a_place():
    from annotation.generation.request import CandidateResult
    from annotation.ui.generate_handlers import _scores_text

    def text(**kwargs):
        cand = CandidateResult(image=None, seed=0, model_version="v", **kwargs)
        return _scores_text(cand, ["Anna", "Ben", "Cleo"], [None, None, None])

    swapped = text(identity_scores=[0.95, 0.93, None], in_place=[False, False, False], instead=[1, 0, None])
    assert swapped == ("Anna: Ben's face is in their place (own face 0.95 elsewhere) · "
                       "Ben: Anna's face is in their place (own face 0.93 elsewhere) · Cleo: face not found")
    assert text(identity_scores=[0.95, 0.93, 0.5], in_place=[True, True, True], instead=[None] * 3) == \
        "Anna: 0.95 · Ben: 0.93 · Cleo: 0.50"
    assert text(identity_scores=[0.95, 0.93, 0.5]) == "Anna: 0.95 · Ben: 0.93 · Cleo: 0.50"  # no places
    stranger = text(identity_scores=[0.95, 0.93, 0.5], in_place=[False, True, True], instead=[None] * 3)
    assert stranger.startswith("Anna: 0.95, not in their place · Ben: 0.93")  # a non-member stands in her place


def test_the_annotate_identity_question_names_the_place():
    from types import SimpleNamespace

    from annotation.ui.annotate_handlers import _person_updates
    from idglow.preferences import by_name

    identity = by_name()["identity"]

    prompt = "the first person from the left (Ben) waves, the second person from the left (Anna) smiles"
    served = SimpleNamespace(num_subjects=2, subject_labels=("Anna", "Ben"), prompt=prompt)
    labels = [u["label"] for u in list(_person_updates(identity, served, {}).values())[:2]]
    assert labels == ["Identity — the face in Anna's place (2nd from left) (key 1, then a/b/t)",
                      "Identity — the face in Ben's place (1st from left) (key 2, then a/b/t)"]
    served.prompt = "two friends at the beach"
    assert _person_updates(identity, served, {})["identity_0"]["label"] == "Identity of Anna (key 1, then a/b/t)"


def swapped_photo(left_path, right_path):
    """Two real portraits side by side: the one at ``left_path`` on the left."""
    left, right = (Image.open(p).convert("RGB") for p in (left_path, right_path))
    height = max(left.height, right.height)
    photo = Image.new("RGB", (left.width + right.width + 40, height + 40), (128, 128, 128))
    photo.paste(left, (10, 20))
    photo.paste(right, (left.width + 30, 20))
    return photo


def test_real_faces_in_swapped_places_are_stored_as_a_swap(sample_portraits, tmp_path):
    """Real dlib on a real composed photo: the pipeline's picture is replaced by person2's portrait on the left
    and person1's on the right, while the prompt puts person1 left; the binding stored in SQLite holds the swap."""
    from store_fixtures import make_store

    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.images import decode_image
    from idglow.testing import tiny_pipeline

    real = tiny_pipeline(face_analyzer=DlibAnalyzer())
    denoise = real._denoise
    real._denoise = lambda *a: (lambda images, state: ([photo] * len(images), state))(*denoise(*a))
    store = make_store(tmp_path / "data")
    service = GenerationService(real, store.sessions, store.data_dir, base_version="tiny-demo", default_steps=2,
                                default_size=64)
    service.ensure_base_version()
    subjects = [SubjectRef(decode_image(sample_portraits[n]), label=n) for n in ("person1", "person2")]
    for order, swaps in ((("person1", "person2"), 0), (("person2", "person1"), 2)):  # control first
        photo = swapped_photo(*(sample_portraits[n] for n in order))
        result = service.generate(GenerationRequest(subjects=subjects, visitor_id="v", consent=True, seed=1,
                                                    num_images=1))
        (cand,) = result.candidates
        assert all(s is not None and s > 0.92 for s in cand.identity_scores)  # both faces found either way
        assert cand.instead == ([None, None] if swaps == 0 else [1, 0])
        stored = _stored(service)[-1]
        assert stored.face_matches["binding"]["swaps"] == swaps
