"""Crash-safety check of the vote store: a writer process records votes and appends each vote id to a side
file only after its commit; the checker SIGKILLs it at random moments and verifies after every kill that
the SQLite file is intact and that every acknowledged vote is in it.

    python -m annotation.crashcheck --kills 200 --dir /tmp/crash
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def writer_main(url: str, ack_file: str, user_id: int) -> None:
    """Vote forever as ``user_id``; append the vote id to ``ack_file`` (fsynced) after each commit."""
    from annotation.store.sampling import next_comparison
    from annotation.store.votes import VoteRequest, record_vote
    from db.engine import make_engine, make_session_factory

    sessions = make_session_factory(make_engine(url))
    rng = random.Random(os.getpid())
    with open(ack_file, "a", encoding="utf-8") as ack, sessions() as session:
        while True:
            served = next_comparison(session, user_id, overlap=64, gold_rate=0.0, rng=rng)
            if served is None:
                time.sleep(0.01)
                continue
            result = record_vote(
                session,
                VoteRequest(served.comparison_id, user_id, rng.choice(["a", "b", "tie"]), uuid.uuid4().hex),
            )
            ack.write(f"{result.vote_id}\n")
            ack.flush()
            os.fsync(ack.fileno())


@dataclass
class CrashReport:
    """What the kill loop saw: SIGKILLs sent, votes acknowledged and votes found in the database."""

    kills: int
    acknowledged: int
    in_database: int


def prepare(folder: Path, annotators: int = 8, candidates: int = 200):
    """A fresh store in ``folder`` seeded with demo comparisons and annotators, and no votes."""
    from annotation.store.database import make_store
    from annotation.store.demo import seed_demo_data

    store = make_store(folder)
    with store.sessions() as session:
        seed_demo_data(session, folder, candidates=candidates, votes=0, annotators=annotators, gold_rate=0.0)
    store.engine.dispose()
    return store


def run_kill_loop(
    folder: str | os.PathLike[str], kills: int, seed: int = 0, annotators: int = 8
) -> CrashReport:
    """Prepare a store in ``folder``, then kill a writer ``kills`` times; raise AssertionError on a lost
    acknowledged vote or a damaged file."""
    import sqlite3

    folder = Path(folder)
    store = prepare(folder, annotators=annotators)
    db_file = folder / "idglow.db"
    ack_file = folder / "acks.txt"
    rng = random.Random(seed)
    acked: set[int] = set()
    present: set[int] = set()
    # A launcher imports everything once and forks one writer per round (fast rounds); each writer is a
    # separate process that opens its own connections and is killed with SIGKILL.
    launcher = subprocess.Popen(
        [sys.executable, "-m", "annotation.crashcheck", "--launcher", store.url, str(ack_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    try:
        for k in range(kills):
            launcher.stdin.write(f"{1 + k % annotators}\n")
            launcher.stdin.flush()
            pid = int(launcher.stdout.readline())
            start_lines = len(acked)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if ack_file.exists() and len(ack_file.read_text().split()) > start_lines:
                    break
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.1))
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.001)
            acked = {int(x) for x in ack_file.read_text().split()}
            con = sqlite3.connect(db_file)
            try:
                status = con.execute("PRAGMA integrity_check").fetchone()[0]
                assert status == "ok", f"integrity_check after kill {k + 1}: {status}"
                present = {r[0] for r in con.execute("SELECT id FROM votes")}
            finally:
                con.close()
            lost = acked - present
            assert not lost, (
                f"kill {k + 1}: acknowledged votes missing from the database: {sorted(lost)[:10]}"
            )
    finally:
        launcher.stdin.close()
        launcher.wait(timeout=30)
    return CrashReport(kills, len(acked), len(present))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def launcher_main(url: str, ack_file: str) -> None:
    """Read a user id per line from stdin, fork a writer for it and print the writer's pid."""
    import annotation.store.sampling  # noqa: F401  (import once, before forking)
    import annotation.store.votes  # noqa: F401
    import db.engine  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # writers are reaped automatically
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                writer_main(url, ack_file, int(line))
            finally:
                os._exit(1)
        print(pid, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the kill loop (or, in the child processes, the writer and launcher) and print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writer", nargs=3, metavar=("URL", "ACK_FILE", "USER_ID"), help=argparse.SUPPRESS)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--dir", default=None, help="work folder (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--launcher", nargs=2, metavar=("URL", "ACK_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launcher:
        launcher_main(*args.launcher)
        return 0
    if args.writer:
        writer_main(args.writer[0], args.writer[1], int(args.writer[2]))
        return 0
    import tempfile

    folder = Path(args.dir or tempfile.mkdtemp(prefix="idglow-crash-"))
    t0 = time.perf_counter()
    report = run_kill_loop(folder, args.kills, seed=args.seed)
    print(
        f"crashcheck: {report.kills} SIGKILLs, {report.acknowledged} acknowledged votes, all present "
        f"({report.in_database} in database), integrity ok; {time.perf_counter() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
