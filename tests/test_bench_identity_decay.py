"""`benchmarks/bench_identity_decay.py` at a quick setting: every arm trains with its own identity-constraint
decay from the same base, the arms differ, and the result line carries each arm and the paired differences."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks.bench_identity_decay as bench  # noqa: E402

QUICK = ["--seeds", "2", "--pretrain-steps", "5", "--sft-steps", "4", "--eval-scenes", "3", "--batch-size", "4",
         "--train-scenes", "16"]


@pytest.fixture
def loss_calls(monkeypatch):
    """(decay, face_lambda) of every SFT loss the trainer computes."""
    import idglow.training.trainer as trainer

    calls = []
    real = trainer.sft_loss

    def spy(*args, **kwargs):
        calls.append((kwargs["decay"], kwargs["face_lambda"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "sft_loss", spy)
    return calls


def test_quick_run_trains_each_arm_with_its_decay_and_reports_every_arm(capsys, loss_calls, tmp_path):
    assert bench.main(QUICK) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    per_seed, result = lines[:-1], lines[-1]
    assert [r["seed"] for r in per_seed] == [0, 1]
    # 2 seeds x 3 trained arms x 4 steps, each arm with its own loss weight
    assert sorted(set(loss_calls)) == [("flat", 1.0), ("linear", 0.0), ("linear", 1.0)]
    assert len(loss_calls) == 2 * 3 * 4
    for record in per_seed:
        assert set(record) - {"seed"} == {"base", "linear", "flat", "no_face_term"}
        assert record["flat"] != record["linear"]  # the decay changed what the adapter learned
    arms = result["RESULT"]["arms"]
    assert set(arms) == {"base", "linear", "flat", "no_face_term"}
    for metrics in arms.values():
        assert set(metrics) == set(bench.METRICS)
        for entry in metrics.values():
            assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
    diffs = result["RESULT"]["differences"]
    assert set(diffs) == {"flat_minus_linear", "linear_minus_base", "linear_minus_no_face_term"}
    expected = (per_seed[0]["flat"]["identity"] - per_seed[0]["linear"]["identity"]
                + per_seed[1]["flat"]["identity"] - per_seed[1]["linear"]["identity"]) / 2
    assert diffs["flat_minus_linear"]["identity"]["mean"] == pytest.approx(expected, abs=1e-3)
    # seeds summarised apart and combined give the same result line
    out = tmp_path / "seeds.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in per_seed))
    assert bench.main(["--combine", str(out)]) == 0
    combined = json.loads(capsys.readouterr().out)
    assert combined["RESULT"] == result["RESULT"] and combined["seeds"] == 2


def test_an_unknown_arm_is_refused():
    from idglow.training.synthetic_runs import decay_ablation

    with pytest.raises(ValueError, match="unknown arms"):
        decay_ablation(0, "unused", arms=("linear", "cosine"))
