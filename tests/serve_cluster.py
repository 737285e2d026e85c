"""A real local Ray head on 127.0.0.1 for the serving tests and benchmarks: ``ray start --head --block`` in a
process group of its own (every Ray process it starts stays in that group), stopped by signalling that group
only. Workers inherit this process's environment (PYTHONPATH included), so they import the code under test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

OBJECT_STORE_BYTES = 80 * 2**20


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayHead:
    """``ray start --head`` with ``num_cpus`` CPUs, no GPU, a small object store and no dashboard, every port
    chosen free (several heads can run side by side). ``address`` is what ``--ray-address`` takes."""

    def __init__(self, temp_dir: Path, num_cpus: int = 2, worker_niceness: int | None = None):
        self.temp_dir = Path(temp_dir)
        self.num_cpus = num_cpus
        self.worker_niceness = worker_niceness  # Ray starts its workers this much nicer (None: Ray's default, 15)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        ports = {flag: free_port() for flag in ("--ray-client-server-port", "--dashboard-agent-listen-port",
                                                "--dashboard-agent-grpc-port", "--metrics-export-port",
                                                "--runtime-env-agent-port", "--node-manager-port",
                                                "--object-manager-port")}
        return [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                f"--num-cpus={self.num_cpus}", "--num-gpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                *[f"{flag}={port}" for flag, port in ports.items()]]

    def start(self, timeout_s: float = 90.0) -> LocalRayHead:
        """Start the head and return once its GCS accepts connections."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd())}
        if self.worker_niceness is not None:
            env["RAY_worker_niceness"] = str(self.worker_niceness)
        log = open(self.temp_dir / "ray_start.log", "w")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.temp_dir / 'ray_start.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(2.0)  # the raylet registers just after the GCS listens
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not start in {timeout_s} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every process of the head's group: SIGTERM, then SIGKILL for what is left after ``timeout_s``
        (a replica busy in a step can take longer than that to notice SIGTERM; the tests keep nothing of it)."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.2)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.process = None


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting to be reaped do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
