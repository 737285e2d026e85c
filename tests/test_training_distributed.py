"""SFT and DPO under `accelerate launch` with 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import json, sys
import torch
from accelerate import PartialState
from idglow.synthetic import SyntheticWorld
from idglow.training.config import DPOConfig, SFTConfig
from idglow.training.data import SyntheticSFTDataset, PreferencePairDataset
from idglow.training.modeling import build_synthetic_model
from idglow.training.trainer import DPOTrainer, SFTTrainer

out_dir = sys.argv[1]
world = SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), max_people=3, embedding_dim=16,
                       code_dim=4, prompt_dim=16, pooled_dim=8)
model = build_synthetic_model(world, num_layers=1, num_single_layers=1, heads=2, head_dim=8)
before = {n: p.detach().clone() for n, p in model.adapter.named_parameters()}
cfg = SFTConfig(output_dir=out_dir + "/sft", max_steps=3, train_batch_size=2, learning_rate=1e-2,
                report_to="none", checkpointing_steps=3, seed=0)
trainer = SFTTrainer(cfg, model, SyntheticSFTDataset(world, 8, task="mixed"))
result = trainer.train()
acc = trainer.accelerator
flat = torch.cat([p.detach().reshape(-1) for p in model.adapter.parameters()])
gathered = acc.gather(flat.unsqueeze(0))
changed = all(not torch.equal(p, before[n]) for n, p in model.adapter.named_parameters())

ds = SyntheticSFTDataset(world, 4, task="fusion", seed=1)
pairs = []
for i in range(4):
    s = ds[i]
    pref = torch.zeros(9); pref[0] = 1; pref[3] = -1
    pairs.append({"latents_0": s["latents"], "latents_1": s["latents"].flip(-1), "prompt_embeds": s["prompt_embeds"],
                  "pooled_prompt_embeds": s["pooled_prompt_embeds"], "id_embeds": s["id_embeds"],
                  "face_boxes_0": s["face_boxes"], "face_boxes_1": s["face_boxes"], "task": "fusion",
                  "preference": pref, "strength": torch.ones(9)})
dpo = DPOTrainer(DPOConfig(output_dir=out_dir + "/dpo", max_steps=2, train_batch_size=1, learning_rate=1e-3,
                           report_to="none", checkpointing_steps=0, beta=10.0),
                 build_synthetic_model(world, num_layers=1, num_single_layers=1, heads=2, head_dim=8),
                 PreferencePairDataset(pairs))
dpo_result = dpo.train()
if acc.is_main_process:
    json.dump({"processes": acc.num_processes, "steps": result.global_step,
               "losses": [r["loss"] for r in result.log_history],
               "same_on_all_ranks": bool(torch.equal(gathered[0], gathered[1])), "changed": changed,
               "dpo_steps": dpo_result.global_step}, open(out_dir + "/result.json", "w"))
dpo.end_processes()  # every rank leaves the process group before it exits
'''


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate_launch(tmp_path):
    script = tmp_path / "train2.py"
    script.write_text(SCRIPT)
    launcher = Path(sys.executable).with_name("accelerate")
    # torchrun-style launch of 2 processes; ACCELERATE_USE_CPU makes accelerate pick MULTI_CPU with gloo
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["processes"] == 2, result and result["steps"] == 3 and result["dpo_steps"] == 2
    assert result["changed"] and result["same_on_all_ranks"]  # gradients were all-reduced
    assert all(map(lambda v: v == v, result["losses"]))
    assert (tmp_path / "sft" / "checkpoint-3" / "trainable.safetensors").is_file()


def _sft_folder(root: Path, rows: int = 2) -> Path:
    """A `build-sft`-format folder of ``rows`` random 64 px group photos, two people each (128-d embeddings,
    the tiny model's), every row different."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    lines = []
    for i in range(rows):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"group{i}.png")
        people = [{"bbox": [0.1 + 0.4 * j, 0.2, 0.4 + 0.4 * j, 0.6],
                   "embeddings": [rng.standard_normal(128).round(5).tolist()]} for j in range(2)]
        lines.append(json.dumps({"image": f"group{i}.png", "width": 64, "height": 64, "task": "fusion",
                                 "prompt": f"photo {i} of two people", "subjects": people}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _train(tmp_path: Path, name: str, data: Path, launch: list[str], *overrides: str) -> subprocess.CompletedProcess:
    """``[launch] -m idglow train sft --config configs/sft_tiny.yaml --set ...`` for one step (stdout kept)."""
    config = Path(__file__).resolve().parents[1] / "configs" / "sft_tiny.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [*launch, "-m", "idglow", "train", "sft", "--config", str(config), "--set", f"train_data={data}",
           "--set", f"output_dir={tmp_path / name}", "--set", "max_steps=1", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "diffusion_pytorch_model.safetensors"))


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_readme_multi_process_command_distributes(tmp_path):
    """README's `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m idglow train ...`
    (plus a free port): two ranks, one shard each, gradients averaged — the adapter equals one process's step
    on the union batch, not its step on one shard — the metrics of both ranks, and one writer."""
    data = _sft_folder(tmp_path / "data")
    launcher = str(Path(sys.executable).with_name("accelerate"))
    two = _train(tmp_path, "two", data, [launcher, "launch", "--multi_gpu", "--num_processes", "2",
                                         "--main_process_port", "0"])
    _train(tmp_path, "union", data, [sys.executable], "--set", "train_batch_size=2")
    _train(tmp_path, "one", data, [sys.executable])  # the negative control: a step on one shard

    assert two.stdout.count("trained 1 steps") == 1  # only the main process reports and writes
    log = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert log["num_processes"] == 2 and log["global_step"] == 1
    (shards,) = log["shards"]
    assert sorted(sum(shards, [])) == [0, 1] and len(shards) == 2 and shards[0] != shards[1]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["adapter", "train_log.json"]

    distributed, averaged, single = (_adapter(tmp_path / n) for n in ("two", "union", "one"))
    assert _max_difference(distributed, averaged) < 1e-5
    assert _max_difference(distributed, single) > 1e-4  # the tolerance tells the two apart
    union_log = json.loads((tmp_path / "union" / "train_log.json").read_text())["log_history"][0]
    one_log = json.loads((tmp_path / "one" / "train_log.json").read_text())["log_history"][0]
    for key in ("loss", "loss_base", "loss_face"):  # both ranks' batches, not rank 0's alone
        assert log["log_history"][0][key] == pytest.approx(union_log[key], rel=1e-5), key
    assert log["log_history"][0]["loss"] != pytest.approx(one_log["loss"], rel=1e-3)
