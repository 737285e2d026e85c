"""`idglow eval` end to end on the tiny model: built-in and user manifests, report consistency, resuming,
CLIP and aesthetic scores from local weights, and the Pareto plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from idglow.cli import main
from idglow.eval.runner import IMAGE_METRICS


def run_eval(capsys, *args):
    code = main(["eval", "--no-progress", "--bootstrap", "200", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_consistency(report):
    """Summaries are the means of per-case values, which are the means of per-image values."""
    skipped = report["skipped"]
    for config in report["configs"]:
        for metric in IMAGE_METRICS:
            entry = report["summary"][config][metric]
            if metric in skipped:
                assert entry == {"skipped": skipped[metric]}
                assert all(row["results"][config][metric] is None for row in report["cases"])
                continue
            per_case = []
            for row in report["cases"]:
                result = row["results"][config]
                per_image = [im[metric] for im in result["per_image"] if im[metric] is not None]
                assert len(result["per_image"]) == len(result["images"]) == len(result["seeds"])
                if per_image:
                    assert result[metric] == pytest.approx(np.mean(per_image))
                    per_case.append(result[metric])
            assert entry["n"] == len(per_case)
            assert entry["mean"] == pytest.approx(np.mean(per_case))
            assert entry["ci_low"] - 1e-9 <= entry["mean"] <= entry["ci_high"] + 1e-9
    for row in report["cases"]:
        for result in row["results"].values():
            for im in result["per_image"]:
                n = row["num_subjects"]
                assert len(im["match"]["similarity"]) == n
                assert im["missing_rate"] == pytest.approx(len(im["match"]["missing"]) / n)
                assert im["face_sim_mean"] == pytest.approx(np.mean(im["match"]["similarity"]), abs=1e-3)
    fidelity = [row["prompt_fidelity"] for row in report["cases"] if row["prompt_fidelity"] is not None]
    assert report["prompt_fidelity"]["mean"] == pytest.approx(np.mean(fidelity))


def check_plot(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with Image.open(path) as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_eval_fusion_builtin_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "fusion"
    code, stdout, stderr = run_eval(capsys, "--benchmark", "fusion", "--limit", 2, "--steps", 2, "--out", out)
    assert code == 0, stderr
    assert "generated 6, cached 0" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["benchmark"]["name"] == "fusion" and report["benchmark"]["num_cases"] == 2
    assert report["configs"] == ["base", "always_on", "idglow"]
    assert report["identity_windows"] == {"base": None, "always_on": [0.0, 1.0], "idglow": [0.0, 1.0]}
    assert set(report["skipped"]) == {"clip_score", "aesthetic", "age_error", "binding_accuracy", "swap_rate",
                                      "confusion", "copy_paste"}
    # The composed prompts place people, but the tiny model draws no faces: the reason says so.
    assert all(row["positions"] == list(range(1, row["num_subjects"] + 1)) for row in report["cases"])
    assert "as many faces" in report["skipped"]["swap_rate"]
    check_consistency(report)
    # Both face-matching thresholds are reported: dlib's same-person threshold by default.
    assert report["analyzer"]["match_threshold"] == pytest.approx(0.92)
    assert report["analyzer"]["duplicate_threshold"] == pytest.approx(0.92)
    assert "match threshold 0.92, duplicate threshold 0.92" in stdout
    assert "assigned to a subject at cosine ≥ 0.92" in (out / "report.md").read_text()
    # Skipped metrics are marked as skipped, never given a number.
    md = (out / "report.md").read_text()
    assert "CLIP score: skipped" in md and "aesthetic: skipped" in md
    assert report["pareto"]["y"] is None and report["pareto"]["front"]
    check_plot(out / "pareto.png")
    # Configuration semantics: identity changes the image; fusion's schedule is always on, so idglow ≡ always_on.
    case = out / "cases" / "fusion-2a"
    base, on, ours = (np.asarray(Image.open(case / f"{c}_0.png"), dtype=np.int16) for c in ("base", "always_on", "idglow"))
    assert np.abs(on - base).max() > 0
    assert np.array_equal(on, ours)
    seeds = {row["id"]: row["results"]["base"]["seeds"] for row in report["cases"]}
    assert seeds == {"fusion-2a": [0], "fusion-2b": [1000]}

    # Resume: same settings → nothing generated again, same numbers.
    code, stdout, _ = run_eval(capsys, "--benchmark", "fusion", "--limit", 2, "--steps", 2, "--out", out)
    assert code == 0 and "generated 0, cached 6" in stdout
    again = json.loads((out / "report.json").read_text())
    assert again["summary"] == report["summary"] and again["cases"] == report["cases"]


def build_tiny_clip(folder):
    """A random CLIPModel folder (weights + tokenizer + image processor), as a user would pass with --clip."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from idglow.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer(77)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_aesthetic_head(path, in_dim=16):
    """A LAION-style aesthetic head state dict (layers.0/2/4 linear, dropouts between) saved with torch.save."""
    torch.manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Linear(in_dim, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 4),
                               torch.nn.Dropout(0.1), torch.nn.Linear(4, 1))
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, path)
    return head


def test_eval_age_with_clip_and_aesthetic_scores(tmp_path, capsys):
    clip_dir = build_tiny_clip(tmp_path / "clip")
    head = build_aesthetic_head(tmp_path / "aesthetic.pth")
    out = tmp_path / "age"
    code, stdout, stderr = run_eval(
        capsys, "--benchmark", "age", "--limit", 1, "--steps", 2, "--configs", "base,idglow", "--out", out,
        "--clip", clip_dir, "--aesthetic", tmp_path / "aesthetic.pth",
    )
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["configs"] == ["base", "idglow"]
    assert report["identity_windows"]["idglow"] == [0.3, 0.6]
    assert "clip_score" not in report["skipped"] and "aesthetic" not in report["skipped"]
    # dlib estimates ages, but the tiny model's 64 px images show no face to estimate.
    assert report["skipped"]["age_error"] == "no face was found in the generated images"
    assert report["pareto"]["y"] == "aesthetic"
    check_consistency(report)
    row = report["cases"][0]
    assert row["target_ages"] == [6.0, 7.0]
    assert "six" in row["prompt"] and "seven" in row["prompt"]

    # The aesthetic score is the head applied to the normalised CLIP image embedding of the saved image.
    from idglow.eval.scorers import ClipScorer

    clip = ClipScorer(clip_dir)
    image = Image.open(out / "cases" / row["id"] / row["results"]["idglow"]["images"][0]).convert("RGB")
    emb = clip.image_embeds([image])
    head.eval()
    with torch.no_grad():
        expected = float(head(emb)[0, 0])
    assert row["results"]["idglow"]["aesthetic"] == pytest.approx(expected, abs=1e-5)
    expected_clip = 100 * max(float((emb * clip.text_embeds([row["prompt"]])).sum()), 0.0)
    assert row["results"]["idglow"]["clip_score"] == pytest.approx(expected_clip, abs=1e-4)
    check_plot(out / "pareto.png")

    # Without the scorers the cached images are re-scored, not regenerated, and the scores become skipped.
    code, stdout, _ = run_eval(capsys, "--benchmark", "age", "--limit", 1, "--steps", 2,
                               "--configs", "base,idglow", "--out", out)
    assert code == 0 and "generated 0, cached 0, rescored 2" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["idglow"]["aesthetic"] == {"skipped": report["skipped"]["aesthetic"]}


def test_eval_linear_decay_runs_the_window_with_the_linear_profile(tmp_path, capsys, monkeypatch):
    """``linear_decay``: the idglow window, asked of the pipeline with the linear strength profile; the report
    pairs it with idglow."""
    from idglow.pipeline import IdGlowPipeline

    profiles = []
    call = IdGlowPipeline.__call__

    def recording(self, *args, **kwargs):
        profiles.append(kwargs.get("id_profile"))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(IdGlowPipeline, "__call__", recording)
    out = tmp_path / "decay"
    code, stdout, stderr = run_eval(capsys, "--benchmark", "age", "--limit", 1, "--steps", 8,
                                    "--configs", "idglow,linear_decay", "--out", out)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["configs"] == ["idglow", "linear_decay"]
    assert report["identity_windows"] == {"idglow": [0.3, 0.6], "linear_decay": [0.3, 0.6]}
    assert set(report["differences"]) == {"linear_decay-idglow"}
    assert profiles == [None, "linear"]
    row = report["cases"][0]
    flat, linear = (np.asarray(Image.open(out / "cases" / row["id"] / row["results"][c]["images"][0]), dtype=np.int16)
                    for c in ("idglow", "linear_decay"))
    assert np.abs(flat - linear).max() > 0  # inside the window the linear profile injects less


def test_eval_user_manifest_three_and_four_people(tmp_path, capsys, sample_portraits):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("person1", "person2", "person3", "person4"):
        (photos / f"{name}.jpg").write_bytes(sample_portraits[name].read_bytes())
    manifest = {
        "name": "mine", "task": "fusion", "seed": 3,
        "cases": [
            {"id": "three", "scene": "three friends in a park",
             "subjects": [{"image": f"photos/person{i}.jpg"} for i in (1, 2, 3)]},
            {"id": "four", "prompt": "a group photo of four people",
             "subjects": [{"image": f"photos/person{i}.jpg", "label": f"p{i}"} for i in (1, 2, 3, 4)]},
        ],
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(manifest))
    out = tmp_path / "out"
    code, _, stderr = run_eval(capsys, "--benchmark", path, "--steps", 2, "--configs", "idglow",
                               "--images-per-case", 2, "--out", out)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    check_consistency(report)
    three, four = report["cases"]
    assert three["results"]["idglow"]["seeds"] == [3, 4] and four["results"]["idglow"]["seeds"] == [1003, 1004]
    assert three["prompt_source"] == "template" and three["prompt_fidelity"] == 1.0
    assert four["prompt_source"] == "manifest" and four["prompt_fidelity"] is None
    assert set(report["by_num_subjects"]["idglow"]) == {"3", "4"}
    assert report["differences"] == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--benchmark", "nope"], "neither a built-in manifest"),
        (["--benchmark", "fusion", "--configs", "base,magic"], "unknown configurations"),
        (["--benchmark", "fusion", "--limit", "0"], "must be at least 1"),
        (["--benchmark", "fusion", "--window", "0.7", "0.2"], "sigma_lo=0.7 is greater"),
        (["--benchmark", "fusion", "--clip", "/nonexistent/clip"], "--clip /nonexistent/clip"),
    ],
)
def test_eval_refuses_bad_input(tmp_path, capsys, args, message):
    code, _, err = run_eval(capsys, *args, "--out", tmp_path / "o")
    assert code == 2
    assert err.startswith("idglow: error:") and message in err
