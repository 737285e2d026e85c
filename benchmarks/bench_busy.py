"""The generator under a burst: busy answers, the per-visitor limit and vote latency, on the real running app.

``python benchmarks/bench_busy.py [--burst 20] [--votes 40] [--steps 20] [--per-process 5] [--cold]``

Starts ``python app.py`` (tiny model, dlib, SQLite in a temporary folder with a seeded annotation pool, default
queue: 1 running + 8 waiting, 2 per visitor) on a free local port in its own process, then at once: ``--burst``
visitors (one session each) call generate while an annotator votes. Measures how long each refused call took
to get its answer, how many were admitted, the vote latency while they wait (and, side by side, with no
generation at all), and how one visitor's third simultaneous call is answered. Prints one RESULT line. Every loop is bounded (calls, votes and a deadline).

The annotator votes from a process of their own and the visitors call from processes of ``--per-process``
clients each, as from browsers of their own: with all clients in one Python process, the clients' own share of
that process (twenty gradio_client threads) was counted as the server's answer time. Each visitor uploads its own
copy of the portraits (same pixels, other bytes), and the app serves one generation before the burst, as a
running app has (``--cold`` leaves that out and measures the burst against a fresh process).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEADLINE_S = 300.0


def _p95(values: list[float]) -> float:
    """The 95th percentile, interpolated between the measured values (never above the largest)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def _visitor(url: str, portraits: list[Path]):
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    client.predict(files=[handle_file(str(p)) for p in portraits], consent=True, api_name="/upload")
    return client


def _generate_args(steps: int, seed: int) -> dict:
    """The Generate tab's inputs by name (the tab's API takes keyword inputs)."""
    return dict(task="fusion", scene="", prompt="", consent=True, seed=seed, steps=steps, guidance=3.5, id_scale=1.0,
                window_lo=0.0, window_hi=1.0, num_images=1, size=64, model_versions=["tiny-demo"])


def _timed_generate(client, steps: int, seed: int) -> tuple[str, float]:
    """("done" | "busy" | "error: …", seconds until the answer)."""
    from gradio_client.exceptions import AppError

    start = time.perf_counter()
    try:
        client.predict(**_generate_args(steps, seed), api_name="/generate")
        return "done", time.perf_counter() - start
    except AppError as err:
        kind = "busy" if "try again in" in str(err) else f"error: {err}"
        return kind, time.perf_counter() - start


def _vote_loop(url: str, user: str, password: str, votes: int, stop: threading.Event) -> list[float]:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    client.predict(user, password, api_name="/sign_in")
    latencies: list[float] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(latencies) < votes and not stop.is_set() and time.monotonic() < deadline:
        client.predict(api_name="/annotate_show")
        start = time.perf_counter()
        client.predict("left", "clear", None, None, None, None, None, None, None, None, api_name="/vote")
        latencies.append(time.perf_counter() - start)
    return latencies


def _vote_process(url: str, user: str, password: str, votes: int, stop, out) -> None:
    out.put(_vote_loop(url, user, password, votes, stop))


def _votes_elsewhere(url: str, user: str, password: str, votes: int):
    """Start the vote loop in a process of its own; returns (stop event, a function that waits for the latencies)."""
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_vote_process, args=(url, user, password, votes, stop, out), daemon=True)
    proc.start()

    def result() -> list[float]:
        latencies = out.get(timeout=DEADLINE_S)
        proc.join(30)
        return latencies

    return stop, result


def _burst_process(url: str, portraits: list[Path], steps: int, seeds: list[int], ready, start, out) -> None:
    """Visitors with these seeds upload, say ``ready``, wait for ``start`` (a barrier), then all call generate
    at once."""
    visitors = [_visitor(url, portraits) for _ in seeds]  # the same files: the app keeps each upload until processed
    ready.put(len(visitors))
    start.wait(DEADLINE_S)
    with ThreadPoolExecutor(len(visitors)) as pool:
        out.put(list(pool.map(lambda sv: _timed_generate(sv[1], steps, sv[0]), zip(seeds, visitors))))


def _burst(url: str, portraits: list[Path], steps: int, burst: int, per_process: int):
    """Start the visitors' processes and wait until every visitor has uploaded; returns (barrier that starts
    the burst, a function that waits for the outcomes)."""
    ctx = multiprocessing.get_context("spawn")
    groups = [list(range(k, min(k + per_process, burst))) for k in range(0, burst, per_process)]
    ready, start, out = ctx.Queue(), ctx.Barrier(len(groups) + 1), ctx.Queue()
    procs = [ctx.Process(target=_burst_process, args=(url, portraits, steps, seeds, ready, start, out), daemon=True)
             for seeds in groups]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=DEADLINE_S)

    def outcomes() -> list[tuple[str, float]]:
        found = [item for _ in procs for item in out.get(timeout=DEADLINE_S)]
        for proc in procs:
            proc.join(30)
        return found

    return start, outcomes


def _per_visitor(url: str, portraits: list[Path], steps: int) -> list[str]:
    """One visitor sends three generate calls at once; returns the three outcomes."""
    client = _visitor(url, portraits)
    jobs = [client.submit(**_generate_args(steps, 100 + k), api_name="/generate") for k in range(3)]
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=DEADLINE_S)
            outcomes.append("done")
        except Exception as err:  # AppError carries the app's message
            outcomes.append("limit" if "per visitor" in str(err) else f"error: {err}")
    return outcomes


@contextlib.contextmanager
def served_app(data_dir: Path, log: Path, extra: tuple[str, ...] | list[str] = (), start_s: float = 300):
    """``python app.py --data-dir DIR --port PORT *extra`` on a free port in its own process; yields its URL."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a port that is free now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(port), *extra],
                                cwd=root, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + start_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        if proc.poll() is not None or time.monotonic() >= deadline:
            raise RuntimeError(f"app.py did not start; see {log}")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def demo_setup() -> Iterator[tuple[Path, list[Path], Path]]:
    """(data folder, two portraits, a temporary folder): a demo store of 24 candidates and one annotator
    (``annotator1``, the demo password) with no votes, and two of the bundled sample portraits; all removed at
    the end."""
    from annotation.store.database import make_store
    from annotation.store.demo import seed_demo_data
    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.samples import write_sample_portraits

    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "data")
        with store.sessions() as session:
            seed_demo_data(session, store.data_dir, candidates=24, votes=0, annotators=1)
        store.engine.dispose()
        yield Path(store.data_dir), write_sample_portraits(Path(tmp) / "samples", DlibAnalyzer())[:2], Path(tmp)


def run(burst: int, votes: int, steps: int, per_process: int = 5, cold: bool = False) -> dict:
    from annotation.store.demo import DEMO_PASSWORD

    with demo_setup() as (data_dir, portraits, tmp):
        with served_app(data_dir, tmp / "app.log") as url:
            if not cold:
                _timed_generate(_visitor(url, portraits), steps, 999)  # the app has served a generation before
            start, burst_outcomes = _burst(url, portraits, steps, burst, per_process)
            _, idle = _votes_elsewhere(url, "annotator1", DEMO_PASSWORD, votes // 2)
            idle_s = idle()
            stop, voting = _votes_elsewhere(url, "annotator1", DEMO_PASSWORD, votes)
            time.sleep(5.0)  # the annotator's process has started, signed in and is voting before the burst
            start.wait(DEADLINE_S)  # every visitor has uploaded: all call generate now
            outcomes = burst_outcomes()
            stop.set()
            vote_s = voting()
            per_visitor = _per_visitor(url, portraits, steps)
    busy = [s for kind, s in outcomes if kind == "busy"]
    done = [s for kind, s in outcomes if kind == "done"]
    errors = [kind for kind, _ in outcomes if kind.startswith("error")]
    return dict(burst=burst, admitted=len(done), busy=len(busy), errors=len(errors),
                busy_max_s=max(busy, default=float("nan")), busy_p95_s=_p95(busy),
                longest_admitted_s=max(done, default=float("nan")), votes=len(vote_s),
                vote_p50_ms=1000 * statistics.median(vote_s) if vote_s else float("nan"),
                vote_p95_ms=1000 * _p95(vote_s), idle_vote_p50_ms=1000 * statistics.median(idle_s),
                idle_vote_p95_ms=1000 * _p95(idle_s), per_visitor="/".join(per_visitor))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=20, help="visitors calling generate at once")
    parser.add_argument("--votes", type=int, default=40, help="votes cast while they wait (at most)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per generation")
    parser.add_argument("--per-process", type=int, default=5, help="visitors' clients per process")
    parser.add_argument("--cold", action="store_true", help="no generation before the burst")
    args = parser.parse_args(argv)
    r = run(args.burst, args.votes, args.steps, args.per_process, args.cold)
    print(f"RESULT bench_busy burst={r['burst']} cold={args.cold} admitted={r['admitted']} busy={r['busy']} errors={r['errors']} "
          f"busy_answer_p95_s={r['busy_p95_s']:.2f} busy_answer_max_s={r['busy_max_s']:.2f} "
          f"longest_admitted_s={r['longest_admitted_s']:.1f} votes={r['votes']} vote_p50_ms={r['vote_p50_ms']:.0f} "
          f"vote_p95_ms={r['vote_p95_ms']:.0f} idle_vote_p50_ms={r['idle_vote_p50_ms']:.0f} "
          f"idle_vote_p95_ms={r['idle_vote_p95_ms']:.0f} vote_p95_ratio={r['vote_p95_ms'] / r['idle_vote_p95_ms']:.2f} "
          f"one_visitor_3_calls={r['per_visitor']}", flush=True)


if __name__ == "__main__":
    main()
