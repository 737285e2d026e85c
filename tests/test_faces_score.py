"""`idglow score` on two real people side by side (faces of insightface's bundled t1.jpg, dlib backend): given in
the wrong left-to-right order both are reported swapped while the Hungarian similarity stays high; in the right
order nobody is."""

import json

import pytest
from PIL import Image, ImageOps

from idglow.cli import main as cli_main


@pytest.fixture(scope="module")
def pair(sample_portraits, tmp_path_factory):
    """person1 on the left and person3 on the right, each mirrored and resized (not the reference pixels)."""
    left, right = (Image.open(sample_portraits[f"person{i}"]).convert("RGB") for i in (1, 3))
    group = Image.new("RGB", (440, 240), (128, 128, 128))
    group.paste(ImageOps.mirror(left).resize((200, 200)), (10, 20))
    group.paste(ImageOps.mirror(right).resize((200, 200)), (230, 20))
    path = tmp_path_factory.mktemp("score") / "pair.jpg"
    group.save(path, quality=95)
    return path, sample_portraits["person1"], sample_portraits["person3"]


def score(capsys, *argv) -> dict:
    assert cli_main(["score", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


def test_wrong_order_is_two_swaps_while_similarity_stays_high(pair, capsys):
    image, p1, p3 = pair
    out = score(capsys, image, "--subject", p3, "--subject", p1, "--label", "Three", "--label", "One",
                "--order", "left-to-right")
    assert out["swaps"] == 2 and out["binding_accuracy"] == 0.0
    assert [(p["in_place"], p["instead"]) for p in out["people"]] == [(False, "One"), (False, "Three")]
    assert min(p["similarity"] for p in out["people"]) >= 0.92  # dlib's same-person threshold: matched well
    assert out["missing"] == [] and all(p["confusion"] > 0 for p in out["people"])
    assert out["people"][0]["bbox"][0] > 220 and out["people"][0]["place_bbox"][0] < 220


def test_right_order_is_no_swap(pair, capsys):
    image, p1, p3 = pair
    out = score(capsys, image, "--subject", p1, "--subject", p3, "--order", "left-to-right",
                "--target-age", "30", "--target-age", "-")
    assert out["swaps"] == 0 and out["binding_accuracy"] == 1.0
    assert [p["in_place"] for p in out["people"]] == [True, True]
    assert out["people"][0]["age_error"] == pytest.approx(abs(out["people"][0]["age"] - 30.0), abs=0.11)
    assert out["people"][1]["target_age"] is None and out["people"][1]["age_error"] is None


def test_places_read_from_the_prompt(pair, capsys):
    image, p1, p3 = pair
    prompt = "The first person from the left (Ann) waves. The second person from the left (Bob) smiles."
    swapped = score(capsys, image, "--subject", p1, "--subject", p3, "--label", "Bob", "--label", "Ann",
                    "--prompt", prompt)
    assert swapped["swaps"] == 2
    right = score(capsys, image, "--subject", p1, "--subject", p3, "--label", "Ann", "--label", "Bob",
                  "--prompt", prompt)
    assert right["swaps"] == 0


def test_without_places_there_is_no_binding_verdict(pair, capsys):
    image, p1, p3 = pair
    out = score(capsys, image, "--subject", p3, "--subject", p1)
    assert out["swaps"] is None and [p["in_place"] for p in out["people"]] == [None, None]


def test_ground_truth_gives_copy_paste(pair, capsys, sample_portraits):
    image, p1, p3 = pair
    out = score(capsys, image, "--subject", p1, "--subject", p3, "--ground-truth", image)
    # the ground truth is the judged image itself: each face is its own ground truth → −1
    assert [p["copy_paste"] for p in out["people"]] == [-1.0, -1.0]


def test_bad_order_is_a_usage_error(pair, capsys):
    image, p1, p3 = pair
    assert cli_main(["score", str(image), "--subject", str(p1), "--subject", str(p3), "--order", "1,1"]) == 2
    assert "each once" in capsys.readouterr().err
