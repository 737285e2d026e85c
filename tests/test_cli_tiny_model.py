"""The tiny demo model is a model like any other on the command line: ``--model tiny`` is accepted wherever a
model is, and an adapter trained on it (``idglow train sft --model tiny``) generates and evaluates from the CLI.
The CLI's messages say what the numbers mean on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from idglow.cli import build_parser, main
from idglow.commands.generate import identity_text


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory, sample_portraits):
    """An adapter trained for two steps on the tiny model from a build-sft folder, all through the CLI."""
    root = tmp_path_factory.mktemp("tiny-train")
    photos = root / "photos"
    photos.mkdir()
    for name in ("tom", "person1"):
        (photos / f"{name}.jpg").write_bytes(sample_portraits[name].read_bytes())
    assert main(["data", "build-sft", "--photos", str(photos), "--out", str(root / "sft"), "--min-faces", "1"]) == 0
    code = main(["train", "sft", "--config", "configs/sft.yaml", "--model", "tiny",
                 "--set", f"train_data={root / 'sft'}", "--set", f"output_dir={root / 'run'}", "--set", "max_steps=2",
                 "--set", "resolution=64", "--set", "mixed_precision=no", "--set", "report_to=none",
                 "--set", "learning_rate=0.01", "--set", "lr_warmup_steps=0", "--set", "seed=5",
                 "--set", "gradient_checkpointing=false"])
    assert code == 0
    return root / "run" / "adapter"


def generate(capsys, out, subject, *extra):
    code, stdout, err = run(capsys, "generate", "--subject", str(subject), "--seed", "3", "--steps", "2",
                            "--out", str(out), *extra)
    assert code == 0, err
    return np.asarray(Image.open(out / "idglow_3.png")).astype(int), json.loads((out / "idglow_3.json").read_text()), \
        stdout


def test_generate_with_an_adapter_trained_on_the_tiny_model(trained_adapter, sample_portraits, tmp_path, capsys):
    person = sample_portraits["person1"]
    base, base_meta, _ = generate(capsys, tmp_path / "base", person, "--model", "tiny")
    again, _, _ = generate(capsys, tmp_path / "again", person, "--model", "tiny")
    trained, meta, stdout = generate(capsys, tmp_path / "trained", person, "--model", "tiny",
                                     "--adapter", str(trained_adapter))
    assert np.array_equal(base, again)  # control: the same settings give the same image
    assert np.abs(trained - base).max() > 0  # the trained adapter is the one used
    assert base_meta["model"]["model"] == meta["model"]["model"] == "tiny-demo"
    assert meta["model"]["adapter"] == str(trained_adapter) and base_meta["model"]["adapter"] is None
    assert "tiny demo model" in stdout


def test_the_default_model_is_the_tiny_model(sample_portraits, tmp_path, capsys):
    named, _, _ = generate(capsys, tmp_path / "named", sample_portraits["person2"], "--model", "tiny")
    default, _, _ = generate(capsys, tmp_path / "default", sample_portraits["person2"])
    assert np.array_equal(named, default)


def test_training_builds_the_same_tiny_model_whatever_the_run_seed():
    """An adapter trained with any seed fits the tiny model that generate builds (seed 0)."""
    import torch

    from idglow.commands.train import _load_model
    from idglow.tiny import tiny_pipeline
    from idglow.training.config import SFTConfig

    model, _, _ = _load_model(SFTConfig(model="tiny", seed=5, mixed_precision="no", report_to="none"))
    reference = tiny_pipeline(seed=0).transformer.state_dict()
    trained_base = model.transformer.state_dict()
    assert all(torch.equal(trained_base[k], v) for k, v in reference.items())


def test_eval_runs_the_tiny_model_with_its_adapter_and_says_the_numbers_mean_nothing(trained_adapter, tmp_path,
                                                                                    capsys):
    code, stdout, err = run(capsys, "eval", "--benchmark", "fusion", "--model", "tiny", "--adapter",
                            str(trained_adapter), "--limit", "1", "--steps", "2", "--configs", "idglow",
                            "--bootstrap", "10", "--no-progress", "--out", str(tmp_path / "eval"))
    assert code == 0, err
    assert "these numbers say nothing about IdGlow" in stdout
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert json.dumps(report).count(str(trained_adapter)) >= 1


def test_serve_and_prompt_take_the_tiny_model(sample_portraits, capsys):
    from idglow.commands.serve import generator_options, replica_plan

    args = build_parser().parse_args(["serve", "--ray-address", "127.0.0.1:6379", "--model", "tiny",
                                      "--adapter", "runs/a"])
    options = generator_options(args, replica_plan(args, cluster_gpus=0))
    assert options.model.is_tiny and options.model.adapter_dir == "runs/a"
    code, stdout, err = run(capsys, "prompt", "--subject", str(sample_portraits["person1"]), "--model", "tiny",
                            "--no-faces")
    assert code == 0, err
    assert json.loads(stdout)["text"]


def test_a_missing_face_reads_face_not_found():
    match = {"similarity": [0.0, 0.0, 0.41], "missing": [1]}
    assert identity_text(match) == "0.00, face not found, 0.41"
    assert identity_text(None) == "-"


def test_generate_on_the_tiny_model_reports_faces_not_found(sample_portraits, tmp_path, capsys):
    _, meta, stdout = generate(capsys, tmp_path / "o", sample_portraits["person1"])
    if meta["face_match"]["missing"] != [0]:
        pytest.skip("the tiny model drew a face this time")
    assert "identity per person: face not found" in stdout and "0.00" not in stdout


def test_age_task_without_a_target_age_says_what_to_type(sample_portraits, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--subject", str(sample_portraits["person1"]), "--task", "age",
                       "--target-age", "-", "--out", str(tmp_path / "o"))
    assert code == 2
    assert "give '-' as their --target-age" in err and "leave it blank" not in err
