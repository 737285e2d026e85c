"""Stability vs plasticity of temporal identity gating in world v3 (``idglow.synthetic_v3``).

World v3 gives the window something to prevent: references are children or adults (fusion references show the
target's own build, so an always-on adapter can learn to copy structure from them), age-paired samples are scarce
(``--age-fraction``), and identity lives in faint fine texture (``separation`` prints how much of identity and of
structure the exact posterior has recovered at each σ).

Per seed (world, initialisation, data and noise follow it): a base is pretrained on v3 scenes without identity,
then three adapters are trained by SFT with the same data, budget and seed:

- ``always_on``: identity at every σ for every sample;
- ``window``: age-paired samples inside σ ∈ [0.3, 0.6] (fusion samples always on), training decay
  w(σ) = 1 − 0.9·σ (``w_clean`` 1, ``w_noisy`` 0.1);
- ``window_flat``: as ``window`` with a flat w(σ) = 0.55 (the same mean over σ): the training-decay ablation.

Held-out age requests (adult references, every person to be drawn as a child) are judged by ``judge_v3``: each
person in their own prompted box (IoU ≥ 0.25), identity by position (code cosine, 0 when nobody stands there),
``right_age`` (in place with a child build) and ``leak`` (adult build among children found in place).

Phase 1, the positive control (``--control-only`` stops after it): base, always-on and window at scale 1. Unless
always-on leaks more adult structure than the base, the window has nothing to prevent and the comparison below
means nothing. Phase 2: identity-scale curves for always-on (and the always-on adapter gated at inference), the
window arms over several window edges, and the window read in the three coordinates under FLUX's shift; each arm
is compared with always-on AT MATCHED IDENTITY: per seed, both curves (identity → leak / right_age, linear between
the measured scales) are read at the middle of the identity range they share; the result gives the mean paired
difference over seeds with a 95% t-interval and how many seeds shared a range.

    python benchmarks/bench_world_v3.py [--seeds 5] [--pretrain-steps 1500] [--sft-steps 400] [--control-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_stability_plasticity import interval  # noqa: E402

ALWAYS_SCALES = (0.25, 0.5, 0.75, 1.0)
WINDOW_SCALES = (1.0, 1.5, 2.0)
WINDOW_EDGES = ((0.3, 0.6), (0.2, 0.6), (0.3, 0.7), (0.4, 0.7))
FLUX_SHIFT = 3.16  # exp(1.15): FLUX.1-dev's resolution shift at 1024²


def pretrained_base(world, args):
    """The base transformer pretrained on v3 scenes without identity (loaded from ``--base-cache`` when that
    file exists, saved there otherwise)."""
    from idglow.synthetic_v3 import WorldV3Dataset
    from idglow.training.synthetic_runs import CachedDataset, build_learning_model, pretrain_base

    base = build_learning_model(world, seed=args.world_seed)
    cache = Path(args.base_cache) if args.base_cache else None
    if cache is not None and cache.exists():
        base.load_state_dict(torch.load(cache, weights_only=True))
        return base.eval()
    pretrain_base(base, CachedDataset(WorldV3Dataset(world, 1024, seed=args.world_seed)), args.pretrain_steps,
                  batch_size=args.batch_size, seed=args.world_seed)
    if cache is not None:
        torch.save(base.state_dict(), cache.with_suffix(".partial"))
        cache.with_suffix(".partial").rename(cache)  # another run waiting for the file never reads half of it
    return base


def train_arms(world, base, seed: int, args):
    """(trained adapters by name, held-out dataset) for one seed: SFT data and noise, held-out scenes and
    sampling noise follow the seed; the world and the base are shared."""
    from idglow.synthetic_v3 import WorldV3Dataset
    from idglow.training.config import SFTConfig
    from idglow.training.synthetic_runs import CachedDataset
    from idglow.training.trainer import SFTTrainer

    torch.manual_seed(seed)
    train = CachedDataset(WorldV3Dataset(world, 1024, seed=1000 + seed, age_fraction=args.age_fraction))
    held = WorldV3Dataset(world, args.eval_scenes, split="eval", seed=2000 + seed)
    arms = {"always_on": ((0.0, 1.0), 1.0, 0.1), "window": ((0.3, 0.6), 1.0, 0.1),
            "window_flat": ((0.3, 0.6), 0.55, 0.55)}
    if args.control_only:
        arms.pop("window_flat")
    trained = {}
    for name, (age_window, w_clean, w_noisy) in arms.items():
        model = copy.deepcopy(base)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SFTConfig(output_dir=tmp, max_steps=args.sft_steps, train_batch_size=args.batch_size,
                            learning_rate=2e-3, report_to="none", checkpointing_steps=0, seed=seed,
                            age_window=age_window, w_clean=w_clean, w_noisy=w_noisy)
            SFTTrainer(cfg, model, train).train()
        trained[name] = model
    return trained, held


def control(base, trained, held, idx, seed: int) -> dict[str, dict[str, float]]:
    """Phase 1: base, always-on and window at identity scale 1 on the uniform σ grid."""
    from idglow.schedule import IdentityWindow
    from idglow.synthetic_v3 import evaluate_v3

    common = {"seed": 5000 + seed}
    return {"base": evaluate_v3(base, held, idx, window=IdentityWindow(0.0, 1.0), with_identity=False, **common),
            "always_on": evaluate_v3(trained["always_on"], held, idx, window=IdentityWindow(0.0, 1.0), **common),
            "window": evaluate_v3(trained["window"], held, idx, window=IdentityWindow(0.3, 0.6), **common)}


def sweep(trained, held, idx, seed: int) -> dict[str, list[dict[str, float]]]:
    """Phase 2: per arm, a curve of (identity scale → judged metrics)."""
    from idglow.schedule import IdentityWindow
    from idglow.synthetic_v3 import evaluate_v3

    common = {"seed": 5000 + seed}

    def curve(model, window, scales, **kw):
        return [{"scale": s, **evaluate_v3(model, held, idx, window=window, id_scale=s, **common, **kw)}
                for s in scales]

    out = {"always_on": curve(trained["always_on"], IdentityWindow(0.0, 1.0), ALWAYS_SCALES),
           "always_on_gated_0.3_0.6": curve(trained["always_on"], IdentityWindow(0.3, 0.6), WINDOW_SCALES)}
    for lo, hi in WINDOW_EDGES:
        out[f"window_{lo}_{hi}"] = curve(trained["window"], IdentityWindow(lo, hi), WINDOW_SCALES)
    out["window_flat_0.3_0.6"] = curve(trained["window_flat"], IdentityWindow(0.3, 0.6), WINDOW_SCALES)
    for coordinate in ("sigma", "one_minus_sigma", "step_fraction"):
        out[f"window_shift_{coordinate}"] = curve(trained["window"], IdentityWindow(0.3, 0.6), WINDOW_SCALES,
                                                  shift=FLUX_SHIFT, coordinate=coordinate)
    out["always_on_shift"] = curve(trained["always_on"], IdentityWindow(0.0, 1.0), ALWAYS_SCALES, shift=FLUX_SHIFT)
    return out


def matched(curve_a: list[dict], curve_b: list[dict], metric: str) -> float | None:
    """metric(a) − metric(b) at the middle of the identity range both curves cover (linear between points);
    None when the ranges do not overlap."""
    def read(curve, level):
        pts = sorted((p["identity"], p[metric]) for p in curve if not np.isnan(p[metric]))
        return float(np.interp(level, [x for x, _ in pts], [y for _, y in pts]))

    ia, ib = [p["identity"] for p in curve_a], [p["identity"] for p in curve_b]
    lo, hi = max(min(ia), min(ib)), min(max(ia), max(ib))
    if lo > hi:
        return None
    return read(curve_a, (lo + hi) / 2) - read(curve_b, (lo + hi) / 2)


def summarise(controls: list[dict], sweeps: list[dict]) -> dict:
    """Control means with intervals; per arm, matched-identity paired differences against always-on."""
    out: dict = {"control": {arm: {m: interval([c[arm][m] for c in controls]) for m in controls[0][arm]}
                             for arm in controls[0]}}
    out["control"]["leak_always_on_minus_base"] = interval([c["always_on"]["leak"] - c["base"]["leak"]
                                                           for c in controls])
    if not sweeps:
        return out
    for arm in [a for a in sweeps[0] if all(a in s for s in sweeps)]:
        if arm.startswith("always_on") and arm != "always_on_gated_0.3_0.6":
            continue
        ref = "always_on_shift" if "shift" in arm else "always_on"
        row = {}
        for metric in ("leak", "right_age", "in_place"):
            diffs = [d for s in sweeps if (d := matched(s[arm], s[ref], metric)) is not None]
            row[metric] = {**interval(diffs), "seeds": len(diffs)} if diffs else {"seeds": 0}
        out[f"{arm}_minus_{ref}_at_matched_identity"] = row
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds --first-seed.., each its own SFT runs")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--world-seed", type=int, default=0, help="the world and the base, shared by all seeds")
    parser.add_argument("--base-cache", default=None, help="file to load the pretrained base from, or save it to")
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--sft-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-scenes", type=int, default=32)
    parser.add_argument("--age-fraction", type=float, default=0.1, help="share of age-paired training samples")
    parser.add_argument("--control-only", action="store_true", help="stop after the positive control")
    parser.add_argument("--combine", nargs="+", default=None,
                        help="summarise the per-seed lines of earlier runs' outputs instead of running")
    args = parser.parse_args(argv)
    if args.combine:
        rows: dict[int, dict] = {}
        for line in (line for f in args.combine for line in Path(f).read_text().splitlines()):
            if line.startswith('{"seed"'):
                row = json.loads(line)
                rows.setdefault(row.pop("seed"), {}).update(row)
        seeds = sorted(s for s, r in rows.items() if "control" in r)
        swept = [s for s in seeds if "sweep" in rows[s]]
        print(json.dumps({"RESULT": summarise([rows[s]["control"] for s in seeds],
                                              [rows[s]["sweep"] for s in swept]),
                          "seeds": seeds, "swept_seeds": swept}), flush=True)
        return
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: need at least 1")
    from idglow.synthetic_v3 import separation, world_v3

    t0 = time.time()
    world = world_v3(args.world_seed)
    print(json.dumps({"separation": {k: [round(v, 3) for v in vs] for k, vs in separation(world).items()}}),
          flush=True)
    base = pretrained_base(world, args)
    controls, sweeps = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        trained, held = train_arms(world, base, seed, args)
        idx = list(range(args.eval_scenes))
        controls.append(control(base, trained, held, idx, seed))
        print(json.dumps({"seed": seed, "control": controls[-1]}), flush=True)
        if not args.control_only:
            sweeps.append(sweep(trained, held, idx, seed))
            print(json.dumps({"seed": seed, "sweep": sweeps[-1]}), flush=True)
    line = {"RESULT": summarise(controls, sweeps), "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
            "world_seed": args.world_seed, "pretrain_steps": args.pretrain_steps, "sft_steps": args.sft_steps,
            "eval_scenes": args.eval_scenes, "age_fraction": args.age_fraction, "seconds": round(time.time() - t0, 1)}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
