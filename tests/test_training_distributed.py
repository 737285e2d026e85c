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
