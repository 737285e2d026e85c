"""Every command README.md and the docs/ pages show in a ``bash`` block is run here as written, or is named with the
test that runs it or the reason it cannot run on a CPU machine without weights (real FLUX weights, Docker, a GPU,
full-size benchmarks). A command added to the documentation without a line here fails the classification test.

Usage lines with optional parts (``[--task fusion|age]``) run without the optional parts; the example files they
name (``mum.jpg``, ``my_group_photos/``, ``out/sft/adapter``) are made from the portraits bundled with installed
packages, and ``badcases.jsonl`` in the format ``idglow export`` writes, before the commands run, in a fresh folder,
in page order (``doc_pages.ORDER``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from doc_pages import after_text, bash_blocks, section

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

RUN = "run"  # run here, in README order, in one fresh folder
ELSEWHERE = {"bash scripts/test.sh": "the test command itself: .ci/run runs it"}
EXTERNAL = {
    "docker build": "needs Docker (the Dockerfile is linted by tests/test_app_dockerfile.py)",
    "docker run": "needs Docker and a GPU",
    "idglow train sft --config configs/sft.yaml --set model=/models/FLUX.1-dev": "needs FLUX.1-dev weights",
    "idglow train dpo --config configs/dpo.yaml --set train_data=exports/v1": "needs FLUX.1-dev weights "
    "(configs/dpo.yaml names them); the tiny-model variant runs in tests/test_readme_researcher_path.py",
    "idglow models add dpo-v1 --adapter runs/dpo/adapter": "registers the full-size DPO output above",
    "idglow eval --benchmark age --model FLUX_DIR": "needs FLUX weights, CLIP and an aesthetic head",
    "idglow generate --model models/flux": "needs FLUX weights and an insightface pack",
    "ray start --head": "starts a Ray cluster; tests/serve_cluster.py starts one on 127.0.0.1 for the Ray tests",
    "idglow serve --ray-address HEAD:6379": "needs a Ray cluster and FLUX weights; tests/test_serve_deployment.py runs "
    "`idglow serve` on a local Ray head with the tiny model",
    "python app.py --generator ray": "needs a Ray cluster and FLUX weights; tests/test_serve_app.py runs the app "
    "with --generator ray on a local Ray head with the tiny model",
    "python benchmarks/bench_votes.py": "full-size benchmark (minutes to hours); `python -m benchmarks` runs it at "
    "quick settings in tests/test_eval_benchmarks.py",
}


def readme_commands() -> list[str]:
    """The commands of the documentation's ``bash`` blocks (README.md, then docs/): continuation lines joined,
    comments dropped, spaces folded."""
    commands = []
    for block in bash_blocks():
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def readme_json_example(after: str) -> str:
    """The first ``json`` block of the documentation after the text ``after``."""
    return after_text(after).split("```json\n", 1)[1].split("```", 1)[0]


def tiny_demo_block() -> set[str]:
    """The command lines of the first ``bash`` block under "Try it on the tiny demo model"."""
    block = section("Try it on the tiny demo model").split("```bash\n", 1)[1].split("```", 1)[0]
    return {" ".join(line.split()) for line in block.splitlines() if line.strip()}


def classify(command: str) -> tuple[str, str]:
    if command in ELSEWHERE:
        return "elsewhere", ELSEWHERE[command]
    if command in tiny_demo_block():
        return "elsewhere", "tests/test_readme_researcher_path.py runs the tiny demo block verbatim"
    for prefix, reason in EXTERNAL.items():
        if command.startswith(prefix):
            return "external", reason
    return RUN, ""


def without_optional_parts(command: str) -> str:
    """``idglow eval [--limit N] --out X`` → ``idglow eval --out X`` (``".[app]"`` is not an optional part)."""
    return " ".join(re.sub(r"(?<=\s)\[[^\[\]]*\]", " ", command).split())


def in_checkout(command: str) -> bool:
    """Commands about the checkout itself (set-up, install) run in it; the others in a fresh folder."""
    return command.startswith(("bash scripts/", "pip install"))


def test_optional_parts_are_dropped_but_extras_are_kept():
    assert without_optional_parts('idglow x --a b [--c d] [--e f|g] --out O') == "idglow x --a b --out O"
    assert without_optional_parts('pip install -c r.txt -e ".[app,postgres]"') == 'pip install -c r.txt -e ".[app,postgres]"'


def test_every_readme_command_is_run_or_accounted_for():
    commands = readme_commands()
    kinds = {c: classify(c)[0] for c in commands}
    assert "bash scripts/test.sh" in kinds and kinds["bash scripts/test.sh"] == "elsewhere"
    assert sum(k == RUN for k in kinds.values()) >= 15, kinds
    unused = [p for p in EXTERNAL if not any(c.startswith(p) for c in commands)]
    assert unused == [], f"EXTERNAL names commands the documentation no longer shows: {unused}"


def _sample_inputs(folder: Path) -> None:
    """The example files README's usage lines name, from portraits bundled with installed packages."""
    from PIL import Image, ImageOps

    from idglow.faces.dlib_backend import DlibAnalyzer
    from idglow.prompting import Badcase
    from idglow.samples import _package_file, write_sample_portraits
    from idglow.testing import tiny_pipeline

    portraits = write_sample_portraits(folder / "_portraits", DlibAnalyzer())
    for name, src in zip(("mum.jpg", "dad.jpg", "kid.jpg", "a.jpg", "b.jpg"), portraits):
        shutil.copy(src, folder / name)
    group = folder / "my_group_photos"
    group.mkdir()
    shutil.copy(_package_file("insightface", "data", "images", "t1.jpg"), group / "family.jpg")
    # build-sft's manifest: README's JSON example as written, with a second (mirrored) photo of mum
    (folder / "family.json").write_text(readme_json_example("--manifest FILE"))
    ImageOps.mirror(Image.open(folder / "mum.jpg")).save(folder / "mum_1994.jpg")
    tiny_pipeline(seed=0).adapter.save_pretrained(folder / "out" / "sft" / "adapter")
    # the flagged bad cases `idglow eval --badcases` reads, as `idglow export` writes them
    flags = [Badcase(("missing_person", "duplicate_face"), task="fusion", note="one face twice", num_subjects=2, id=1),
             Badcase(("identity_swap",), task="fusion", note="faces swapped", num_subjects=3, id=2)]
    (folder / "badcases.jsonl").write_text("".join(json.dumps(f.to_dict(), sort_keys=True) + "\n" for f in flags))
    # the store that Training's export command reads (README's own demo-data line comes later, in its section)
    _run("idglow demo-data --candidates 12 --votes 30 --annotators 2", folder, _env(folder))


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IDGLOW_", "GRADIO_SERVER"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def _run(command: str, folder: Path, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=folder, env=env, input=stdin,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _serve(command: str, env: dict[str, str], data: Path) -> str:
    """Start README's app command in the checkout, wait for the page, stop it; returns the page."""
    from app_fixtures import free_port

    port = free_port()
    env = {**env, "GRADIO_SERVER_PORT": str(port), "IDGLOW_DATA_DIR": str(data)}
    proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{command} exited with {proc.returncode}: {proc.stdout.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    return page.read().decode()
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"{command} did not serve a page in 600 s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_readme_commands_run_as_written(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / ".venv").symlink_to(ROOT / ".venv")
    _sample_inputs(folder)
    env = _env(folder)
    ran = []
    for command in readme_commands():
        if classify(command)[0] != RUN:
            continue
        if command.endswith("app.py"):  # the quick start: set-up, then the app on the embedded default
            assert "IdGlow" in _serve(command, env, tmp_path / "app-data")
        else:
            stdin = "a-long-password\n" if command.startswith("idglow users add") else ""
            _run(without_optional_parts(command), ROOT if in_checkout(command) else folder, env, stdin)
        ran.append(command)
    assert list((folder / "out").glob("idglow_*.png")), "the quick start wrote no image"
    assert (folder / "eval" / "fusion" / "report.md").is_file()
    shaped = json.loads((folder / "eval" / "badcases" / "report.json").read_text())["badcases"]
    assert shaped["cases_compared"] == 2 and shaped["failure_types"][0] == "identity_swap", shaped
    assert (folder / "data" / "sft" / "metadata.jsonl").read_text().strip(), "build-sft wrote no rows"
    family = (folder / "data" / "sft-family" / "metadata.jsonl").read_text()
    assert '"other_photos"' in family and '"task": "age"' in family, "the manifest gave no other-photo or age rows"
    assert (folder / "exports" / "v1").is_dir() and (folder / "prefs").is_dir()
    assert len(ran) >= 15, ran
