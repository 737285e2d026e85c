"""Replicas at a lower CPU priority (`idglow serve --replica-nice N`), without a cluster: every thread of the
process is lowered, threads started afterwards inherit it, and the flag reaches the replicas' options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idglow.errors import InputError
from idglow.serving import GeneratorOptions

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, threading, time
from idglow.serving import lower_cpu_priority

def nice_of(tid):
    return int(open(f"/proc/{os.getpid()}/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])

before = threading.Event()
early = threading.Thread(target=before.wait, daemon=True)
early.start()
lowest = lower_cpu_priority(NICE)
late = []
t = threading.Thread(target=lambda: late.append(nice_of(threading.get_native_id())))
t.start(); t.join()
tasks = {}
for tid in os.listdir(f"/proc/{os.getpid()}/task"):
    try:
        tasks[int(tid)] = nice_of(tid)
    except FileNotFoundError:  # a thread (of an imported library) that ended meanwhile
        pass
print(json.dumps({"lowest": lowest, "early": tasks[early.native_id], "main": tasks[os.getpid()], "late": late[0],
                  "all": sorted(tasks.values())}))
before.set()
"""


def _probe(nice: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("NICE", str(nice))], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_every_thread_is_lowered_and_later_threads_inherit_it():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(19, start + 7)
    lowered = _probe(target)
    assert lowered["lowest"] == lowered["early"] == lowered["main"] == lowered["late"] == target
    assert set(lowered["all"]) == {target}
    left = _probe(0)  # 0 leaves the process as it was started
    assert left["main"] == left["late"] == start


def test_the_flag_reaches_the_replicas_options():
    from idglow.cli import build_parser
    from idglow.commands.serve import generator_options, replica_plan

    args = build_parser().parse_args(["serve", "--ray-address", "127.0.0.1:1", "--replica-nice", "12"])
    options = generator_options(args, replica_plan(args, cluster_gpus=0.0))
    assert options.nice == 12
    args = build_parser().parse_args(["serve", "--ray-address", "127.0.0.1:1"])
    assert generator_options(args, replica_plan(args, cluster_gpus=0.0)).nice == 0
    for bad in (-1, 20):
        with pytest.raises(InputError, match="--replica-nice"):
            GeneratorOptions(nice=bad)
