"""`python -m benchmarks`: discovery, quick settings and one line per figure."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.__main__ as runner  # noqa: E402


def test_quick_args_precedence(tmp_path):
    declared = tmp_path / "bench_declared.py"
    declared.write_text('QUICK_ARGS = ["--n", "3"]\nimport argparse\np = argparse.ArgumentParser()\n'
                        'p.add_argument("--quick")\n')
    flag = tmp_path / "bench_flag.py"
    flag.write_text('import argparse\np = argparse.ArgumentParser()\np.add_argument("--quick", action="store_true")\n')
    plain = tmp_path / "bench_plain.py"
    plain.write_text("print('x')\n")
    known = tmp_path / "bench_id_overhead.py"
    known.write_text("print('x')\n")
    assert runner.quick_args(declared) == ["--n", "3"]
    assert runner.quick_args(flag) == ["--quick"]
    assert runner.quick_args(plain) == []
    assert runner.quick_args(known) == runner.KNOWN_QUICK_ARGS["bench_id_overhead"]
    assert runner.declared_quick_args("QUICK_ARGS = compute()") is None
    assert [p.name for p in runner.discover(tmp_path)] == [
        "bench_declared.py", "bench_flag.py", "bench_id_overhead.py", "bench_plain.py"]


def test_runs_each_script_and_prints_its_figures(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_good.py").write_text(
        'import sys\nQUICK_ARGS = ["--size", "2"]\nprint("bench_good size=" + sys.argv[2] + " ratio=1.5")\n'
        'print()\nprint("second figure 0.25")\n')
    (tmp_path / "bench_bad.py").write_text('import sys\nprint("partial 1.0")\nsys.exit("broken input")\n')
    (tmp_path / "gpu_check.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(runner, "BENCH_DIR", tmp_path)
    code = runner.main([])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out == [
        "bench_bad: partial 1.0",
        "bench_bad: failed (exit 1) broken input",
        "bench_good size=2 ratio=1.5",
        "bench_good: second figure 0.25",
    ]
    assert runner.main(["--only", "good"]) == 0
    capsys.readouterr()
    assert runner.main(["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "python benchmarks/bench_bad.py", "python benchmarks/bench_good.py --size 2"]


def test_lists_the_repository_benchmarks(capsys):
    assert runner.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "python benchmarks/bench_id_overhead.py --configs tiny --repeats 2" in lines
    assert not any("gpu_check" in line for line in lines)
