"""The app through the Gradio API (gradio_client), served for real on a free local port."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from app_fixtures import running_app

    data = tmp_path_factory.mktemp("app-data")
    users = {"anna": (PASSWORD, "annotator"), "rita": (PASSWORD, "researcher")}
    with running_app(data, users=users) as running:
        yield running


def client(app) -> Client:
    return Client(app.url, verbose=False, download_files=False)


def generate(c: Client, portraits, seed=7, num_images=2):
    """Upload two portraits and generate, passing widget values by name."""
    c.predict(files=[handle_file(str(portraits["person1"])), handle_file(str(portraits["person2"]))], consent=True,
              api_name="/upload")
    return c.predict(task="fusion", scene="a picnic in a park", consent=True, seed=seed, steps=4,
                     num_images=num_images, size=64, model_versions=["tiny-demo"], label_0="Ann", label_1="Bob",
                     api_name="/generate")


def test_anonymous_generate_works_and_logs_no_address(app, sample_portraits, caplog):
    c = client(app)
    with caplog.at_level(logging.DEBUG):
        gallery, scores, seed_text, status, pngs, archive = generate(c, sample_portraits)
    assert len(gallery) == 2
    assert "seed 7" in gallery[0]["caption"] and "seed 8" in gallery[1]["caption"]
    assert "Used seed: **7**" in seed_text
    assert len(scores["data"]) == 2 and "Ann: " in scores["data"][0][1] and "Bob: " in scores["data"][0][1]
    assert [p["orig_name"] for p in pngs] == ["idglow_7.png", "idglow_8.png"] and archive["visible"]
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore", "gradio_client"))]
    assert [r for r in server_side if r.name == "annotation.generation.gpu_queue"], "the server logged nothing of this call"
    assert not [r.getMessage() for r in server_side if "127.0.0.1" in r.getMessage()]


def test_anonymous_annotation_and_research_calls_are_refused(app):
    c = client(app)
    for api_name, args in [("/annotate_show", ()), ("/vote", ("left", "clear", None, None) + (None,) * 6),
                           ("/skip", ()), ("/undo", ()), ("/flag", (None, [], "")),
                           ("/research_refresh", ()), ("/export", ("parquet", False, "half", 1, ""))]:
        with pytest.raises(AppError, match="sign in"):
            c.predict(*args, api_name=api_name)


def test_annotator_cannot_use_research_or_export(app):
    c = client(app)
    c.predict("anna", PASSWORD, api_name="/sign_in")
    for api_name, args in [("/research_refresh", ()), ("/export", ("parquet", False, "half", 1, ""))]:
        with pytest.raises(AppError, match="needs researcher"):
            c.predict(*args, api_name=api_name)


def test_wrong_password_is_refused(app):
    with pytest.raises(AppError, match="wrong user name or password"):
        client(app).predict("anna", "not-the-password", api_name="/sign_in")


def test_signed_in_annotator_votes_and_researcher_exports(app, sample_portraits, tmp_path):
    visitor = client(app)
    generate(visitor, sample_portraits, seed=100)
    assert "added to the annotation pool" in visitor.predict(api_name="/add_to_pool")

    annotator = client(app)
    annotator.predict("anna", PASSWORD, api_name="/sign_in")
    shown = annotator.predict(api_name="/annotate_show")
    assert shown[1] is not None and shown[2] is not None  # images A and B
    after = annotator.predict("left", "clear", "tie", "right", "left", "right", None, None, None, None,
                              api_name="/vote")
    assert "Vote saved" in after[4]

    researcher = client(app)
    researcher.predict("rita", PASSWORD, api_name="/sign_in")
    counts = researcher.predict(api_name="/research_refresh")[0]
    assert "**1** votes" in counts
    files, status = researcher.predict("parquet", False, "half", 1, "", api_name="/export")
    assert "idglow train dpo" in status
    names = [f["orig_name"] if isinstance(f, dict) else str(f) for f in files]
    assert names[0].endswith(".zip") and any(n.endswith(".parquet") for n in names), names


def test_a_40_megapixel_png_is_analysed_on_a_bounded_copy_in_the_face_process(app, sample_portraits, tmp_path):
    """A 6300×6300 PNG (just under the 40 MP cap; mostly flat, so a small file) holding one portrait: the running
    app finds the person on a bounded copy, and the face-analysis process that did it is the one it had."""
    from PIL import Image

    analyzer = app.services.generation.pipe.face_analyzer.analyzer  # RememberedFaces → AnalyzerProcess
    pid = analyzer.worker_pid
    assert pid is not None  # the app started it when it began serving
    portrait = Image.open(sample_portraits["person3"]).convert("RGB")
    big = Image.new("RGB", (6300, 6300), (182, 190, 176))
    big.paste(portrait.resize((1800, round(1800 * portrait.height / portrait.width))), (2200, 2000))
    path = tmp_path / "big.png"
    big.save(path)
    outputs = client(app).predict(files=[handle_file(str(path))], consent=True, api_name="/upload")
    assert "1 person ready" in str(outputs)
    assert analyzer.worker_pid == pid
