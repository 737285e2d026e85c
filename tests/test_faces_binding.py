"""Binding metrics on hand-made faces: who stands in each person's place, swaps, confusion and copy-paste, with
exact values."""

import math

import numpy as np
import pytest

from idglow.faces import (
    Face,
    GroupBinding,
    bind_group,
    copy_paste,
    identity_confusion,
    places_by_boxes,
    places_by_order,
)
from idglow.faces.binding import place_verdict, similarity_matrix
from idglow.faces.scoring import group_report, prompt_positions

E = np.eye(4, dtype=np.float32)  # four orthogonal identities (4-d embeddings)


def face(x: float, emb, size: float = 10.0) -> Face:
    return Face(bbox=(x, 0.0, x + size, size), embedding=None if emb is None else np.asarray(emb, np.float32))


def mix(a, b, wa: float, wb: float) -> np.ndarray:
    v = wa * E[a] + wb * E[b]
    return v / np.linalg.norm(v)


def test_places_by_order_reads_the_largest_faces_left_to_right():
    faces = [face(50, E[0]), face(0, E[1]), face(100, E[2], size=2)]  # the small face is not one of the two
    assert places_by_order(faces, [1, 2]) == [1, 0]
    assert places_by_order(faces, [2, 1]) == [0, 1]
    assert places_by_order(faces[:1], [1, 2]) is None  # fewer faces than people: places cannot be read
    with pytest.raises(ValueError, match="1..2"):
        places_by_order(faces, [1, 1])


def test_places_by_boxes_needs_an_iou_of_a_quarter():
    faces = [face(0, E[0]), face(30, E[1])]
    boxes = [(32, 0, 42, 10), (5, 0, 15, 10), (100, 0, 110, 10)]
    # face 1 overlaps box 0 by 8/12 = 0.667; face 0 overlaps box 1 by 5/15 = 0.333; box 2 is empty
    assert places_by_boxes(faces, boxes) == [1, 0, None]
    assert places_by_boxes(faces, boxes, min_iou=0.5) == [1, None, None]


def test_place_verdict_names_the_member_who_stands_there():
    row = np.array([0.2, 0.9, 0.1])
    assert place_verdict(row, 1, 0.5) == (True, None)
    assert place_verdict(row, 0, 0.5) == (False, 1)  # person 1's face stands in person 0's place
    assert place_verdict(row, 0, 0.95) == (False, None)  # below the threshold: a stranger, not a swap
    assert place_verdict(None, 0, 0.5) == (False, None)  # empty place


def test_identity_confusion_is_own_minus_best_other():
    assert identity_confusion(np.array([0.8, 0.3, 0.5]), 0) == pytest.approx(0.3)
    assert identity_confusion(np.array([0.4, 0.7, 0.5]), 0) == pytest.approx(-0.3)
    assert identity_confusion(np.array([0.4]), 0) is None


def test_copy_paste_follows_multiid_bench():
    # reference r and ground truth t 60° apart; g on the arc between them
    def at(deg):
        return math.cos(math.radians(deg))

    assert copy_paste(at(0), at(60), at(60)) == pytest.approx(1.0)  # g = r: pasted
    assert copy_paste(at(60), at(0), at(60)) == pytest.approx(-1.0)  # g = t: the ground truth
    assert copy_paste(at(15), at(45), at(60)) == pytest.approx(0.5)  # (45 − 15) / 60
    assert copy_paste(at(30), at(30), at(60)) == pytest.approx(0.0)


def test_swapped_pair_keeps_hungarian_similarity_and_counts_two_swaps():
    faces = [face(0, mix(1, 0, 0.95, 0.3)), face(50, mix(0, 1, 0.95, 0.3))]  # Bob's face left, Ann's right
    refs = [E[0], E[1]]  # Ann is person 0, Bob person 1; the prompt puts Ann left
    b = bind_group(faces, refs, positions=[1, 2], min_similarity=0.5)
    own = 0.95 / math.hypot(0.95, 0.3)
    assert b.match.similarity == pytest.approx([own, own])  # identity alone sees nothing wrong
    assert b.in_place == [False, False] and b.instead == [1, 0] and b.swaps == 2
    assert b.binding_accuracy == 0.0
    assert b.place_similarity == pytest.approx([0.3 / math.hypot(0.95, 0.3)] * 2)
    assert b.confusion == pytest.approx([own - 0.3 / math.hypot(0.95, 0.3)] * 2)
    right = bind_group(faces, refs, positions=[2, 1], min_similarity=0.5)
    assert right.in_place == [True, True] and right.swaps == 0 and right.binding_accuracy == 1.0


def test_no_places_means_no_binding_verdict():
    faces = [face(0, E[0]), face(50, E[1])]
    b = bind_group(faces, [E[0], E[1]], min_similarity=0.5)
    assert b.in_place == [None, None] and b.swaps is None and b.binding_accuracy is None
    assert b.confusion == pytest.approx([1.0, 1.0])


def test_a_stranger_or_an_empty_place_is_not_in_place_and_not_a_swap():
    faces = [face(0, E[2]), face(50, E[1])]  # a stranger on the left
    b = bind_group(faces, [E[0], E[1]], boxes=[(0, 0, 10, 10), (50, 0, 60, 10)], min_similarity=0.5)
    assert b.in_place == [False, True] and b.instead == [None, None] and b.swaps == 0
    assert b.match.missing == [0]
    b = bind_group(faces[1:], [E[0], E[1]], boxes=[(0, 0, 10, 10), (50, 0, 60, 10)], min_similarity=0.5)
    assert b.place_face == [None, 0] and b.in_place == [False, True]


def test_copy_paste_uses_each_persons_ground_truth():
    g = mix(0, 2, math.cos(math.radians(15)), math.sin(math.radians(15)))
    t = mix(0, 2, math.cos(math.radians(60)), math.sin(math.radians(60)))
    b = bind_group([face(0, g)], [E[0]], truth=[t], min_similarity=0.5)
    assert b.copy_paste == pytest.approx([0.5])
    assert bind_group([face(0, g)], [E[0]], truth=[None], min_similarity=0.5).copy_paste == [None]


def test_binding_round_trips_through_a_dict():
    faces = [face(0, mix(1, 0, 0.95, 0.3)), face(50, mix(0, 1, 0.95, 0.3))]
    b = bind_group(faces, [E[0], E[1]], positions=[1, 2], min_similarity=0.5)
    again = GroupBinding.from_dict(b.to_dict())
    assert again.to_dict() == b.to_dict()
    assert again.swaps == 2 and again.instead == [1, 0] and again.place_bboxes[0] == (0.0, 0.0, 10.0, 10.0)


def test_group_report_names_who_stands_there_instead():
    faces = [face(0, mix(1, 0, 0.95, 0.3)), face(50, mix(0, 1, 0.95, 0.3))]
    b = bind_group(faces, [E[0], E[1]], positions=[1, 2], min_similarity=0.5)
    report = group_report(b, ["Ann", "Bob"], [None, 8.0])
    assert report["swaps"] == 2
    assert [(p["label"], p["in_place"], p["instead"]) for p in report["people"]] == [("Ann", False, "Bob"),
                                                                                   ("Bob", False, "Ann")]
    assert report["people"][0]["bbox"] == [50.0, 0.0, 60.0, 10.0]  # Ann's face, matched wherever it stands


def test_similarity_matrix_marks_faces_without_embedding():
    m = similarity_matrix([face(0, E[0]), face(5, None)], [E[0], E[1]])
    assert m[0].tolist() == [1.0, 0.0] and np.isnan(m[1]).all()


def test_prompt_positions_reads_the_template_markers():
    text = ("A family at the beach. The first person from the left (Bob) is a man. "
            "The second person from the left (Ann) is a woman. The third person from the left (Annie) is a girl.")
    assert prompt_positions(text, ["Ann", "Bob", "Annie"]) == [2, 1, 3]
    assert prompt_positions(text, num_people=3) == [1, 2, 3]
    assert prompt_positions(text, ["Ann", "Carl", "Bob"]) is None  # Carl is not placed
    assert prompt_positions("Two people at the beach.", num_people=2) is None
