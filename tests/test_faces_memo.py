"""RememberedFaces: each photo analysed once, by content; callers cannot change what the next one gets."""

from __future__ import annotations

import numpy as np
import pytest

from idglow.faces import DlibAnalyzer
from idglow.faces.memo import RememberedFaces
from idglow.images import decode_image


class Counting:
    """A real analyzer that counts the images it is asked to analyse."""

    def __init__(self, analyzer):
        self.analyzer, self.calls = analyzer, 0
        self.embedding_dim = analyzer.embedding_dim

    def detect(self, image):
        self.calls += 1
        return self.analyzer.detect(image)


@pytest.fixture(scope="module")
def dlib():
    return DlibAnalyzer()


def test_a_generation_analyses_each_reference_photo_once_until_the_visitor_deletes(dlib, sample_portraits,
                                                                                      tmp_path):
    from store_fixtures import make_store

    from annotation.generation.service import GenerationRequest, GenerationService
    from idglow.subjects import SubjectRef
    from idglow.testing import tiny_pipeline

    counting = Counting(dlib)
    store = make_store(tmp_path / "data")
    service = GenerationService(tiny_pipeline(face_analyzer=RememberedFaces(counting)), store.sessions,
                                store.data_dir, base_version="tiny-demo", default_steps=2, default_size=64)
    service.ensure_base_version()
    subjects = [SubjectRef(decode_image(sample_portraits[n]), label=n) for n in ("person1", "person2")]
    calls = []
    for seed in (1, 2, 3):
        before = counting.calls
        service.generate(GenerationRequest(subjects=subjects, visitor_id="v1", consent=True, seed=seed,
                                           num_images=1))
        calls.append(counting.calls - before)
        if seed == 2:
            service.delete_visitor_data("v1")  # "Delete my data": the faces kept in memory go too
    # the first generation: 2 references (for the prompt and the embeddings) + 1 output; then only the output;
    # after the deletion the references are analysed again
    assert calls == [3, 1, 3]


def test_the_faces_kept_are_the_faces_found(dlib, sample_portraits):
    faces = RememberedFaces(Counting(dlib))
    first = faces.detect(sample_portraits["person1"])
    found = tuple(first[0].bbox)
    first[0].bbox = (0.0, 0.0, 1.0, 1.0)  # as a caller that maps boxes to another scale does
    again = faces.detect(decode_image(sample_portraits["person1"]))  # the same pixels, another form
    assert faces.analyzer.calls == 1 and tuple(again[0].bbox) == found
    assert np.array_equal(again[0].embedding, first[0].embedding)


def test_faces_are_kept_for_a_bounded_time(dlib, sample_portraits):
    now = [0.0]
    faces = RememberedFaces(Counting(dlib), max_age_s=60, clock=lambda: now[0])
    faces.detect(sample_portraits["person1"])
    now[0] = 59.0
    faces.detect(sample_portraits["person1"])
    assert faces.analyzer.calls == 1
    now[0] = 61.0
    faces.detect(sample_portraits["person1"])
    assert faces.analyzer.calls == 2


def test_only_the_last_photos_are_kept(dlib, sample_portraits):
    faces = RememberedFaces(Counting(dlib), size=2)
    for name in ("person1", "person2", "person3", "person1"):
        faces.detect(sample_portraits[name])
    assert faces.analyzer.calls == 4  # person1 had been let go for person3
    faces.detect(sample_portraits["person1"])
    assert faces.analyzer.calls == 4
    assert (faces.embedding_dim, faces.backend_name) == (128, "counting")
