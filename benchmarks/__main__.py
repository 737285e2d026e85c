"""Run every CPU benchmark of the repository (``benchmarks/bench_*.py``) and print one line per figure.

    python -m benchmarks                 # quick settings, every bench_*.py
    python -m benchmarks --full          # each script's own defaults (slow)
    python -m benchmarks --only votes,train

Each script runs in its own process. Quick settings come from a ``QUICK_ARGS = [...]`` list at the top level
of the script when it defines one, else from ``KNOWN_QUICK_ARGS`` below, else ``--quick`` when the script
accepts that flag, else none. Figures are the script's own output lines; a failing script prints one line
saying so, and the exit status is 1 when any failed. ``gpu_check.py`` is not a CPU benchmark and is not run.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

KNOWN_QUICK_ARGS: dict[str, list[str]] = {
    "bench_id_overhead": ["--configs", "tiny", "--repeats", "2"],
    "bench_votes": ["--candidates", "2000", "--votes", "20000", "--writers", "1,8", "--next-draws", "50"],
    "bench_train": ["--configs", "tiny", "--steps", "2"],
    "bench_stability_plasticity": ["--pretrain-steps", "20", "--sft-steps", "15", "--eval-scenes", "4"],
}


def discover(folder: Path | None = None) -> list[Path]:
    """The benchmark scripts in ``folder`` (default: this package), by name."""
    return sorted(p for p in (folder or BENCH_DIR).glob("bench_*.py") if p.is_file())


def declared_quick_args(source: str) -> list[str] | None:
    """The script's top-level ``QUICK_ARGS`` list of strings, read without importing it."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "QUICK_ARGS" for t in targets) and node.value is not None:
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    return None
                if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                    return list(value)
    return None


def quick_args(script: Path) -> list[str]:
    source = script.read_text(encoding="utf-8")
    declared = declared_quick_args(source)
    if declared is not None:
        return declared
    if script.stem in KNOWN_QUICK_ARGS:
        return list(KNOWN_QUICK_ARGS[script.stem])
    if '"--quick"' in source or "'--quick'" in source:
        return ["--quick"]
    return []


def run_script(script: Path, args: list[str], timeout: float) -> tuple[int, list[str], str]:
    """(exit status, output lines, last error line) of one benchmark run."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        proc = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, [], f"timed out after {timeout:.0f} s"
    lines = [line.rstrip() for line in proc.stdout.splitlines() if line.strip()]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, lines, errors[-1] if errors else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="run each script with its own default settings")
    parser.add_argument("--only", help="comma-separated names (with or without the bench_ prefix)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script (default 1800)")
    parser.add_argument("--list", action="store_true", help="print the scripts and their arguments, run nothing")
    args = parser.parse_args(argv)
    scripts = discover()
    if args.only:
        wanted = {n.strip().removeprefix("bench_") for n in args.only.split(",") if n.strip()}
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            parser.error(f"no benchmark named {', '.join(sorted(unknown))}; have "
                         f"{', '.join(s.stem for s in scripts)}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    failed = 0
    start = time.perf_counter()
    for script in scripts:
        script_args = [] if args.full else quick_args(script)
        if args.list:
            print(" ".join(["python", f"benchmarks/{script.name}", *script_args]))
            continue
        t0 = time.perf_counter()
        code, lines, error = run_script(script, script_args, args.timeout)
        for line in lines:
            print(line if line.startswith(script.stem) else f"{script.stem}: {line}", flush=True)
        if code != 0:
            failed += 1
            print(f"{script.stem}: failed (exit {code}) {error}".rstrip(), flush=True)
        print(f"[{script.stem} took {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    if not args.list:
        print(f"[{len(scripts)} benchmarks, {failed} failed, {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
