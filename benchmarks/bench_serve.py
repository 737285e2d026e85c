"""The generator on Ray Serve replicas, measured side by side in one run on a local Ray head.

``python benchmarks/bench_serve.py [--burst 16] [--steps 8] [--latency-runs 5] [--app-burst 20] [--no-app]``

Starts a Ray head on 127.0.0.1 (2 CPUs) and deploys the tiny model (one torch thread per replica), then:

- throughput: ``--burst`` requests sent at once to 1 replica, then (the same deployment scaled to 2 replicas) to
  2 replicas; images per second and their ratio;
- added latency: one generation through Ray (idle replicas) against the same request on the same pipeline in
  this process (one torch thread), alternated ``--latency-runs`` times; medians, their ratio and difference;
- the app (unless ``--no-app``): ``python app.py`` with the local generator, then with ``--generator ray`` on the
  deployment, each under ``--app-burst`` visitors calling generate at once while an annotator votes (as
  ``bench_busy.py``): busy-answer p95 and vote p95 of each, and their ratios.

Prints one RESULT line. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")  # this process's local pipeline: one thread, like each replica
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the local Ray head helper the tests use

APP_NAME = "idglow-bench"
QUICK_ARGS = ["--burst", "8", "--latency-runs", "3", "--no-app"]


def _subjects():
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.images import decode_image
    from idglow.samples import write_sample_portraits
    from idglow.subjects import SubjectRef

    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    return [SubjectRef(image=decode_image(p)) for p in write_sample_portraits(folder, DlibAnalyzer())[:2]]


def _call(subjects, steps: int, seed: int):
    from idglow.serving import GenerationCall

    return GenerationCall(prompt_kwargs={"prompt": "two people in a park"}, subjects=subjects, seed=seed,
                          num_inference_steps=steps)


def _deploy(address: str, replicas: int) -> None:
    from idglow.serving import GeneratorOptions, ReplicaPlan, deploy

    deploy(address, GeneratorOptions(torch_threads=1), ReplicaPlan(replicas=replicas, num_cpus=1), APP_NAME)


def _burst_seconds(generator, subjects, steps: int, burst: int) -> float:
    """Seconds until ``burst`` requests sent at once have all come back."""
    with ThreadPoolExecutor(burst) as pool:
        start = time.perf_counter()
        outputs = list(pool.map(lambda s: generator.run(_call(subjects, steps, s)), range(burst)))
        seconds = time.perf_counter() - start
    assert len(outputs) == burst
    return seconds


def throughput(address: str, generator, subjects, steps: int, burst: int) -> dict:
    """Images per second for a burst on 1 replica, then on 2 (the same deployment scaled up)."""
    result = {}
    for replicas in (1, 2):
        _deploy(address, replicas)
        _burst_seconds(generator, subjects, steps, 2 * replicas)  # every replica has generated once
        seconds = _burst_seconds(generator, subjects, steps, burst)
        result[f"ips_{replicas}"] = burst / seconds
    result["ratio"] = result["ips_2"] / result["ips_1"]
    return result


def added_latency(generator, subjects, steps: int, runs: int) -> dict:
    """Median seconds of one generation via Ray and in this process, alternated on the same request."""
    from idglow.serving import GeneratorOptions, PipelineRunner

    local = PipelineRunner.load(GeneratorOptions(torch_threads=1))
    local.run(_call(subjects, steps, 0))  # warm, like the replicas
    ray_s, local_s = [], []
    for k in range(runs):
        start = time.perf_counter()
        generator.run(_call(subjects, steps, k))
        ray_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        local.run(_call(subjects, steps, k))
        local_s.append(time.perf_counter() - start)
    ray_med, local_med = statistics.median(ray_s), statistics.median(local_s)
    return {"ray_s": ray_med, "local_s": local_med, "ratio": ray_med / local_med, "added_s": ray_med - local_med}


def app_burst(extra: list[str], args: argparse.Namespace) -> dict:
    """bench_busy's burst on ``python app.py *extra``: ``--app-burst`` visitors at once while an annotator votes."""
    import bench_busy as busy

    from annotation.store.database import make_store
    from annotation.store.demo import DEMO_PASSWORD, seed_demo_data
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.samples import write_sample_portraits

    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "data")
        with store.sessions() as session:
            seed_demo_data(session, store.data_dir, candidates=24, votes=0, annotators=1)
        store.engine.dispose()
        portraits = write_sample_portraits(Path(tmp) / "samples", DlibAnalyzer())[:2]
        with busy.served_app(store.data_dir, Path(tmp) / "app.log", extra) as url:
            busy._timed_generate(busy._visitor(url, portraits), args.steps, 999)  # a running app has served one
            start, burst_outcomes = busy._burst(url, portraits, args.steps, args.app_burst, 5)
            stop, voting = busy._votes_elsewhere(url, "annotator1", DEMO_PASSWORD, args.votes)
            time.sleep(5.0)  # the annotator is voting before the burst
            start.wait(busy.DEADLINE_S)
            outcomes = burst_outcomes()
            stop.set()
            vote_s = voting()
    refused = [s for kind, s in outcomes if kind == "busy"]
    return dict(admitted=sum(kind == "done" for kind, _ in outcomes), busy=len(refused),
                errors=sum(kind.startswith("error") for kind, _ in outcomes), busy_p95_s=busy._p95(refused),
                vote_p95_ms=1000 * busy._p95(vote_s))


def app_bursts(address: str, name: str, args: argparse.Namespace) -> dict:
    """The app's burst with the local generator, then with the ray generator on the deployment."""
    return {"local": app_burst([], args),
            "ray": app_burst(["--generator", "ray", "--ray-address", address, "--ray-app", name], args)}


def run(args: argparse.Namespace) -> dict:
    """Every measurement on one local Ray head; the head is stopped at the end."""
    import ray
    from serve_cluster import LocalRayHead

    from idglow.serving import RayGenerator

    subjects = _subjects()
    head = LocalRayHead(Path(tempfile.mkdtemp(prefix="idgray", dir="/tmp")), num_cpus=2).start()
    try:
        generator = RayGenerator(head.address, APP_NAME)
        result = {"throughput": throughput(head.address, generator, subjects, args.steps, args.burst)}
        result["latency"] = added_latency(generator, subjects, args.steps, args.latency_runs)
        if not args.no_app:
            result["app"] = app_bursts(head.address, APP_NAME, args)
        return result
    finally:
        ray.shutdown()
        head.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=16, help="requests sent at once for the throughput")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per generation")
    parser.add_argument("--latency-runs", type=int, default=5, help="generations of each kind for the latency")
    parser.add_argument("--app-burst", type=int, default=20, help="visitors calling generate at once in the app")
    parser.add_argument("--votes", type=int, default=40, help="votes cast during each app burst (at most)")
    parser.add_argument("--no-app", action="store_true", help="leave out the app's busy answer and votes")
    args = parser.parse_args(argv)
    r = run(args)
    t, lat = r["throughput"], r["latency"]
    line = (f"RESULT bench_serve burst={args.burst} steps={args.steps} images_per_s_1_replica={t['ips_1']:.2f} "
            f"images_per_s_2_replicas={t['ips_2']:.2f} throughput_ratio={t['ratio']:.2f} "
            f"one_generation_ray_s={lat['ray_s']:.2f} one_generation_local_s={lat['local_s']:.2f} "
            f"latency_ratio={lat['ratio']:.2f} added_s={lat['added_s']:.2f}")
    for mode, a in r.get("app", {}).items():
        line += (f" {mode}_busy_p95_s={a['busy_p95_s']:.2f} {mode}_vote_p95_ms={a['vote_p95_ms']:.0f} "
                 f"{mode}_admitted={a['admitted']} {mode}_busy={a['busy']} {mode}_errors={a['errors']}")
    if "app" in r:
        local, ray_ = r["app"]["local"], r["app"]["ray"]
        line += (f" busy_p95_ratio_ray_over_local={ray_['busy_p95_s'] / local['busy_p95_s']:.2f}"
                 f" vote_p95_ratio_ray_over_local={ray_['vote_p95_ms'] / local['vote_p95_ms']:.2f}")
    print(line, flush=True)


if __name__ == "__main__":
    main()
