"""Preference store benchmark: vote write latency under concurrent writers, next-pair latency, export time.

    python benchmarks/bench_votes.py                      # 100k candidates, 1M votes (slow to seed)
    python benchmarks/bench_votes.py --candidates 20000 --votes 200000 --dir /tmp/bench

Seeds a SQLite store (WAL, synchronous=FULL) with demo data, then measures record_vote latency at 1, 8 and
32 concurrent writer threads (each writer is an annotator with pairs already served), next_comparison
latency, and the time to export every labelled comparison (metadata only). Prints figures, no verdicts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--votes", type=int, default=1_000_000)
    parser.add_argument("--annotators", type=int, default=64)
    parser.add_argument("--writers", default="1,8,32")
    parser.add_argument("--votes-per-writer", type=int, default=40)
    parser.add_argument("--next-draws", type=int, default=200)
    parser.add_argument("--dir", default=None, help="work folder (default: a new temporary folder)")
    args = parser.parse_args(argv)

    from annotation.demo import pattern_images, seed_demo_data
    from annotation.export import export_preferences
    from annotation.sampling import next_comparison, skip_comparison
    from annotation.testing import make_store
    from annotation.users import create_user
    from annotation.votes import VoteRequest, record_vote

    folder = Path(args.dir or tempfile.mkdtemp(prefix="idglow-bench-"))
    store = make_store(folder)
    t0 = time.perf_counter()
    with store.sessions() as s:
        summary = seed_demo_data(
            s,
            folder,
            candidates=args.candidates,
            votes=args.votes,
            annotators=args.annotators,
            images=pattern_images(8),
            gold_rate=0.01,
        )
    seed_s = time.perf_counter() - t0
    print(
        f"seeded {summary.candidates} candidates, {summary.comparisons} comparisons, {summary.votes} votes "
        f"in {seed_s:.1f}s ({folder})",
        flush=True,
    )

    results = {}
    for w in [int(x) for x in args.writers.split(",")]:
        served: dict[int, list[int]] = {}
        with store.sessions() as s:
            for i in range(w):
                uid = create_user(s, f"bench-{w}-{i}-{uuid.uuid4().hex[:6]}", "bench-password").id
                # serve pairs ahead (not timed): skip each so the next one is served, then reopen them
                comps = []
                for _ in range(args.votes_per_writer):
                    sc = next_comparison(s, uid, overlap=10**6, gold_rate=0.0)
                    comps.append(sc.comparison_id)
                    skip_comparison(s, uid, sc.comparison_id)
                served[uid] = comps
        latencies: list[float] = []
        lock = threading.Lock()
        barrier = threading.Barrier(w)

        def writer(uid: int, served=served, barrier=barrier, lock=lock, latencies=latencies) -> None:
            local = []
            with store.sessions() as s:
                barrier.wait()
                for cid in served[uid]:
                    t = time.perf_counter()
                    record_vote(s, VoteRequest(cid, uid, random.choice("ab"), uuid.uuid4().hex))
                    local.append((time.perf_counter() - t) * 1000)
            with lock:
                latencies.extend(local)

        threads = [threading.Thread(target=writer, args=(u,)) for u in served]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        results[w] = (_pct(latencies, 50), _pct(latencies, 95), _pct(latencies, 99), len(latencies) / wall)
        print(
            f"votes, {w:>2} writers: p50 {results[w][0]:.1f} ms  p95 {results[w][1]:.1f} ms  "
            f"p99 {results[w][2]:.1f} ms  ({results[w][3]:.0f} votes/s)",
            flush=True,
        )

    nxt = []
    with store.sessions() as s:
        uid = create_user(s, f"bench-next-{uuid.uuid4().hex[:6]}", "bench-password").id
        for _ in range(args.next_draws):
            t = time.perf_counter()
            sc = next_comparison(s, uid, gold_rate=0.1)
            nxt.append((time.perf_counter() - t) * 1000)
            skip_comparison(s, uid, sc.comparison_id)
    print(f"next_comparison: p50 {_pct(nxt, 50):.1f} ms  p95 {_pct(nxt, 95):.1f} ms", flush=True)

    with store.sessions() as s:
        t = time.perf_counter()
        res = export_preferences(s, folder / f"export-{uuid.uuid4().hex[:6]}")
        export_s = time.perf_counter() - t
    print(f"export: {res.rows} labelled pairs in {export_s:.1f}s ({res.rows / export_s:.0f} rows/s)")
    w_max = max(results)
    print(
        f"RESULT candidates={summary.candidates} votes={summary.votes} vote_p95_{w_max}w_ms={results[w_max][1]:.1f} "
        f"next_p95_ms={_pct(nxt, 95):.1f} export_s={export_s:.1f} export_rows={res.rows} "
        f"vote_p95_ratio_{w_max}w_vs_1w={results[w_max][1] / results[min(results)][1]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
