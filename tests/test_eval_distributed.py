"""`idglow eval` under `accelerate launch` with 2 CPU processes (gloo), as README writes the command: each
process runs its own shard of the cases, the rows are gathered, and the main process alone writes the same report
as a single process on the same cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_run import build_aesthetic_head, build_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
          "--main_process_port", "0"]


def _eval(launch: list[str], out: Path, *args) -> subprocess.CompletedProcess:
    """``[launch] -m idglow -v eval ... --out OUT`` with one torch thread per process (stdout and stderr kept)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [*launch, "-m", "idglow", "-v", "eval", "--no-progress", "--bootstrap", "200", "--out", str(out),
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _assert_same(a, b, where: str = "") -> None:
    """Equal JSON values, floats within 1e-6 (two processes may sum in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, abs=1e-6), where
    else:
        assert a == b, where


def test_eval_on_two_processes_shards_cases_and_writes_the_single_process_report(tmp_path):
    clip = build_tiny_clip(tmp_path / "clip")
    build_aesthetic_head(tmp_path / "aesthetic.pth")
    args = ["--benchmark", "fusion", "--limit", 2, "--steps", 2, "--configs", "base,idglow",
            "--clip", clip, "--aesthetic", tmp_path / "aesthetic.pth"]
    two = _eval(LAUNCH, tmp_path / "two", *args)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _eval([sys.executable], tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr[-3000:]

    report = json.loads((tmp_path / "two" / "report.json").read_text())
    single = json.loads((tmp_path / "one" / "report.json").read_text())
    ids = [row["id"] for row in single["cases"]]
    assert len(ids) == 2
    # World size 2, a different case on each process: each says so itself, and the report records it.
    assert f"process 0 of 2 ran cases {ids[:1]}" in two.stderr
    assert f"process 1 of 2 ran cases {ids[1:]}" in two.stderr
    assert report["processes"] == [{"rank": 0, "cases": ids[:1]}, {"rank": 1, "cases": ids[1:]}]
    assert single["processes"] == [{"rank": 0, "cases": ids}]
    # Only the main process prints the summary and writes the report.
    assert two.stdout.count("report: ") == 1 and two.stdout.count("generated 4, cached 0") == 1
    assert "2 processes: process 0 ran " in two.stdout
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["cases", "pareto.png", "report.json",
                                                                       "report.md"]

    # Same images (seeds belong to cases, not to processes) and the same numbers as one process.
    for row in single["cases"]:
        for result in row["results"].values():
            for name in result["images"]:
                assert np.array_equal(_pixels(tmp_path / "two" / "cases" / row["id"] / name),
                                      _pixels(tmp_path / "one" / "cases" / row["id"] / name)), (row["id"], name)
    for key in ("cases", "summary", "differences", "by_num_subjects", "prompt_fidelity", "pareto", "skipped",
                "stats", "settings", "analyzer"):
        _assert_same(single[key], report[key], key)
    assert (tmp_path / "two" / "report.md").read_text() == (tmp_path / "one" / "report.md").read_text()

    # The comparison can fail: the scores tell the images apart (another configuration, another case).
    scores = [row["results"][c]["aesthetic"] for row in single["cases"] for c in ("base", "idglow")]
    assert len({round(s, 6) for s in scores}) == len(scores)


def test_a_failing_case_stops_every_process_with_the_reason(tmp_path, sample_portraits):
    """A case one process cannot run (no face in a subject's photo) ends the whole launch with that reason, from
    the failing process and from the one that waited for it, and no report is written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("person1", "person2"):
        (photos / f"{name}.jpg").write_bytes(sample_portraits[name].read_bytes())
    Image.new("RGB", (128, 128), (90, 120, 150)).save(photos / "blank.png")
    manifest = {"name": "mine", "task": "fusion", "cases": [
        {"id": "pair", "subjects": [{"image": "photos/person1.jpg"}, {"image": "photos/person2.jpg"}]},
        {"id": "faceless", "subjects": [{"image": "photos/person1.jpg"}, {"image": "photos/blank.png"}]},
    ]}
    (tmp_path / "mine.json").write_text(json.dumps(manifest))
    two = _eval(LAUNCH, tmp_path / "two", "--benchmark", tmp_path / "mine.json", "--steps", 1, "--configs", "base")
    assert two.returncode != 0
    assert "case 'faceless': no face found in subject 2" in two.stderr
    assert "process 1 failed: InputError: case 'faceless'" in two.stderr
    assert (tmp_path / "two" / "cases" / "pair").is_dir()  # process 0 ran its case
    assert not (tmp_path / "two" / "report.json").exists()
