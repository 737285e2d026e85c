"""The generator on Ray Serve replicas, measured side by side in one run on a local Ray head.

``python benchmarks/bench_serve.py [--burst 16] [--steps 8] [--latency-runs 5] [--app-burst 20] [--no-app]``

Starts a Ray head on 127.0.0.1 (2 CPUs; Ray's own lowering of its workers' CPU priority, 15 nice levels by
default, turned off so that the replicas start at the app's priority) and deploys the tiny model (one torch
thread per replica), then:

- throughput: ``--burst`` requests sent at once to 1 replica, then (the same deployment scaled to 2 replicas) to
  2 replicas; images per second and their ratio;
- added latency: one generation through Ray (idle replicas) against the same request on the same pipeline in
  this process (one torch thread), alternated ``--latency-runs`` times; medians, their ratio and difference;
- the app (unless ``--no-app``): ``python app.py`` with the local generator, then with ``--generator ray`` on the
  deployment (2 replicas), then the same with the replicas redeployed at ``--replica-nice`` (a lower CPU
  priority, as ``idglow serve --replica-nice``), each under ``--app-burst`` visitors calling generate at once
  while an annotator votes (as ``bench_busy.py``): busy-answer p95 and vote p95 of each, their ratios, and where
  the machine's CPU went during each burst (the app's processes, the replicas, Ray's own processes, the rest:
  the benchmark's clients and anything else running), in cores.

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


def _deploy(address: str, replicas: int, nice: int = 0) -> None:
    from idglow.serving import GeneratorOptions, ReplicaPlan, deploy

    deploy(address, GeneratorOptions(torch_threads=1, nice=nice), ReplicaPlan(replicas=replicas, num_cpus=1),
           APP_NAME)


def _cpu_ticks() -> dict[int, tuple[int, str, int]]:
    """pid → (CPU ticks used so far, command line, parent pid) of every process now."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            found[int(stat.parent.name)] = (int(fields[11]) + int(fields[12]), cmd, int(fields[1]))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _machine_ticks() -> int:
    """CPU ticks the machine has spent busy (every core, everything but idle and I/O wait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal


def _group(pid: int, procs: dict, head_pid: int | None, app_marker: str) -> str:
    """"replicas", "ray" (the head's other processes), "app" (app.py and what it started), "clients" (this
    benchmark and its visitors' and annotator's processes) or "rest"."""
    cmd = procs[pid][1]
    if "ServeReplica" in cmd:
        return "replicas"
    seen = set()
    while pid > 1 and pid in procs and pid not in seen:
        seen.add(pid)
        if pid == head_pid:
            return "ray"
        if app_marker in procs[pid][1]:
            return "app"
        if pid == os.getpid():
            return "clients"
        pid = procs[pid][2]
    return "rest"


def _reaped_ticks() -> float:
    """CPU seconds of this process's children that have ended (the visitors' processes end before the count)."""
    t = os.times()
    return t.children_user + t.children_system


class CpuShare:
    """Where the machine's CPU went between :meth:`start` and :meth:`stop`, in cores (CPU seconds per second)
    by group: the app, the replicas, Ray's own processes, the benchmark's clients, and the rest (the busy total
    minus those: other work on the machine)."""

    def __init__(self, head_pid: int | None, app_marker: str):
        self.head_pid, self.app_marker = head_pid, app_marker

    def start(self) -> None:
        self._t0, self._m0, self._p0, self._r0 = time.monotonic(), _machine_ticks(), _cpu_ticks(), _reaped_ticks()

    def stop(self) -> dict[str, float]:
        seconds, ticks, procs = time.monotonic() - self._t0, _machine_ticks() - self._m0, _cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        used = {"app": 0, "replicas": 0, "ray": 0, "clients": (_reaped_ticks() - self._r0) * hz}
        for pid, (now, _cmd, _ppid) in procs.items():
            group = _group(pid, procs, self.head_pid, self.app_marker)
            if group != "rest":
                used[group] += now - self._p0.get(pid, (0, "", 0))[0]
        cores = {k: v / hz / seconds for k, v in used.items()}
        cores["busy"] = ticks / hz / seconds
        cores["rest"] = max(0.0, cores["busy"] - sum(cores[k] for k in used))
        return cores


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


def app_burst(extra: list[str], args: argparse.Namespace, head_pid: int | None = None) -> dict:
    """bench_busy's burst on ``python app.py *extra``: ``--app-burst`` visitors at once while an annotator votes;
    with the CPU shares of the burst (:class:`CpuShare`)."""
    import bench_busy as busy

    from annotation.store.demo import DEMO_PASSWORD

    with busy.demo_setup() as (data_dir, portraits, tmp):
        cpu = CpuShare(head_pid, str(data_dir))
        with busy.served_app(data_dir, tmp / "app.log", extra) as url:
            busy._timed_generate(busy._visitor(url, portraits), args.steps, 999)  # a running app has served one
            start, burst_outcomes = busy._burst(url, portraits, args.steps, args.app_burst, 5)
            stop, voting = busy._votes_elsewhere(url, "annotator1", DEMO_PASSWORD, args.votes)
            time.sleep(5.0)  # the annotator is voting before the burst
            cpu.start()
            start.wait(busy.DEADLINE_S)
            outcomes = burst_outcomes()
            cores = cpu.stop()
            stop.set()
            vote_s = voting()
    refused = [s for kind, s in outcomes if kind == "busy"]
    return dict(admitted=sum(kind == "done" for kind, _ in outcomes), busy=len(refused),
                errors=sum(kind.startswith("error") for kind, _ in outcomes), busy_p95_s=busy._p95(refused),
                vote_p95_ms=1000 * busy._p95(vote_s), cores=cores)


def app_bursts(head, name: str, args: argparse.Namespace) -> dict:
    """The app's burst with the local generator, then with the ray generator on the deployment (2 replicas), then
    with the replicas redeployed at ``--replica-nice``."""
    ray_app = ["--generator", "ray", "--ray-address", head.address, "--ray-app", name]
    result = {"local": app_burst([], args, head.process.pid)}
    _deploy(head.address, 2)
    result["ray"] = app_burst(ray_app, args, head.process.pid)
    _deploy(head.address, 2, nice=args.replica_nice)
    result[f"ray_nice{args.replica_nice}"] = app_burst(ray_app, args, head.process.pid)
    return result


def run(args: argparse.Namespace) -> dict:
    """Every measurement on one local Ray head; the head is stopped at the end."""
    import ray
    from serve_cluster import LocalRayHead

    from idglow.serving import RayGenerator

    subjects = _subjects()
    head = LocalRayHead(Path(tempfile.mkdtemp(prefix="idgray", dir="/tmp")), num_cpus=2, worker_niceness=0).start()
    try:
        generator = RayGenerator(head.address, APP_NAME)
        result = {"throughput": throughput(head.address, generator, subjects, args.steps, args.burst)}
        result["latency"] = added_latency(generator, subjects, args.steps, args.latency_runs)
        if not args.no_app:
            result["app"] = app_bursts(head, APP_NAME, args)
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
    parser.add_argument("--replica-nice", type=int, default=19, help="the replicas' nice value of the last app arm")
    args = parser.parse_args(argv)
    r = run(args)
    t, lat = r["throughput"], r["latency"]
    line = (f"RESULT bench_serve burst={args.burst} steps={args.steps} images_per_s_1_replica={t['ips_1']:.2f} "
            f"images_per_s_2_replicas={t['ips_2']:.2f} throughput_ratio={t['ratio']:.2f} "
            f"one_generation_ray_s={lat['ray_s']:.2f} one_generation_local_s={lat['local_s']:.2f} "
            f"latency_ratio={lat['ratio']:.2f} added_s={lat['added_s']:.2f}")
    for mode, a in r.get("app", {}).items():
        line += (f" {mode}_busy_p95_s={a['busy_p95_s']:.2f} {mode}_vote_p95_ms={a['vote_p95_ms']:.0f} "
                 f"{mode}_admitted={a['admitted']} {mode}_busy={a['busy']} {mode}_errors={a['errors']} "
                 + " ".join(f"{mode}_cores_{k}={v:.2f}" for k, v in a["cores"].items()))
    local = r.get("app", {}).get("local")
    for mode, a in r.get("app", {}).items():
        if mode != "local":
            line += (f" busy_p95_ratio_{mode}_over_local={a['busy_p95_s'] / local['busy_p95_s']:.2f}"
                     f" vote_p95_ratio_{mode}_over_local={a['vote_p95_ms'] / local['vote_p95_ms']:.2f}")
    print(line, flush=True)


if __name__ == "__main__":
    main()
