"""Small models, configs and preference pairs shared by the trainer tests."""

import numpy as np
import torch

from idglow.synthetic import SyntheticWorld
from idglow.training.config import SFTConfig
from idglow.training.data import PreferencePairDataset, SyntheticSFTDataset
from idglow.training.modeling import build_synthetic_model

WORLD = SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), max_people=3, embedding_dim=16,
                       code_dim=4, prompt_dim=16, pooled_dim=8)


def small_model(seed=0):
    return build_synthetic_model(WORLD, seed=seed, num_layers=1, num_single_layers=1, heads=2, head_dim=8)


def sft_config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), max_steps=3, train_batch_size=2, learning_rate=1e-2,
                report_to="none", checkpointing_steps=0, seed=1, logit_std=1.0)
    base.update(kw)
    return SFTConfig(**base)


def toy_pairs(n=6, seed=0):
    ds = SyntheticSFTDataset(WORLD, n, task="mixed", seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = ds[i]
        other = s["latents"] + 0.5 * torch.from_numpy(rng.standard_normal(s["latents"].shape).astype(np.float32))
        pref = np.zeros(9, dtype=np.float32)
        pref[0] = 1.0
        pref[1] = -1.0
        pref[3] = 1.0
        out.append({"latents_0": s["latents"], "latents_1": other, "prompt_embeds": s["prompt_embeds"],
                    "pooled_prompt_embeds": s["pooled_prompt_embeds"], "id_embeds": s["id_embeds"],
                    "face_boxes_0": s["face_boxes"], "face_boxes_1": s["face_boxes"], "task": s["task"],
                    "preference": torch.from_numpy(pref), "strength": torch.full((9,), 0.5)})
    return PreferencePairDataset(out)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}
