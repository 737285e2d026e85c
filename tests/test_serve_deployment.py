"""The generator on Ray Serve replicas: `idglow serve` on a real local Ray head (2 CPU replicas of the tiny
pipeline), outputs equal to the local pipeline's, model versions, progress, cancellation and a killed replica."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from idglow.serving import (
    GenerationCall,
    GenerationCancelled,
    GenerationDone,
    GeneratorOptions,
    GeneratorStoppedError,
    GeneratorUnreachableError,
    IdGlowGenerator,
    PipelineRunner,
    RayGenerator,
    ReplicaPlan,
    StepEvent,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subjects(sample_portraits):
    from idglow.images import decode_image
    from idglow.subjects import SubjectRef

    return [SubjectRef(image=decode_image(sample_portraits[name]), label=name) for name in sorted(sample_portraits)[:2]]


@pytest.fixture(scope="module")
def local_runner():
    """The pipeline as a replica loads it, in this process (one torch thread, like each CPU replica)."""
    return PipelineRunner.load(GeneratorOptions(torch_threads=1))


def _call(subjects, **overrides) -> GenerationCall:
    values = dict(prompt_kwargs={"prompt": "two people in a park"}, subjects=subjects, seed=11, num_inference_steps=3)
    return GenerationCall(**{**values, **overrides})


def _pixels(output) -> list[np.ndarray]:
    return [np.asarray(image) for image in output.images]


def _same_output(a, b) -> bool:
    return (a.seeds == b.seeds and a.params == b.params
            and all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b)))
            and [m.similarity for m in a.face_matches] == [m.similarity for m in b.face_matches])


def _idglow(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "idglow", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


# -- without a cluster --------------------------------------------------------------------------------------------
def test_neither_the_library_nor_its_commands_import_ray():
    code = ("import sys, idglow, idglow.serving, idglow.cli; idglow.cli.build_parser(); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_replica_plan_runs_one_generation_per_replica_and_autoscales_within_bounds():
    fixed = ReplicaPlan(replicas=2, num_gpus=1).deployment_options()
    assert fixed["num_replicas"] == 2 and fixed["max_ongoing_requests"] == 1
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1}
    scaled = ReplicaPlan(replicas=2, min_replicas=1, max_replicas=4)
    assert scaled.deployment_options()["autoscaling_config"]["max_replicas"] == 4 and scaled.most_replicas == 4
    with pytest.raises(ValueError, match="--max-replicas"):
        ReplicaPlan(replicas=5, min_replicas=1, max_replicas=4)
    with pytest.raises(ValueError, match="both"):
        ReplicaPlan(min_replicas=1)


def test_serve_flags_give_one_gpu_per_replica_on_a_gpu_cluster_and_cpu_replicas_elsewhere():
    from idglow.cli import build_parser
    from idglow.commands.serve import generator_options, replica_plan

    args = build_parser().parse_args(["serve", "--ray-address", "h:1", "--replicas", "3", "--dtype", "float32"])
    assert replica_plan(args, cluster_gpus=4).num_gpus == 1
    cpu_plan = replica_plan(args, cluster_gpus=0)
    assert cpu_plan.num_gpus == 0 and cpu_plan.replicas == 3
    options = generator_options(args, cpu_plan)
    assert options.torch_threads == 1 and options.model.dtype == "float32"
    on_cpu = build_parser().parse_args(["serve", "--ray-address", "h:1", "--device", "cpu"])
    assert replica_plan(on_cpu, cluster_gpus=4).num_gpus == 0


def test_an_unreachable_cluster_is_answered_at_once(subjects):
    from serve_cluster import free_port

    start = time.perf_counter()
    with pytest.raises(GeneratorUnreachableError, match="not reachable"):
        RayGenerator(f"127.0.0.1:{free_port()}").run(_call(subjects))
    assert time.perf_counter() - start < 3.0
    assert _idglow("serve", "--status", "--ray-address", f"127.0.0.1:{free_port()}").returncode == 2


def test_a_set_stop_event_ends_the_generation_at_the_next_step(local_runner, subjects):
    stop, steps = threading.Event(), []

    def on_step(done, total):
        steps.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(GenerationCancelled):
        local_runner.run(_call(subjects, num_inference_steps=50), on_step, stop)
    assert steps == [1, 2]


def test_closing_the_replica_stream_stops_its_pipeline(local_runner, subjects):
    """What Serve does when the caller cancels: the replica's async stream is closed mid-way."""
    generator = IdGlowGenerator.__new__(IdGlowGenerator)
    generator.runner, generator.replica, generator.stopped, generator.nice = local_runner, "here", 0, 0

    async def cancel_after_two_steps():
        stream = generator.generate(_call(subjects, num_inference_steps=500))
        events = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        for _ in range(200):  # the pipeline thread ends at its next step
            if generator.stopped:
                break
            await asyncio.sleep(0.05)
        return events

    events = asyncio.run(cancel_after_two_steps())
    assert [e.step for e in events] == [1, 2] and generator.stopped == 1


# -- on a real local Ray head -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray.serve")
    from serve_cluster import LocalRayHead

    temp = Path(tempfile.mkdtemp(prefix="idgray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    head = LocalRayHead(temp, num_cpus=2).start()
    yield head
    import ray

    ray.shutdown()
    head.stop()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(ray_head):
    """`idglow serve` with 2 CPU replicas of the tiny model; returns its output."""
    out = _idglow("serve", "--ray-address", ray_head.address, "--replicas", "2", "--cpus-per-replica", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def generator(ray_head, deployed):
    return RayGenerator(ray_head.address)


@pytest.mark.ray
def test_idglow_serve_returns_once_both_replicas_run_and_reports_them(ray_head, deployed):
    assert "2 RUNNING" in deployed
    status = _idglow("serve", "--status", "--ray-address", ray_head.address)
    assert status.returncode == 0 and "application RUNNING" in status.stdout and "2 RUNNING" in status.stdout
    missing = _idglow("serve", "--status", "--ray-address", ray_head.address, "--name", "other")
    assert missing.returncode == 1 and "no generator deployed" in missing.stdout


@pytest.mark.ray
def test_a_replica_gives_the_local_pipelines_images_seeds_params_and_scores(generator, local_runner, subjects):
    steps = []
    served = generator.run(_call(subjects), on_step=lambda done, total: steps.append((done, total)))
    local = local_runner.run(_call(subjects))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert served.seeds == [11] and len(served.face_matches) == 1
    assert _same_output(served, local)
    assert not _same_output(served, local_runner.run(_call(subjects, seed=12)))  # the comparison can fail


@pytest.mark.ray
def test_a_model_version_with_its_own_adapter_is_served(generator, local_runner, subjects, tmp_path):
    from idglow.testing import tiny_adapter

    tiny_adapter(local_runner.pipe.transformer, seed=5).save_pretrained(tmp_path / "v2")
    versioned = _call(subjects, adapter_dir=str(tmp_path / "v2"))
    served = generator.run(versioned)
    assert _same_output(served, local_runner.run(versioned))
    assert not _same_output(served, generator.run(_call(subjects)))


@pytest.mark.ray
def test_two_requests_run_at_once_on_the_two_replicas(generator, subjects):
    replicas: list[str] = []

    def one(seed):
        for event in generator.events(_call(subjects, seed=seed, num_inference_steps=6)):
            if isinstance(event, GenerationDone):
                replicas.append(event.replica)

    threads = [threading.Thread(target=one, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(replicas) == 2 and len(set(replicas)) == 2


@pytest.mark.ray
def test_a_cancelled_request_stops_its_generation_on_the_replica(generator, subjects):
    stream = generator.events(_call(subjects, num_inference_steps=3000))
    first = next(stream)
    assert isinstance(first, StepEvent) and first.total == 3000
    stream.close()  # the caller leaves
    deadline, stopped = time.monotonic() + 40, 0
    while time.monotonic() < deadline and not stopped:
        info = generator.info(timeout_s=20)  # a replica still generating would not answer before the deadline
        stopped = info["stopped"] if info["replica"] == first.replica else 0
    assert stopped == 1


@pytest.fixture(scope="module")
def generator_process(ray_head, deployed):
    from idglow.serving_process import GeneratorProcess

    process = GeneratorProcess(ray_head.address)
    yield process
    process.close()


@pytest.mark.ray
def test_the_client_process_streams_the_same_output_without_ray_in_the_caller(generator_process, local_runner,
                                                                               subjects):
    steps = []
    served = generator_process.run(_call(subjects), on_step=lambda done, total: steps.append(done))
    assert steps == [1, 2, 3] and _same_output(served, local_runner.run(_call(subjects)))
    with pytest.raises(ValueError, match="num_images"):  # an input error comes back as itself
        generator_process.run(_call(subjects, num_images=0))


@pytest.mark.ray
def test_when_the_client_process_dies_its_calls_fail_plainly_and_the_next_call_starts_a_new_one(
        generator_process, subjects):
    stream = generator_process.events(_call(subjects, num_inference_steps=60))
    next(stream)
    old = generator_process._process
    old.kill()  # as Ray ends a process that lost its cluster
    with pytest.raises(GeneratorUnreachableError, match="connection"):
        for _ in stream:
            pass
    assert generator_process.run(_call(subjects)).seeds == [11]
    assert generator_process._process.pid != old.pid


@pytest.mark.ray
def test_a_killed_replica_ends_its_request_with_the_stopped_error_and_the_other_serves(generator, subjects):
    stream = generator.events(_call(subjects, num_inference_steps=3000))
    first = next(stream)
    os.kill(int(first.replica.rsplit(":", 1)[1]), signal.SIGKILL)
    start = time.perf_counter()
    with pytest.raises(GeneratorStoppedError, match="please try again"):
        for _ in stream:
            pass
    assert time.perf_counter() - start < 30
    served = generator.run(_call(subjects))
    assert served.seeds == [11]
