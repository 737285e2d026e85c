"""The app's services on real parts: tiny pipeline + dlib, migrated SQLite, saved adapters and classifiers."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from annotation.generation.gpu_queue import GpuQueue, QueueFullError
from annotation.generation.safety import BlockedPromptError, ImageClassifierSafetyChecker, PromptBlocklist
from annotation.generation.service import GenerationRequest, GenerationService
from annotation.privacy.retention import RetentionSweeper
from db.models import Candidate, Comparison, ComparisonKind, Generation, ReferencePhoto
from db.types import utcnow
from idglow.errors import InputError
from idglow.images import decode_image
from idglow.subjects import SubjectRef

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipe():
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.testing import tiny_pipeline

    return tiny_pipeline(face_analyzer=DlibAnalyzer())


@pytest.fixture()
def store(tmp_path):
    from store_fixtures import make_store

    return make_store(tmp_path / "data")


def make_service(pipe, store, **kwargs) -> GenerationService:
    service = GenerationService(pipe, store.sessions, store.data_dir, base_version="tiny-demo", default_steps=2,
                                default_size=64, **kwargs)
    service.ensure_base_version()
    return service


def request(portraits, visitor="v1", **kwargs) -> GenerationRequest:
    subjects = [SubjectRef(decode_image(portraits[n]), label=n) for n in ("person1", "person2")]
    kwargs = {"seed": 5, "num_images": 2, **kwargs}
    return GenerationRequest(subjects=subjects, visitor_id=visitor, consent=True, **kwargs)


def test_serves_several_model_versions_without_touching_the_base(pipe, store, sample_portraits, tmp_path):
    from annotation.store.candidates import register_model_version
    from idglow.testing import tiny_adapter

    tiny_adapter(pipe.transformer, seed=11).save_pretrained(tmp_path / "v2")
    with store.sessions() as session:
        register_model_version(session, "tiny-v2", tmp_path / "v2")
    service = make_service(pipe, store)
    assert service.model_versions() == ["tiny-demo", "tiny-v2"]
    base_adapter = pipe.adapter
    before = {k: v.clone() for k, v in pipe.adapter.state_dict().items()}

    result = service.generate(request(sample_portraits, model_versions=["tiny-demo", "tiny-v2"]))
    by_version = {}
    for cand in result.candidates:
        by_version.setdefault(cand.model_version, []).append(cand)
    assert [c.seed for c in by_version["tiny-demo"]] == [c.seed for c in by_version["tiny-v2"]] == [5, 6]
    a, b = by_version["tiny-demo"][0].image, by_version["tiny-v2"][0].image
    assert a.tobytes() != b.tobytes(), "another adapter must change the image"
    assert pipe.adapter is base_adapter
    assert all(torch.equal(before[k], v) for k, v in pipe.adapter.state_dict().items())
    assert service.adapter_for("tiny-v2") is service.adapter_for("tiny-v2")  # loaded once

    # the base version alone still gives the base images (nothing shared was changed by the other call)
    again = service.generate(request(sample_portraits, visitor="v2"))
    assert again.candidates[0].image.tobytes() == a.tobytes()

    # in the pool, the two versions on the same people are paired for the leaderboard
    assert service.add_to_pool("v1", result.generation_ids) == 4
    with store.sessions() as session:
        kinds = session.scalars(select(Comparison.kind)).all()
    assert kinds.count(ComparisonKind.cross_model) >= 2 and kinds.count(ComparisonKind.within_generation) == 2


def test_retention_sweep_removes_files_and_rows(pipe, store, sample_portraits):
    service = make_service(pipe, store, retention=timedelta(minutes=10))
    service.generate(request(sample_portraits))
    files = list((store.data_dir / "images").rglob("*.png"))
    assert len(files) == 4  # two references, two candidates
    sweeper = RetentionSweeper(store.sessions, store.data_dir)
    assert sweeper.sweep_once(now=utcnow() + timedelta(minutes=9)).generations == 0  # not expired yet
    result = sweeper.sweep_once(now=utcnow() + timedelta(minutes=11))
    assert result.generations == 1 and result.reference_photos == 2
    assert not any(f.exists() for f in files)
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 0
        assert session.scalar(select(func.count()).select_from(ReferencePhoto)) == 0


def test_sweeper_thread_runs_and_stops(store):
    sweeper = RetentionSweeper(store.sessions, store.data_dir, interval=timedelta(milliseconds=50)).start()
    sweeper.stop()
    assert sweeper._thread is None


def test_closing_the_services_ends_the_replica_follower_and_the_processes_they_started(tmp_path):
    """The app in ray mode, on a cluster that does not answer: closing its services ends the thread that reads
    the deployment's replicas and the face analysis process (left running, the thread kept polling a stopped
    cluster from a closed app). The Ray client process starts only once the cluster answers; the Ray tests close
    their apps the same way."""
    import multiprocessing

    from serve_cluster import free_port

    from annotation.ui.settings import AppSettings
    from annotation.ui.wiring import build_services

    def followers():
        return [t for t in threading.enumerate() if t.name == "idglow-follow-replicas"]

    before = set(multiprocessing.active_children())
    services, _ = build_services(AppSettings(data_dir=str(tmp_path / "data"), generator="ray",
                                             ray_address=f"127.0.0.1:{free_port()}"))
    started = set(multiprocessing.active_children()) - before
    running = followers()
    assert len(started) == 1 and len(running) == 1  # the face analysis process, the follower
    services.close()
    assert not running[0].is_alive() and not followers()
    assert not started & set(multiprocessing.active_children())
    services.close()  # a second close does nothing


def test_pooled_results_are_kept_but_delete_my_data_removes_exactly_that_visitor(pipe, store, sample_portraits):
    service = make_service(pipe, store, retention=timedelta(seconds=1))
    mine = service.generate(request(sample_portraits, visitor="me", seed=1))
    theirs = service.generate(request({"person1": sample_portraits["person3"],
                                       "person2": sample_portraits["person4"]}, visitor="them", seed=9))
    service.add_to_pool("me", mine.generation_ids)
    with pytest.raises(Exception, match="not yours"):
        service.add_to_pool("them", mine.generation_ids)
    RetentionSweeper(store.sessions, store.data_dir).sweep_once(now=utcnow() + timedelta(hours=1))
    with store.sessions() as session:  # pooled: kept past the retention time; the other visitor's expired
        assert session.scalars(select(Generation.visitor_id)).all() == ["me"]
    theirs_gone = service.delete_visitor_data("them")
    assert theirs_gone.generations == 0
    mine_files = {p for p in (store.data_dir / "images").rglob("*.png")}
    downloads = {p for p in (store.data_dir / "downloads" / "me").rglob("*") if p.is_file()}
    assert len(mine_files) == 4 and len(downloads) == 3  # two PNGs and the zip
    deleted = service.delete_visitor_data("me")
    assert deleted.generations == 1 and deleted.reference_photos == 2 and deleted.files == 4 + len(downloads)
    assert not any(p.exists() for p in mine_files | downloads)
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Candidate)) == 0
    assert theirs.generation_ids


def test_delete_my_data_leaves_other_visitors_alone(pipe, store, sample_portraits):
    service = make_service(pipe, store)
    service.generate(request(sample_portraits, visitor="a", seed=1))
    service.generate(request({"person1": sample_portraits["person3"], "person2": sample_portraits["person4"]},
                             visitor="b", seed=2))
    with store.sessions() as session:
        b_paths = set(session.scalars(select(Candidate.image_path).join(Generation).where(Generation.visitor_id == "b")))
        b_paths |= set(session.scalars(select(ReferencePhoto.path).where(ReferencePhoto.visitor_id == "b")))
    service.delete_visitor_data("a")
    with store.sessions() as session:
        assert set(session.scalars(select(Generation.visitor_id))) == {"b"}
        assert set(session.scalars(select(ReferencePhoto.visitor_id))) == {"b"}
    assert all((store.data_dir / p).exists() for p in b_paths) and len(b_paths) == 4


def test_full_queue_refuses_at_once():
    queue = GpuQueue(concurrency=1, max_waiting=1)
    running, release = threading.Event(), threading.Event()
    waits = []

    def hold():
        with queue.slot():
            running.set()
            release.wait(5)

    def wait():
        with queue.slot(on_wait=waits.append):
            pass

    t1 = threading.Thread(target=hold)
    t1.start()
    running.wait(5)
    t2 = threading.Thread(target=wait)
    t2.start()
    for _ in range(100):
        if queue.admitted == 2:
            break
        threading.Event().wait(0.01)
    with pytest.raises(QueueFullError, match="busy .* the limit is 2"):
        with queue.slot():
            pass
    release.set()
    t1.join(5)
    t2.join(5)
    assert waits == [1] and queue.admitted == 0


def test_blocklist_is_on_for_children_and_the_age_task(pipe, store, sample_portraits):
    blocklist = PromptBlocklist()
    blocklist.check(["two friends at the beach in bikini"], "fusion", [None, 35])  # adults: off
    with pytest.raises(BlockedPromptError, match="'bikini'.*a child subject"):
        blocklist.check(["two friends at the beach in bikini"], "fusion", [None, 8])
    with pytest.raises(BlockedPromptError, match="'nude'.*the age task"):
        blocklist.check(["Nude portrait"], "age", [30, 40])
    blocklist.check(["a nudeless word, nudes?"], "age", [30])  # whole words only... "nudes" is not "nude"
    with pytest.raises(BlockedPromptError):
        PromptBlocklist(always_on=True).check(["naked"], "fusion", [None])

    service = make_service(pipe, store)
    req = request(sample_portraits, task="age", scene="kids in the bath")
    req.subjects = [replace(s, target_age=age) for s, age in zip(req.subjects, (6, 7))]
    with pytest.raises(BlockedPromptError, match="'bath'"):
        service.generate(req)
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 0


def _save_classifier(folder: Path, flag_everything: bool) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=37, num_labels=2,
                       id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 10.0] if flag_everything else [10.0, 0.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def test_safety_checker_withholds_flagged_images(pipe, store, sample_portraits, tmp_path):
    _save_classifier(tmp_path / "flags-all", flag_everything=True)
    _save_classifier(tmp_path / "flags-none", flag_everything=False)
    strict = ImageClassifierSafetyChecker(tmp_path / "flags-all")
    result = make_service(pipe, store, safety_checker=strict).generate(request(sample_portraits))
    assert all(c.image is None and "withheld by the safety checker (nsfw" in c.withheld for c in result.candidates)
    with store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Candidate)) == 0
    relaxed = ImageClassifierSafetyChecker(tmp_path / "flags-none")
    assert [v.flagged for v in relaxed.check([result.candidates and decode_image(sample_portraits["person1"])])] == [False]


def test_public_mode_refuses_to_start_without_a_safety_checker(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "app.py", "--public", "--data-dir", str(tmp_path / "data")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "idglow: error: --public needs a safety checker: pass --safety-model DIR" in proc.stderr
    assert not (tmp_path / "data").exists(), "nothing may be set up before the settings are valid"


def test_settings_from_flags_and_environment():
    from annotation.ui.settings import parse_settings

    s = parse_settings([], {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8080", "IDGLOW_DATA_DIR": "/d",
                            "IDGLOW_RETENTION_HOURS": "2"})
    assert (s.host, s.port, s.data_dir, s.retention) == ("0.0.0.0", 8080, "/d", timedelta(hours=2))
    s = parse_settings(["--port", "9000", "--public", "--safety-model", "m"], {"GRADIO_SERVER_PORT": "8080"})
    assert (s.port, s.host, s.public, s.version_name) == (9000, "0.0.0.0", True, "tiny-demo")
    with pytest.raises(Exception, match="IDGLOW_MAX_QUEUE='many' is not a valid int"):
        parse_settings([], {"IDGLOW_MAX_QUEUE": "many"})


def test_downloads_are_named_by_seed_under_the_visitors_folder(pipe, store, sample_portraits):
    import json
    import zipfile

    from PIL import Image

    result = make_service(pipe, store).generate(request(sample_portraits, visitor="c0ffee", seed=40))
    folder = store.data_dir / "downloads" / "c0ffee"
    assert [p.name for p in result.downloads.images] == ["idglow_40.png", "idglow_41.png"]
    assert all(p.parent == folder for p in result.downloads.images)
    with Image.open(result.downloads.images[1]) as im:
        assert im.tobytes() == result.candidates[1].image.tobytes()
    archive = result.downloads.archive
    assert archive.parent == folder and archive.name.startswith("idglow_") and archive.name.endswith("_seed40.zip")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["idglow_40.png", "idglow_41.png", "parameters.json"]
        params = json.loads(zf.read("parameters.json"))
    assert params["seed"] == 40 and params["people"] == ["person1", "person2"] and params["prompt"] == result.prompt


def test_missing_faces_have_no_score_rather_than_zero(pipe, store, sample_portraits):
    """The tiny model's abstract images contain no face: every score is None (shown as "face not found")."""
    result = make_service(pipe, store).generate(request(sample_portraits))
    assert all(c.identity_scores == [None, None] for c in result.candidates)


def test_the_age_task_needs_one_target_age_not_one_per_person(pipe, store, sample_portraits):
    service = make_service(pipe, store)
    with pytest.raises(InputError, match="at least one person"):
        service.check_request(request(sample_portraits, task="age"))
    req = request(sample_portraits, task="age", num_images=1)
    req.subjects[1] = replace(req.subjects[1], target_age=70.0)
    result = service.generate(req)
    assert len(result.candidates) == 1 and "70-year-old" in result.prompt


def test_prompt_scene_and_names_have_bounded_lengths(pipe, store, sample_portraits):
    service = make_service(pipe, store)
    with pytest.raises(InputError, match="the prompt has 200000 characters; please shorten it to 1000"):
        service.check_request(request(sample_portraits, prompt="x" * 200_000))
    with pytest.raises(InputError, match="the scene has 301 characters"):
        service.check_request(request(sample_portraits, scene="y" * 301))
    req = request(sample_portraits)
    req.subjects[0] = replace(req.subjects[0], label="z" * 41)
    with pytest.raises(InputError, match="the name of person 1 has 41 characters"):
        service.check_request(req)
    with pytest.raises(InputError, match="the name of person 1 has 41 characters"):
        service.compose_prompt(req.subjects, "fusion", "")


def test_scores_and_estimated_ages_per_person_from_a_face_match():
    from annotation.generation.service import _estimated_ages, _identity_scores
    from idglow.faces.base import Face, FaceMatch
    from idglow.faces.match import match_faces

    match = FaceMatch(similarity=[0.61234, 0.0, 0.4], bboxes=[(0, 0, 1, 1), None, (2, 2, 3, 3)],
                      face_of_slot=[1, None, 0], missing=[1])
    assert _identity_scores(match, 3) == [0.6123, None, 0.4]
    assert _identity_scores(None, 2) == [None, None]
    assert _estimated_ages(match, 3) == [None, None, None]
    assert _estimated_ages(None, 2) == [None, None]
    refs = np.eye(3, 8)
    generated = [Face((2, 2, 3, 3), embedding=refs[2], age=7.2), Face((0, 0, 1, 1), embedding=refs[0], age=41.0)]
    matched = match_faces(generated, list(refs), min_similarity=0.5)
    assert matched.face_of_slot == [1, None, 0]
    assert _estimated_ages(matched, 3) == [41.0, None, 7.2]
    assert FaceMatch.from_dict(matched.to_dict()).ages == [41.0, None, 7.2]


def test_concurrent_generations_each_keep_their_own_schedule(pipe, store, sample_portraits):
    """With --concurrency 2, two requests run on the one pipeline at once: each finishes, with the images it
    gives when it runs alone."""
    service = make_service(pipe, store, queue=GpuQueue(concurrency=2, max_waiting=0))
    alone = {seed: service.generate(request(sample_portraits, visitor=f"a{seed}", seed=seed, num_images=1,
                                            num_inference_steps=6)) for seed in (3, 4)}
    both, errors = {}, []
    start = threading.Barrier(2)

    def run(seed):
        try:
            start.wait(5)
            both[seed] = service.generate(request(sample_portraits, visitor=f"b{seed}", seed=seed, num_images=1,
                                                  num_inference_steps=6))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for seed in (3, 4):
        assert both[seed].candidates[0].image.tobytes() == alone[seed].candidates[0].image.tobytes(), seed


def test_a_cpu_generation_leaves_the_server_a_core_and_short_gil_turns():
    import os
    import sys

    import torch

    from annotation.ui.wiring import share_cpu_with_the_server

    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    try:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        share_cpu_with_the_server(torch.device("cpu"))
        assert sys.getswitchinterval() == pytest.approx(0.001)
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) - 1)
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)


def test_the_linear_strength_profile_reaches_the_pipeline_and_is_stored(pipe, store, sample_portraits):
    import numpy as np

    service = make_service(pipe, store)
    with pytest.raises(InputError, match="identity strength 'steep' must be one of flat, linear"):
        service.check_request(request(sample_portraits, id_profile="steep"))
    runs = {profile: service.generate(request(sample_portraits, num_images=1, num_inference_steps=8,
                                              id_window=(0.2, 0.8), id_profile=profile))
            for profile in ("flat", "linear")}
    assert runs["linear"].params["id_profile"] == "linear" and runs["flat"].params["id_profile"] == "flat"
    flat, linear = (np.asarray(runs[p].candidates[0].image, dtype=np.int16) for p in ("flat", "linear"))
    assert np.abs(flat - linear).max() > 0
    with store.sessions() as session:
        stored = session.get(Generation, runs["linear"].generation_ids[0]).params
    assert stored["id_profile"] == "linear" and stored["id_window"][:2] == [0.2, 0.8]
