"""Stability vs plasticity of temporal identity gating, measured in the synthetic identity world.

Claim under test: injecting identity only inside σ ∈ [0.3, 0.6] keeps identity while letting structure change
(a child's proportions), whereas always-on injection drags the adult reference's structure along.

The world is ``learning_world()``: 2–3 people centred in the cells of a 2×2 grid named by the prompt, so the
base draws every requested person and the scores measure identity and structure, not presence.

Both arms start from the same pretrained base (which draws adults and children where the prompt says), and
train the adapter with SFT on the age task (adult references → child targets) with the same budget and seeds;
only the identity window differs. Held-out age requests are then generated with each arm's window and scored:
identity = Hungarian-matched identity similarity (``code_similarity``: cosine of the recovered identity code,
structure-free; ``identity``: embedding similarity to the adult reference) and ``structure_accuracy`` = how
often the matched person has the requested (child) structure.

With ``--train-task mixed`` the SFT data alternates fusion (reference and target share the structure) and age
requests, the way a real training set mixes the tasks; the age-window arm then injects identity for fusion at
every σ and for age inside its window.

    python benchmarks/bench_stability_plasticity.py [--pretrain-steps 400] [--sft-steps 300] [--train-task mixed]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    from idglow.schedule import IdentityWindow
    from idglow.training.config import SFTConfig
    from idglow.training.data import SyntheticSFTDataset
    from idglow.training.synthetic_runs import (
        CachedDataset,
        build_learning_model,
        evaluate,
        learning_world,
        pretrain_base,
    )
    from idglow.training.trainer import SFTTrainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-scenes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-task", choices=["age", "mixed"], default="age",
                        help="SFT data: age requests only, or fusion and age alternating (fusion teaches the "
                             "adapter to copy what the reference looks like, structure included)")
    args = parser.parse_args(argv)

    t0 = time.time()
    world = learning_world(seed=args.seed)
    base = build_learning_model(world, seed=args.seed)
    pretrain_base(base, CachedDataset(SyntheticSFTDataset(world, 1024, task="mixed", seed=args.seed)),
                  args.pretrain_steps, batch_size=args.batch_size, seed=args.seed)
    train = CachedDataset(SyntheticSFTDataset(world, 1024, task=args.train_task, seed=args.seed + 1))
    held = SyntheticSFTDataset(world, args.eval_scenes, task="age", seed=args.seed + 999)
    idx = list(range(args.eval_scenes))
    results = {}
    arms = {"window_0.3_0.6": IdentityWindow(0.3, 0.6), "always_on": IdentityWindow(0.0, 1.0)}
    untrained = evaluate(base, held, idx, window=arms["window_0.3_0.6"])
    for name, window in arms.items():
        model = copy.deepcopy(base)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SFTConfig(output_dir=tmp, max_steps=args.sft_steps, train_batch_size=args.batch_size,
                            learning_rate=2e-3, report_to="none", checkpointing_steps=0, seed=args.seed,
                            age_window=(window.sigma_lo, window.sigma_hi))
            SFTTrainer(cfg, model, train).train()
        results[name] = evaluate(model, held, idx, window=window)
    line = {
        "untrained": {k: round(v, 3) for k, v in untrained.items()},
        **{name: {k: round(v, 3) for k, v in r.items()} for name, r in results.items()},
        "identity_window_minus_always_on": round(results["window_0.3_0.6"]["code_similarity"]
                                                 - results["always_on"]["code_similarity"], 3),
        "structure_window_minus_always_on": round(results["window_0.3_0.6"]["structure_accuracy"]
                                                  - results["always_on"]["structure_accuracy"], 3),
        "train_task": args.train_task, "pretrain_steps": args.pretrain_steps, "sft_steps": args.sft_steps,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
