"""Wiring of the app's services from its settings (used by app.py and by the tests)."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

logger = logging.getLogger(__name__)


def use_temp_area(data_dir: Path, registry) -> Path:
    """Point the web server's temporary area (uploads and the copies of served files) at ``<data_dir>/tmp``,
    so that nothing of a visitor lands outside the data dir, and guard it with ``registry`` (an
    :class:`~annotation.privacy.uploads.UploadRegistry`).
    Call it before the gr.Blocks is built: Gradio reads ``GRADIO_TEMP_DIR`` then and at launch."""
    from annotation.store.storage import temp_area

    temp_dir = temp_area(data_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)
    registry.watch(temp_dir)
    return temp_dir


def share_cpu_with_the_server(device) -> None:
    """Keep the web server answering while a generation runs: shorter GIL turns (a generation is mostly Python
    between small tensor ops on CPU, and would otherwise hold the interpreter for 5 ms at a time), and on CPU one
    core left to the server. Measured with ``benchmarks/bench_busy.py`` (README)."""
    import sys

    import torch

    sys.setswitchinterval(0.001)
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cpu" and cores > 1:
        torch.set_num_threads(min(torch.get_num_threads(), cores - 1))


FACES_KEPT_S = 15 * 60  # how long the app keeps a photo's faces in memory


def face_analyzer_for_the_server(model):
    """The face analyzer the app serves with: dlib in a process of its own (its native calls hold the
    interpreter for up to 75 ms each, during which the server could answer no one), insightface in this
    process (onnxruntime lets the interpreter go while it runs); either remembers the faces of the photos it
    analysed in the last 15 minutes, so that a reference photo is analysed once, not twice per generation
    ("Delete my data" forgets them at once)."""
    import functools

    from idglow.faces.memo import RememberedFaces
    from idglow.loading import load_face_analyzer

    if model.faces == "dlib":
        from idglow.faces.process import AnalyzerProcess

        return RememberedFaces(AnalyzerProcess(functools.partial(load_face_analyzer, model)), max_age_s=FACES_KEPT_S)
    return RememberedFaces(load_face_analyzer(model), max_age_s=FACES_KEPT_S)


REPLICAS_POLL_S = 5.0  # how often the app reads the generator's running replicas (--generator ray)


def ray_generator(settings, model):
    """(front-end model, generator, concurrency) for ``--generator ray``: the face analyzer and tokenizers here,
    the pipeline calls sent to the Ray Serve deployment through a client process (a lost cluster cannot end the
    server). As many generations run at once as :func:`generations_at_once` says (at least ``--concurrency``;
    :func:`follow_replicas` keeps it so); a cluster that does not answer now leaves the app up, and Generate says
    so."""
    from idglow.serving import front_end_model
    from idglow.serving_process import GeneratorProcess

    generator = GeneratorProcess(settings.ray_address, settings.ray_app)
    at_once = generations_at_once(generator, least=settings.concurrency, timeout_s=60)
    logger.info("generating on the Ray Serve deployment %r at %s (%d generations at once)", settings.ray_app,
                settings.ray_address, at_once or settings.concurrency)
    return front_end_model(model, face_analyzer_for_the_server(model)), generator, at_once or settings.concurrency


def generations_at_once(generator, least: int = 1, timeout_s: float = 10.0, warn: bool = True) -> int | None:
    """How many generations the app sends the deployment at once: its running replicas, or, when Serve
    autoscales it, the most replicas it may run (the requests beyond the running replicas wait in Serve's
    router, where the autoscaler sees them and starts replicas); at least ``least``. None when the cluster does
    not answer."""
    from idglow.serving import GeneratorUnreachableError

    try:
        status = generator.status(timeout_s=timeout_s)
    except GeneratorUnreachableError as err:
        logger.log(logging.WARNING if warn else logging.DEBUG, "generator not reachable: %s", err)
        return None
    running = status.get("replicas", {}).get("RUNNING", 0)
    return max(least, running, status.get("max_replicas") or 0)


def follow_replicas(generator, queue, least: int = 1, every_s: float = REPLICAS_POLL_S):
    """Start a daemon thread that sets how many generations ``queue`` lets run at once to
    :func:`generations_at_once`, read every ``every_s`` seconds: the app follows a deployment redeployed with
    other replicas or autoscaling bounds, and a replica restarted after a crash. While the cluster does not
    answer the last value stays. Returns a function that stops the thread and waits for it to end (after that,
    nothing calls the generator)."""
    import threading

    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(every_s):
            at_once = generations_at_once(generator, least, timeout_s=max(every_s, 5.0), warn=False)
            if at_once is not None:
                queue.set_concurrency(at_once)

    thread = threading.Thread(target=follow, daemon=True, name="idglow-follow-replicas")
    thread.start()

    def end() -> None:
        stop.set()
        thread.join()

    return end


def generation_backend(settings, model):
    """(pipeline, generator, generations at once, queue, closers) for ``--generator``: the pipeline loaded here
    (generator None), or the front-end model and the Ray Serve deployment, whose replicas a thread follows.
    The closers end the thread and the processes started here."""
    from annotation.generation.gpu_queue import GpuQueue
    from idglow.loading import load_pipeline

    if settings.generator == "ray":
        pipe, generator, concurrency = ray_generator(settings, model)
    else:
        pipe, generator, concurrency = load_pipeline(model, face_analyzer_for_the_server(model)), None, settings.concurrency
        share_cpu_with_the_server(pipe.device)
    queue = GpuQueue(concurrency, settings.max_queue, settings.max_per_visitor)
    closers = []
    if generator is not None:
        closers += [follow_replicas(generator, queue, least=settings.concurrency), generator.close]
    if callable(close_faces := getattr(pipe.face_analyzer, "close", None)):  # a face analysis process
        closers.append(close_faces)
    return pipe, generator, concurrency, queue, closers


def build_services(settings):
    """(AppServices, RetentionSweeper) for these settings: database migrated, pipeline loaded, base version
    registered."""
    from annotation.generation.safety import PromptBlocklist, load_safety_checker
    from annotation.generation.service import GenerationService
    from annotation.privacy.private_downloads import PrivateDownloads
    from annotation.privacy.retention import RetentionSweeper
    from annotation.privacy.uploads import UploadLimits, UploadRegistry
    from annotation.store.research import ResearchService, ServedWeights
    from annotation.store.settings import resolve_data_dir, resolve_db_url
    from annotation.ui.auth import SessionAuth
    from annotation.ui.blocks import AppServices
    from annotation.ui.services import AnnotationService
    from annotation.ui.theme import banner
    from db.engine import make_engine, make_session_factory
    from db.migrate import upgrade
    from idglow.loading import TINY_MODEL_NOTE, ModelSettings

    data_dir = resolve_data_dir(settings.data_dir, settings.db_url)
    data_dir.mkdir(parents=True, exist_ok=True)
    uploads = UploadRegistry()
    temp_dir = use_temp_area(data_dir, uploads)
    engine = make_engine(resolve_db_url(settings.db_url, data_dir))
    upgrade(engine)
    sessions = make_session_factory(engine)
    safety = load_safety_checker(settings.safety_model, threshold=settings.safety_threshold, device=settings.device)
    blocklist = PromptBlocklist.from_file(settings.blocklist_file) if settings.blocklist_file else PromptBlocklist()
    model = ModelSettings(model_dir=settings.model_dir, adapter_dir=settings.adapter_dir, faces=settings.faces,
                          face_root=settings.face_root, face_pack=settings.face_pack, device=settings.device)
    pipe, generator, concurrency, queue, closers = generation_backend(settings, model)
    generation = GenerationService(
        pipe, sessions, data_dir, base_version=settings.version_name,
        queue=queue, safety_checker=safety, blocklist=blocklist,
        retention=settings.retention, default_steps=model.default_steps, default_size=model.default_size,
        generator=generator,
    )
    generation.ensure_base_version(settings.adapter_dir, base_model=settings.model_dir or "tiny")
    services = AppServices(
        generation=generation, annotation=AnnotationService(sessions, data_dir),
        research=ResearchService(sessions, data_dir, ServedWeights(
            None if settings.is_tiny else str(settings.model_dir),
            str(settings.adapter_dir) if settings.adapter_dir else None)), auth=SessionAuth(sessions),
        limits=UploadLimits(max_bytes=settings.max_upload_mb * 2**20, max_pixels=settings.max_pixels),
        banner=banner(settings.is_tiny, TINY_MODEL_NOTE), tiny=settings.is_tiny,
        default_steps=model.default_steps, default_size=model.default_size,
        concurrency=concurrency, max_queue=settings.max_queue, export_ttl_s=settings.export_minutes * 60,
        uploads=uploads, downloads=PrivateDownloads(), closers=closers,
    )
    sweeper = RetentionSweeper(sessions, data_dir, interval=timedelta(minutes=settings.sweep_minutes),
                               retention=settings.retention, temp_dir=temp_dir, registry=uploads)
    return services, sweeper
