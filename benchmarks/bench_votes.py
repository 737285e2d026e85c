"""Preference store benchmark: vote write latency under concurrent writers, next-pair latency, export time.

    python benchmarks/bench_votes.py                      # 100k candidates, 1M votes
    python benchmarks/bench_votes.py --candidates 20000 --votes 200000 --dir /tmp/bench
    python benchmarks/bench_votes.py --dir /tmp/bench --reuse   # measure again on the store seeded there

Seeds a SQLite store (WAL, synchronous=FULL) with demo data, then measures record_vote latency at 1, 8 and
32 concurrent writer threads (each writer is an annotator with pairs already served), side by side with
group commit (the default on SQLite) and with each vote committed in the caller's session, then
next_comparison latency and the time to export every labelled comparison (metadata only). Prints figures
and ratios, no verdicts.
"""

from __future__ import annotations

import argparse
import os
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100_000)
    parser.add_argument("--votes", type=int, default=1_000_000)
    parser.add_argument("--annotators", type=int, default=64)
    parser.add_argument("--writers", default="1,8,32")
    parser.add_argument("--votes-per-writer", type=int, default=40)
    parser.add_argument("--next-draws", type=int, default=200)
    parser.add_argument("--dir", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="use the store already seeded in --dir")
    parser.add_argument(
        "--modes", default="group,session", help="vote write modes to compare: group (commit) and/or session"
    )
    return parser


def _modes(text: str, parser: argparse.ArgumentParser) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("group", "session")]
    if unknown or not modes:
        parser.error(f"--modes: unknown mode {unknown[0] if unknown else ''!r}; expected group,session")
    return modes


def _open_store(args: argparse.Namespace, parser: argparse.ArgumentParser):  # noqa: ANN202
    """The store in --dir, reused or seeded with demo data now; returns it with its candidate and vote
    counts."""
    from annotation.store.database import make_store
    from annotation.store.demo import pattern_images, seed_demo_data

    folder = Path(args.dir or tempfile.mkdtemp(prefix="idglow-bench-"))
    if args.reuse and not (folder / "idglow.db").is_file():
        parser.error(f"--reuse: no store in {folder}")
    store = make_store(folder)
    if args.reuse:
        from sqlalchemy import func, select

        from db.models import Candidate, Vote

        with store.sessions() as s:
            n_cands = s.scalar(select(func.count()).select_from(Candidate))
            n_votes = s.scalar(select(func.count()).select_from(Vote))
        print(f"reusing {folder}: {n_cands} candidates, {n_votes} votes", flush=True)
        return store, n_cands, n_votes
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
    print(
        f"seeded {summary.candidates} candidates, {summary.comparisons} comparisons, {summary.votes} votes "
        f"in {time.perf_counter() - t0:.1f}s ({folder})",
        flush=True,
    )
    return store, summary.candidates, summary.votes


def _time_votes(
    store, writers: list[int], modes: list[str], per_writer: int  # noqa: ANN001
) -> dict[tuple[str, int], tuple]:
    """Vote latency percentiles (ms) and rate (votes/s) per (mode, number of concurrent writers)."""
    results: dict[tuple[str, int], tuple[float, ...]] = {}
    for w in writers:
        for mode in modes:
            served = _serve_ahead(store, w, per_writer)
            latencies = _write_votes(store, served, group_commit=mode == "group")
            results[mode, w] = latencies
            p50, p95, p99, rate = latencies
            print(
                f"votes, {w:>2} writers, {_MODE_NAMES[mode]:<12}: p50 {p50:.1f} ms  p95 {p95:.1f} ms  "
                f"p99 {p99:.1f} ms  ({rate:.0f} votes/s)",
                flush=True,
            )
    return results


def _time_next(store, draws: int) -> list[float]:  # noqa: ANN001
    """Milliseconds per next_comparison call for a new annotator (each pair skipped to get the next)."""
    from annotation.store.sampling import next_comparison, skip_comparison
    from annotation.store.users import create_user

    nxt = []
    with store.sessions() as s:
        uid = create_user(s, f"bench-next-{uuid.uuid4().hex[:6]}", "bench-password").id
        for _ in range(draws):
            t = time.perf_counter()
            sc = next_comparison(s, uid, gold_rate=0.1)
            nxt.append((time.perf_counter() - t) * 1000)
            skip_comparison(s, uid, sc.comparison_id)
    print(f"next_comparison: p50 {_pct(nxt, 50):.1f} ms  p95 {_pct(nxt, 95):.1f} ms", flush=True)
    return nxt


def _time_export(store) -> tuple[int, float]:  # noqa: ANN001
    """Rows exported and seconds taken by a full export."""
    from annotation.store.export import export_preferences

    with store.sessions() as s:
        t = time.perf_counter()
        res = export_preferences(s, store.data_dir / f"export-{uuid.uuid4().hex[:6]}")
        export_s = time.perf_counter() - t
    print(f"export: {res.rows} labelled pairs in {export_s:.1f}s ({res.rows / export_s:.0f} rows/s)")
    return res.rows, export_s


def _ratios(results: dict[tuple[str, int], tuple], modes: list[str]) -> list[str]:
    """The vote p95 with the most writers, its ratio to the fewest writers, and session vs group mode
    when both ran."""
    mode = modes[0]
    counts = sorted(w for m, w in results if m == mode)
    w_min, w_max = counts[0], counts[-1]
    fields = [
        f"vote_p95_{w_max}w_ms={results[mode, w_max][1]:.1f}",
        f"vote_p95_ratio_{w_max}w_vs_{w_min}w={results[mode, w_max][1] / results[mode, w_min][1]:.1f}",
    ]
    if len(modes) == 2:
        fields.append(
            f"vote_p95_{w_max}w_session_vs_group={results['session', w_max][1] / results['group', w_max][1]:.1f}"
        )
        fields.append(
            f"votes_per_s_{w_max}w_group_vs_session={results['group', w_max][3] / results['session', w_max][3]:.1f}"
        )
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    store, n_cands, n_votes = _open_store(args, parser)
    modes = _modes(args.modes, parser)
    results = _time_votes(store, [int(x) for x in args.writers.split(",")], modes, args.votes_per_writer)
    nxt = _time_next(store, args.next_draws)
    rows, export_s = _time_export(store)
    vote_fields = _ratios(results, modes)
    fields = [
        f"candidates={n_cands}",
        f"votes={n_votes}",
        vote_fields[0],
        f"next_p95_ms={_pct(nxt, 95):.1f}",
        f"export_s={export_s:.1f}",
        f"export_rows={rows}",
        *vote_fields[1:],
    ]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"RESULT {' '.join(fields)} (load average {load})")
    return 0


_MODE_NAMES = {"group": "group commit", "session": "in session"}


def _serve_ahead(store, writers: int, per_writer: int) -> dict[int, list[int]]:  # noqa: ANN001
    """``writers`` new annotators with ``per_writer`` pairs served to each (not timed); each pair is skipped
    so that the next one is served, and a skipped pair can still be voted on."""
    from annotation.store.sampling import next_comparison, skip_comparison
    from annotation.store.users import create_user

    served: dict[int, list[int]] = {}
    with store.sessions() as s:
        for i in range(writers):
            uid = create_user(s, f"bench-{writers}-{i}-{uuid.uuid4().hex[:6]}", "bench-password").id
            comps = []
            for _ in range(per_writer):
                sc = next_comparison(s, uid, overlap=10**6, gold_rate=0.0)
                comps.append(sc.comparison_id)
                skip_comparison(s, uid, sc.comparison_id)
            served[uid] = comps
    return served


def _write_votes(store, served: dict[int, list[int]], *, group_commit: bool) -> tuple[float, ...]:  # noqa: ANN001
    """Every annotator votes on its pairs in its own thread, all starting at once; latency percentiles (ms)
    and the overall rate (votes/s)."""
    from annotation.store.votes import VoteRequest, record_vote

    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(served))

    def writer(uid: int) -> None:
        local = []
        try:
            with store.sessions() as s:
                barrier.wait()
                for cid in served[uid]:
                    t = time.perf_counter()
                    record_vote(
                        s,
                        VoteRequest(cid, uid, random.choice("ab"), uuid.uuid4().hex),
                        group_commit=group_commit,
                    )
                    local.append((time.perf_counter() - t) * 1000)
        except BaseException as err:  # reported below
            errors.append(err)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=writer, args=(u,)) for u in served]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    if errors:
        raise RuntimeError(f"{len(errors)} writer(s) failed") from errors[0]
    return _pct(latencies, 50), _pct(latencies, 95), _pct(latencies, 99), len(latencies) / wall


if __name__ == "__main__":
    sys.exit(main())
