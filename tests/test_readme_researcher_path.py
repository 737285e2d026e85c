"""The "Try it on the tiny demo model" block of the documentation (docs/training.md, linked from README's
researcher journey), run line by line exactly as written (in a temporary folder with the repository's configs/,
offline), then the app's services built on the same data dir must
serve the version the block registered."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from doc_pages import section

ROOT = Path(__file__).resolve().parent.parent
SECTION = "Try it on the tiny demo model"


def readme_block() -> list[str]:
    """The command lines of the first ```bash block after the heading SECTION (README.md or a docs/ page)."""
    match = re.search(r"```bash\n(.*?)```", section(SECTION), re.S)
    assert match, f"no ```bash block after {SECTION!r}"
    return [line for line in match.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _entry_point_dir(tmp: Path) -> Path:
    """A distribution folder holding the entry points that pyproject.toml declares, as `pip install -e .`
    would write them, so the `idglow` command sees the app's commands even while the shared environment's
    installed metadata predates them (an installed copy with the same entry point is not registered twice)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dist = tmp / "idglow_checkout-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: idglow-checkout\nVersion: 0.0\n")
    lines = []
    for group, points in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in points.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return tmp


@pytest.fixture(scope="module")
def ran_block(tmp_path_factory):
    work = tmp_path_factory.mktemp("researcher")
    (work / "configs").symlink_to(ROOT / "configs")
    plugins = _entry_point_dir(tmp_path_factory.mktemp("entry_points"))
    bindir = Path(sys.executable).parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(plugins)]))
    env.pop("IDGLOW_DATA_DIR", None)
    env.pop("IDGLOW_DB_URL", None)
    outputs = []
    for line in readme_block():
        argv = shlex.split(line)
        assert argv[0] == "idglow", f"unexpected command in the documented block: {line}"
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"documented line failed: {line}\n{proc.stdout}\n{proc.stderr}"
        outputs.append((line, proc.stdout))
    return work, outputs


def test_block_covers_the_researcher_path():
    commands = [" ".join(shlex.split(line)[1:3]) for line in readme_block()]
    for needed in ("demo-data --data-dir", "export --db", "train sft", "train dpo", "models add", "models list"):
        assert any(c.startswith(needed) for c in commands), needed


@pytest.mark.slow
def test_readme_researcher_path_runs_and_the_app_serves_the_new_version(ran_block):
    work, outputs = ran_block
    out = dict(outputs)
    dpo_line = next(line for line in out if line.startswith("idglow train dpo"))
    assert "trained 2 steps" in out[dpo_line]
    assert (work / "runs/demo-dpo/adapter/config.json").is_file()
    listed = out[next(line for line in out if line.startswith("idglow models list"))]
    assert "dpo-v1" in listed

    # the export carried the embeddings the demo stored: DPO needed no face detection
    import pyarrow.parquet as pq

    from idglow.training.files import PreferenceExportDataset

    rows = pq.read_table(work / "exports/demo/data").to_pylist()
    assert rows and all(r["face_backend"] == "dlib" and r["reference_embeddings"] for r in rows)
    assert PreferenceExportDataset(work / "exports/demo", None, resolution=64, split=None).redetected == 0

    # "restart the app": build the services on the same data dir; the new version is served and generates
    from annotation.generation.service import GenerationRequest
    from annotation.ui.settings import AppSettings
    from annotation.ui.wiring import build_services
    from idglow.images import decode_image
    from idglow.subjects import SubjectRef

    services, _ = build_services(AppSettings(data_dir=str(work / "demo")))
    try:
        assert "dpo-v1" in services.generation.model_versions()
        portrait = decode_image(work / "samples/person1.jpg")
        result = services.generation.generate(GenerationRequest(
            subjects=[SubjectRef(portrait)], prompt="a portrait", num_images=1, num_inference_steps=1,
            height=64, width=64, model_versions=["dpo-v1"], consent=True, seed=0))
        assert [c.model_version for c in result.candidates] == ["dpo-v1"]
    finally:
        services.close()
