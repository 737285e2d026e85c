"""Generation on Ray Serve replicas: the deployment (one pipeline per replica), deploying it, and its client.

``idglow serve`` deploys :class:`IdGlowGenerator` on a running Ray cluster: every replica loads the pipeline once
with the same model options the app and ``idglow generate`` take (:class:`GeneratorOptions`), one replica per GPU
(CPU replicas on a machine without GPUs), and runs one generation at a time. A request is a
:class:`GenerationCall` (the per-request knobs of one pipeline call, and the adapter folder of the model version
to use, so one deployment serves every version); the replica streams a :class:`StepEvent` per denoising step,
then the pipeline's :class:`~idglow.pipeline.IdGlowOutput` (images, seeds, parameters, face matches).

:class:`RayGenerator` is the client: it streams one call, reports steps to a callback, cancels the request when
the caller stops, and turns Ray's failures into two plain errors: :class:`GeneratorStoppedError` (the replica
died during the generation) and :class:`GeneratorUnreachableError` (no cluster, or no deployment).

Ray is imported only inside the functions that need it: ``import idglow.serving`` works without Ray installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from idglow.errors import IdGlowError, InputError
from idglow.loading import ModelSettings

logger = logging.getLogger(__name__)

DEFAULT_APP_NAME = "idglow"
DEPLOYMENT_NAME = "IdGlowGenerator"
STOPPED_MESSAGE = "The generator stopped during your generation, please try again."
ADAPTERS_KEPT = 4  # adapters of other model versions a replica keeps loaded


class GeneratorStoppedError(IdGlowError):
    """The replica running this generation stopped (killed, crashed or restarted); nothing was produced."""


class GeneratorUnreachableError(IdGlowError):
    """The Ray cluster or the generator deployment cannot be reached."""


class GenerationCancelled(IdGlowError):
    """The caller cancelled the generation; the pipeline stopped at the next step."""


@dataclass(frozen=True)
class GeneratorOptions:
    """How each replica loads its pipeline: the model settings and the memory options of ``idglow generate``.
    torch_threads: CPU threads of a replica's torch (None: torch's default). nice: the CPU priority a replica
    lowers itself to (0 to 19, as ``nice``; 0 leaves it), for replicas that share a machine's cores with the
    web app, whose answers then come first."""

    model: ModelSettings = field(default_factory=ModelSettings)
    quantize: str | None = None
    quant_backend: str = "auto"
    cpu_offload: bool = False
    torch_threads: int | None = None
    nice: int = 0

    def __post_init__(self) -> None:
        if self.torch_threads is not None and self.torch_threads < 1:
            raise InputError(f"torch_threads {self.torch_threads} must be at least 1")
        if not 0 <= self.nice <= 19:
            raise InputError(f"--replica-nice {self.nice} must be between 0 and 19")


def lower_cpu_priority(nice: int) -> int | None:
    """Lower every thread of this process to at least ``nice`` (Linux keeps a nice value per thread; a thread
    started later inherits that of the thread that starts it). Returns the lowest nice value among the threads
    (None where the system has no /proc)."""
    if not os.path.isdir(f"/proc/{os.getpid()}/task"):
        return None
    values = []
    for tid in (int(t) for t in os.listdir(f"/proc/{os.getpid()}/task")):
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            values.append(os.getpriority(os.PRIO_PROCESS, tid))
        except OSError:  # a thread that ended meanwhile
            continue
    return min(values, default=None)


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas and what each takes. ``min_replicas``/``max_replicas`` (both or neither) turn on
    Serve's autoscaling, starting from ``replicas``. num_gpus: GPUs per replica (1: one replica per GPU; 0: CPU
    replicas). num_cpus: CPUs Ray reserves per replica."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    num_gpus: float = 0.0
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise InputError(f"--replicas {self.replicas} must be at least 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise InputError("give both --min-replicas and --max-replicas for autoscaling, or neither")
        if self.autoscaling and not 0 <= self.min_replicas <= self.replicas <= self.max_replicas:
            raise InputError(f"need 0 <= --min-replicas ({self.min_replicas}) <= --replicas ({self.replicas}) <= "
                             f"--max-replicas ({self.max_replicas})")
        if self.num_gpus < 0 or self.num_cpus <= 0:
            raise InputError(f"a replica needs num_gpus >= 0 and num_cpus > 0, got {self.num_gpus}, {self.num_cpus}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    @property
    def most_replicas(self) -> int:
        """The largest number of replicas this plan may run (generations that can run at once)."""
        return self.max_replicas if self.autoscaling else self.replicas

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options``: one generation at a time per replica."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": 1,
        }
        if self.autoscaling:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": self.replicas, "target_ongoing_requests": 1,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


@dataclass
class GenerationCall:
    """The per-request knobs of one pipeline call. prompt_kwargs: the prompt arguments (``prompt`` or the written
    prompt's ``pipeline_kwargs()``). adapter_dir: the adapter folder of the model version to use (None: the
    replica's own adapter)."""

    prompt_kwargs: dict[str, Any]
    subjects: list
    seed: int
    task: str = "fusion"
    num_inference_steps: int | None = None
    guidance_scale: float = 3.5
    height: int | None = None
    width: int | None = None
    id_scale: Any = 1.0
    id_window: tuple[float, float] | None = None
    id_profile: str | None = None
    num_images: int = 1
    adapter_dir: str | None = None
    subject_positions: list[int] | None = None


@dataclass(frozen=True)
class StepEvent:
    """Progress of a streamed generation: ``step`` of ``total`` denoising steps done."""

    step: int
    total: int
    replica: str = ""


@dataclass
class GenerationDone:
    """The last item of a streamed generation: the pipeline's output and the replica that made it."""

    output: Any
    replica: str


@dataclass
class FrontEndModel:
    """What a front end needs of the model when the pipeline runs on replicas: the face analyzer (the people of
    an upload) and the tokenizers (the prompt writer measures prompts with them). No weights."""

    face_analyzer: Any
    tokenizer: Any = None
    tokenizer_2: Any = None
    device: str = "cpu"


def front_end_model(settings: ModelSettings, face_analyzer) -> FrontEndModel:
    """The FrontEndModel of ``settings``: the tiny model's tokenizers, or those of the FLUX folder."""
    if settings.is_tiny:
        from idglow.tiny import tiny_tokenizer

        return FrontEndModel(face_analyzer, tiny_tokenizer(77), tiny_tokenizer(128))
    from pathlib import Path

    from transformers import AutoTokenizer

    from idglow.pipeline import check_flux_folder

    folder = Path(check_flux_folder(settings.model_dir))
    return FrontEndModel(face_analyzer, AutoTokenizer.from_pretrained(folder / "tokenizer"),
                         AutoTokenizer.from_pretrained(folder / "tokenizer_2"))


class PipelineRunner:
    """A replica's work, without Ray: one pipeline, the adapters of other model versions loaded once each (a few
    kept), and one call run with a step callback that can stop it. The app's local generator is one too."""

    def __init__(self, pipe, default_steps: int = 28, default_size: int = 1024):
        self.pipe = pipe
        self.default_steps = default_steps
        self.default_size = default_size
        self._adapters: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, options: GeneratorOptions) -> PipelineRunner:
        """Load the pipeline ``options`` describe (and set this process's torch threads)."""
        import torch

        from idglow.loading import load_pipeline

        if options.torch_threads:
            torch.set_num_threads(options.torch_threads)
        pipe = load_pipeline(options.model, quantize=options.quantize, quant_backend=options.quant_backend,
                             cpu_offload=options.cpu_offload)
        return cls(pipe, options.model.default_steps, options.model.default_size)

    def adapter_for(self, adapter_dir: str | None):
        """The IdGlowAdapter saved in ``adapter_dir`` (None: the pipeline's own), checked against this model."""
        if adapter_dir is None:
            return None
        with self._lock:
            if adapter_dir in self._adapters:
                self._adapters.move_to_end(adapter_dir)
                return self._adapters[adapter_dir]
            from idglow.adapter import IdGlowAdapter
            from idglow.pipeline import check_adapter_folder

            transformer = self.pipe.transformer
            adapter = IdGlowAdapter.from_pretrained(str(check_adapter_folder(adapter_dir)))
            adapter.check_compatible(transformer)
            id_dim = self.pipe.face_analyzer.embedding_dim
            if adapter.config.id_dim != id_dim:
                raise InputError(f"the adapter in {adapter_dir} expects {adapter.config.id_dim}-d face embeddings; "
                                 f"the face analyzer gives {id_dim}-d")
            adapter = adapter.to(device=transformer.device, dtype=transformer.dtype).eval()
            self._adapters[adapter_dir] = adapter
            while len(self._adapters) > ADAPTERS_KEPT:
                self._adapters.popitem(last=False)
            return adapter

    def run(self, call: GenerationCall, on_step: Callable[[int, int], None] | None = None,
            stop: threading.Event | None = None):
        """Run ``call``; ``on_step(done, total)`` after each step. When ``stop`` is set the pipeline stops at the
        next step with :class:`GenerationCancelled`."""
        steps = call.num_inference_steps or self.default_steps

        def callback(pipe, step, timestep, kwargs):
            if stop is not None and stop.is_set():
                raise GenerationCancelled(f"generation cancelled at step {step + 1} of {steps}")
            if on_step is not None:
                on_step(step + 1, steps)
            return kwargs

        size = self.default_size
        return self._pipeline_for_one_call()(
            **call.prompt_kwargs, subjects=list(call.subjects), task=call.task, id_scale=call.id_scale,
            id_window=call.id_window, id_profile=call.id_profile, num_images=call.num_images, seed=call.seed,
            subject_positions=call.subject_positions,
            adapter=self.adapter_for(call.adapter_dir), num_inference_steps=steps,
            guidance_scale=float(call.guidance_scale), height=call.height or size, width=call.width or size,
            callback_on_step_end=callback,
        )

    def _pipeline_for_one_call(self):
        """The shared pipeline with a scheduler of its own (models and hooks shared, the step index not)."""
        call = copy.copy(self.pipe)
        call.scheduler = copy.deepcopy(self.pipe.scheduler)
        return call


class IdGlowGenerator:
    """The Ray Serve deployment's class (made a deployment by :func:`build_application`): one
    :class:`PipelineRunner` per replica; :meth:`generate` streams the steps and then the output."""

    def __init__(self, options: GeneratorOptions):
        self.nice = options.nice
        lower_cpu_priority(self.nice)
        self.runner = PipelineRunner.load(options)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.stopped = 0  # generations stopped at a step because their request was cancelled
        logger.info("generator replica %s ready", self.replica)

    def info(self) -> dict[str, Any]:
        """Where this replica runs (host:pid, device), how many generations it stopped on cancellation, the
        default steps and size of its model, and its threads' lowest nice value."""
        return {"replica": self.replica, "device": str(self.runner.pipe.device), "pid": os.getpid(),
                "stopped": self.stopped, "default_steps": self.runner.default_steps,
                "default_size": self.runner.default_size, "nice": lower_cpu_priority(self.nice)}

    async def generate(self, call: GenerationCall) -> AsyncIterator[StepEvent | GenerationDone]:
        """Stream one generation: a StepEvent per step, then GenerationDone. A cancelled request stops the
        pipeline at its next step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def on_step(done: int, total: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, StepEvent(done, total, self.replica))

        work = loop.run_in_executor(None, self._run, call, on_step, stop)
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))
        try:
            while (event := await events.get()) is not None:
                yield event
            yield GenerationDone(output=await work, replica=self.replica)
        except (asyncio.CancelledError, GeneratorExit):
            stop.set()
            logger.info("generation cancelled on replica %s", self.replica)
            raise
        finally:
            work.add_done_callback(self._count_stopped)

    def _run(self, call: GenerationCall, on_step, stop: threading.Event):
        lower_cpu_priority(self.nice)  # threads the event loop started since, this one included
        return self.runner.run(call, on_step, stop)

    def _count_stopped(self, work: asyncio.Future) -> None:
        if not work.cancelled() and isinstance(work.exception(), GenerationCancelled):
            self.stopped += 1


def build_application(options: GeneratorOptions, plan: ReplicaPlan):
    """The Ray Serve application of :class:`IdGlowGenerator` with ``plan``'s replicas."""
    from ray import serve

    deployment = serve.deployment(IdGlowGenerator, name=DEPLOYMENT_NAME).options(**plan.deployment_options())
    return deployment.bind(options)


def connect(address: str, timeout_s: float = 10.0) -> None:
    """Join the Ray cluster at ``address`` (host:port of its head) as a client; refuse at once when nothing
    answers there (:class:`GeneratorUnreachableError`)."""
    import ray

    if ray.is_initialized():
        return
    check_reachable(address, timeout_s)
    ray.init(address=address, namespace="idglow", logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=False)


def check_reachable(address: str, timeout_s: float = 2.0) -> None:
    """Raise :class:`GeneratorUnreachableError` unless something accepts a connection at ``address``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Ray address {address!r} must be HOST:PORT of the cluster's head, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise GeneratorUnreachableError(
            f"The Ray cluster at {address} is not reachable ({err.strerror or err})."
        ) from None


def deploy(address: str, options: GeneratorOptions, plan: ReplicaPlan, name: str = DEFAULT_APP_NAME):
    """Deploy the generator on the cluster at ``address`` as application ``name`` and return its handle once
    every replica has loaded its pipeline."""
    from ray import serve

    connect(address)
    serve.start(proxy_location="Disabled")
    return serve.run(build_application(options, plan), name=name, route_prefix=None, blocking=False)


def deployment_status(address: str, name: str = DEFAULT_APP_NAME) -> dict[str, Any]:
    """The application's status, its deployment's status, its replicas by state, and ``max_replicas``: the most
    replicas Serve's autoscaler may start (None when the deployment is not autoscaled). ``{}`` when not deployed.
    Read from Serve's controller, never from a replica, so it answers while every replica is generating."""
    from ray import serve

    connect(address)
    app = serve.status().applications.get(name)
    if app is None:
        return {}
    dep = app.deployments.get(DEPLOYMENT_NAME)
    return {
        "application": str(getattr(app.status, "value", app.status)),
        "deployment": str(getattr(dep.status, "value", dep.status)) if dep else "missing",
        "replicas": {str(getattr(k, "value", k)): n for k, n in (dep.replica_states if dep else {}).items()},
        "message": (dep.message if dep else "") or app.message,
        "max_replicas": autoscaling_max_replicas(name) if dep else None,
    }


def autoscaling_max_replicas(name: str = DEFAULT_APP_NAME) -> int | None:
    """The ``max_replicas`` of the generator deployment's autoscaling config in application ``name``, as Serve's
    controller holds it (the deployment config of Serve's REST API, read through the controller the caller is
    connected to, so no dashboard is needed). None when the deployment is not autoscaled, or when this Ray
    version describes it otherwise (then the caller follows the running replicas)."""
    from ray.serve.schema import ServeInstanceDetails

    try:
        from ray.serve.context import _get_global_client  # serve.status() reads the same details this way

        details = ServeInstanceDetails(**_get_global_client().get_serve_details())
        config = details.applications[name].deployments[DEPLOYMENT_NAME].deployment_config
    except (ImportError, KeyError, AttributeError, TypeError, ValueError) as err:
        logger.warning("cannot read the generator's autoscaling config (%s); following its running replicas", err)
        return None
    autoscaling = config.autoscaling_config
    if autoscaling is None:
        return None
    if isinstance(autoscaling, dict):
        return autoscaling.get("max_replicas")
    return getattr(autoscaling, "max_replicas", None)


def output_of(events: Iterator[StepEvent | GenerationDone],
              on_step: Callable[[int, int], None] | None = None) -> Any:
    """The output at the end of a generation's event stream, with ``on_step(done, total)`` per step. The stream is
    closed at once when ``on_step`` raises (the request is cancelled); a stream that ends without an output is
    a stopped generator."""
    with contextlib.closing(events):
        for event in events:
            if isinstance(event, GenerationDone):
                return event.output
            if on_step is not None:
                on_step(event.step, event.total)
    raise GeneratorStoppedError(STOPPED_MESSAGE)


class RayGenerator:
    """Client of the generator deployed by :func:`deploy`; safe to share between threads.

    Failures come back as plain errors: :class:`GeneratorUnreachableError` when no cluster answers at
    ``address`` or nothing is deployed as ``name``, :class:`GeneratorStoppedError` when the replica dies during
    the generation; an input error raised by the pipeline comes back as itself."""

    def __init__(self, address: str, name: str = DEFAULT_APP_NAME, connect_timeout_s: float = 2.0):
        self.address = address
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self._handle = None
        self._lock = threading.Lock()

    def handle(self):
        """The deployment's handle (connecting on first use)."""
        with self._lock:
            if self._handle is None:
                from ray import serve

                connect(self.address, self.connect_timeout_s)
                try:
                    self._handle = serve.get_app_handle(self.name)
                except Exception as err:  # Serve raises its own exception type when nothing is deployed
                    raise GeneratorUnreachableError(
                        f"No generator is deployed as {self.name!r} on the Ray cluster at {self.address}: run "
                        f"`idglow serve --ray-address {self.address}` first ({err})."
                    ) from None
            return self._handle

    def info(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The answering replica's :meth:`IdGlowGenerator.info`."""
        check_reachable(self.address, self.connect_timeout_s)
        return self._result(lambda: self.handle().info.remote().result(timeout_s=timeout_s))

    def run(self, call: GenerationCall, on_step: Callable[[int, int], None] | None = None) -> Any:
        """Run ``call`` on a replica and return its IdGlowOutput; ``on_step(done, total)`` per step. If
        ``on_step`` raises (the caller stops waiting), the request is cancelled and the error goes on."""
        return output_of(self.events(call), on_step)

    def events(self, call: GenerationCall) -> Iterator[StepEvent | GenerationDone]:
        """The replica's stream for ``call``: StepEvents, then GenerationDone. Closing the iterator early
        cancels the request (the replica stops at its next step)."""
        check_reachable(self.address, self.connect_timeout_s)  # a gone cluster answers at once, not after retries
        response = self._result(lambda: self.handle().generate.options(stream=True).remote(call))
        stream = iter(response)
        try:
            while (event := self._result(lambda: next(stream, None))) is not None:
                yield event
                if isinstance(event, GenerationDone):
                    return
        finally:
            if not response.cancelled():
                response.cancel()

    def _result(self, work: Callable[[], Any]) -> Any:
        """Run ``work``, turning Ray's errors into this module's."""
        from ray import exceptions as rex

        try:
            return work()
        except rex.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, (IdGlowError, ValueError)):
                raise cause from None
            if isinstance(cause, rex.RayActorError):
                raise GeneratorStoppedError(STOPPED_MESSAGE) from err
            raise
        except (rex.RayActorError, rex.ActorUnavailableError, rex.ObjectLostError, rex.WorkerCrashedError) as err:
            raise GeneratorStoppedError(STOPPED_MESSAGE) from err
        except (rex.GetTimeoutError, rex.RaySystemError, ConnectionError) as err:
            raise GeneratorUnreachableError(f"The Ray cluster at {self.address} did not answer ({err}).") from err
