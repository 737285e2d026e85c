"""OpenMP wait policy benchmark: a small torch training loop alone and beside a second copy of itself, with torch's
OpenMP threads spinning while they wait for work (the default) and sleeping (``OMP_WAIT_POLICY=PASSIVE``, what
``scripts/test.sh`` sets for the test suite, whose two workers and their processes share the cores).

    python benchmarks/bench_omp_wait.py                # 100 steps per loop
    python benchmarks/bench_omp_wait.py --steps 20

The loop trains a transformer encoder layer of the tiny model's width (128, 4 heads) on batches of 16 × 96
tokens, in a process of its own (the policy is read when the OpenMP runtime starts), with torch's default
thread count. Prints each setting's seconds per loop and the ratios to the default policy alone; no verdicts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

QUICK_ARGS = ["--steps", "10"]
POLICIES = {"spinning (default)": None, "sleeping (PASSIVE)": "PASSIVE"}


def train_loop(steps: int) -> float:
    """Seconds for ``steps`` forward/backward/AdamW steps of one encoder layer (d=128, 4 heads)."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(128, 4, dim_feedforward=512, batch_first=True)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    x = torch.randn(16, 96, 128)
    start = time.perf_counter()
    for _ in range(steps):
        loss = layer(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def run_loops(copies: int, steps: int, policy: str | None) -> list[float]:
    """Seconds per loop of ``copies`` loops started together, each in its own process under ``policy``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--child", "--steps", str(steps)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a loop failed: {outputs}")
    return [float(out.split()[-1]) for out in outputs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per loop")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(f"{train_loop(args.steps):.4f}")
        return 0
    seconds = {(name, copies): max(run_loops(copies, args.steps, policy))
               for name, policy in POLICIES.items() for copies in (1, 2)}
    base = seconds[("spinning (default)", 1)]
    print(f"{args.steps} training steps per loop, {os.cpu_count()} CPUs; seconds per loop, and its ratio to one "
          "loop alone with spinning threads")
    for (name, copies), s in seconds.items():
        where = "alone" if copies == 1 else "beside a second loop"
        print(f"  {name:20s} {where:22s} {s:7.2f} s  {s / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
