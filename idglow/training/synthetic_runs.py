"""End-to-end runs on the synthetic identity world: pretraining the base model, generating and scoring
scenes, and making oracle-labelled preference pairs. Used by the learning tests and the benchmarks."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from idglow.losses import add_flow_noise, flow_target
from idglow.schedule import IdentityWindow, window_for_task
from idglow.synthetic import (
    SyntheticFaceAnalyzer,
    SyntheticWorld,
    judge_scores,
    oracle_preference,
    oracle_scores,
    scene_metrics,
)
from idglow.training.data import SyntheticSFTDataset, collate_group_samples
from idglow.training.modeling import (
    IdGlowDenoiser,
    build_synthetic_model,
    euler_sample,
    latent_image_ids,
    pack_latents,
)

logger = logging.getLogger(__name__)


def learning_world(seed: int = 0) -> SyntheticWorld:
    """The world of the learning tests and benchmarks: a 16×16 latent split into a 2×2 grid, 2–3 people per
    scene, each centred in a distinct cell that the prompt names. Where people are is known from the prompt,
    who they are only from the references, so identity similarity measures identity rather than presence."""
    return SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), min_people=2, max_people=3,
                          code_dim=6, embedding_dim=32, layout="grid", grid=(2, 2), seed=seed)


def learning_world_v2(seed: int = 0, structure_weight: float = 0.5) -> SyntheticWorld:
    """The world without giveaways: 2–3 people anywhere in a 16×16 latent (at least 2 pixels apart), named by
    words only (order from the left, "left" / "middle" / "right", "upper" / "lower", "child" / "adult"), and
    reference embeddings that carry the reference's structure (``structure_weight``), so a model that learns to
    copy a reference can copy its age along with its identity."""
    return SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), min_people=2, max_people=3,
                          code_dim=6, embedding_dim=32, layout="random", prompt="words", position_bins=(3, 2),
                          structure_weight=structure_weight, seed=seed)


def build_learning_model(world: SyntheticWorld, seed: int = 0) -> IdGlowDenoiser:
    """The model of the learning tests and benchmarks: a real FluxTransformer2DModel (1 double + 2 single
    blocks, 4 heads of 32 with three rotary frequencies per spatial axis) and an IdGlowAdapter."""
    return build_synthetic_model(world, seed=seed, heads=4, head_dim=32, axes_dims_rope=(8, 12, 12))


def pretrain_base(model: IdGlowDenoiser, dataset: SyntheticSFTDataset, steps: int, *, batch_size: int = 16,
                  lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Train the transformer alone (no identity) on the world's scenes: the stand-in for a pretrained FLUX
    that draws people where the prompt puts them but knows nobody. Returns the losses."""
    model.transformer.requires_grad_(True)
    model.adapter.requires_grad_(False)
    opt = torch.optim.AdamW(model.transformer.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _step in range(steps):
        idx = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
        batch = collate_group_samples([dataset[i] for i in idx])
        x0 = batch["latents"]
        b, _, h, w = x0.shape
        noise = torch.randn(x0.shape, generator=g)
        sigmas = torch.sigmoid(torch.randn(b, generator=g))
        pred = model(pack_latents(add_flow_noise(x0, noise, sigmas)), sigmas, batch["prompt_embeds"],
                     batch["pooled_prompt_embeds"], latent_image_ids(h, w))
        loss = torch.nn.functional.mse_loss(pred, pack_latents(flow_target(x0, noise)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.transformer.requires_grad_(False)
    model.adapter.requires_grad_(True)
    model.eval()
    return losses


def noise_batches(dataset, indices: list[int], seed: int, batch_size: int):
    """(start, collated batch, initial noise) per chunk of ``indices``; sample ``i``'s noise is seeded ``seed + i``,
    so an image does not depend on its batch-mates."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        noise = torch.stack([torch.randn(dataset.world.latent_shape, generator=torch.Generator().manual_seed(seed + i))
                             for i in chunk])
        yield start, collate_group_samples([dataset[i] for i in chunk]), noise


@torch.no_grad()
def generate(model: IdGlowDenoiser, dataset: SyntheticSFTDataset, indices: list[int], *, seed: int = 0,
             num_steps: int = 10, window: IdentityWindow | None = None, id_scale: float | list[float] = 1.0,
             batch_size: int = 16, with_identity: bool = True) -> list[torch.Tensor]:
    """Generated latents (C, S, S) for ``dataset[i]`` (its prompt and references), noise from ``seed + i``;
    identity injected inside ``window`` (default: each sample's task window; any object with ``gate(σ)``
    works, e.g. a strength schedule) at ``id_scale`` (one value, or one per index). ``with_identity=False``
    runs the transformer alone (the base model)."""
    if not isinstance(id_scale, (int, float)) and len(id_scale) != len(indices):
        raise ValueError(f"got {len(id_scale)} id scales for {len(indices)} indices")
    was_training = model.training
    model.eval()
    out = []
    for start, batch, noise in noise_batches(dataset, indices, seed, batch_size):
        windows = [window or window_for_task(t) for t in batch["task"]]
        scale = (id_scale if isinstance(id_scale, (int, float))
                 else torch.tensor(id_scale[start:start + batch_size], dtype=torch.float32))
        id_embeds = batch["id_embeds"] if with_identity else None
        lat = euler_sample(model, noise, batch["prompt_embeds"], batch["pooled_prompt_embeds"], id_embeds,
                           batch["id_mask"], windows, num_steps=num_steps, id_scale=scale)
        out.extend(lat)
    model.train(was_training)
    return out


def evaluate(model: IdGlowDenoiser, dataset: SyntheticSFTDataset, indices: list[int], **kwargs) -> dict[str, float]:
    """Over generated scenes (``generate``'s keyword arguments pass through): mean Hungarian-matched identity
    similarity (against the reference embeddings, wherever the faces stand) and the same read *by position*
    (``identity_in_place``: the face in each person's prompted box), code similarity matched and by position
    (structure-free; 0 for a missing person or an empty place), ``binding_accuracy`` (people whose box holds
    their own face) and ``swap_rate`` (people whose box holds another member's face), the fraction of people
    shown with the requested structure (child/adult), the mean age error of the structure of matched people
    (years), layout accuracy (people in the coarse region the prompt names) and missing people per scene."""
    analyzer = SyntheticFaceAnalyzer(dataset.world)
    latents = generate(model, dataset, indices, **kwargs)
    keys = ("identity", "identity_in_place", "code_similarity", "place_code_similarity", "in_place", "swapped",
            "structure_ok", "missing", "age_error", "layout_accuracy")
    got: dict[str, list] = {k: [] for k in keys}
    for i, lat in zip(indices, latents):
        target, refs = dataset.spec(i)
        m = scene_metrics(analyzer, lat, target, dataset.reference_embeddings(refs))
        for k in ("identity", "identity_in_place", "missing", "layout_accuracy"):
            got[k].append(m[k])
        for k in ("code_similarity", "place_code_similarity", "in_place", "structure_ok"):
            got[k].extend(m[k])
        got["swapped"].extend(o is not None for o in m["binding"].instead)
        got["age_error"].extend(e for e in m["age_error"] if e is not None)
    out = {k: float(np.mean(got[k])) if got[k] else float("nan") for k in keys}
    out["binding_accuracy"], out["swap_rate"] = out.pop("in_place"), out.pop("swapped")
    out["structure_accuracy"] = out.pop("structure_ok")
    return out


def preference_pairs(model: IdGlowDenoiser, dataset: SyntheticSFTDataset, indices: list[int], *,
                     seed: int = 0, num_steps: int = 10, id_scale: float = 1.0,
                     id_scale_ranges: tuple[tuple[float, float], tuple[float, float]] | None = None,
                     tie: float = 0.02, clear: float = 0.1) -> list[dict[str, Any]]:
    """Two samples per prompt (seeds ``seed + i`` and ``seed + 10⁶ + i``), labelled by the oracle
    (``oracle_preference`` with ``tie`` / ``clear``), as DPO samples; pairs that tie on every dimension are
    dropped.

    With ``id_scale_ranges`` = ((lo, hi), (lo, hi)) a pair's two candidates draw their identity scales
    uniformly from the first and the second range, in random order (seeded by ``seed``), the way annotation
    candidates are made at different ID weights: ((0, 0.3), (0.8, 1)) pairs a weak with a strong one, and
    two equal ranges give pairs of varied weight. Otherwise both use ``id_scale``."""
    analyzer = SyntheticFaceAnalyzer(dataset.world)
    scales: tuple[Any, Any] = (id_scale, id_scale)
    if id_scale_ranges is not None:
        if len(id_scale_ranges) != 2 or any(not 0.0 <= lo <= hi for lo, hi in id_scale_ranges):
            raise ValueError(f"id_scale_ranges={id_scale_ranges} must be two (lo, hi) with 0 <= lo <= hi")
        rng = np.random.default_rng(seed)
        drawn = np.stack([rng.uniform(lo, hi, size=len(indices)) for lo, hi in id_scale_ranges])
        swap = rng.random(len(indices)) < 0.5
        scales = (np.where(swap, drawn[1], drawn[0]).tolist(), np.where(swap, drawn[0], drawn[1]).tolist())
    a = generate(model, dataset, indices, seed=seed, num_steps=num_steps, id_scale=scales[0])
    b = generate(model, dataset, indices, seed=seed + 1_000_000, num_steps=num_steps, id_scale=scales[1])
    pairs = []
    s = float(dataset.world.size)
    for i, la, lb in zip(indices, a, b):
        target, _ = dataset.spec(i)
        sa, sb = oracle_scores(analyzer, la, target), oracle_scores(analyzer, lb, target)
        pref, strength = _declared_layout(*oracle_preference(sa, sb, tie=tie, clear=clear,
                                                             max_slots=dataset.world.max_slots))
        if not pref.any():
            continue
        sample = dataset[i]
        boxes = []
        for lat in (la, lb):
            places = scene_metrics(analyzer, lat, target)["binding"].place_bboxes  # each person's own place
            boxes.append([None if bb is None else tuple(v / s for v in bb) for bb in places])
        pairs.append({
            "latents_0": la, "latents_1": lb, "prompt_embeds": sample["prompt_embeds"],
            "pooled_prompt_embeds": sample["pooled_prompt_embeds"], "id_embeds": sample["id_embeds"],
            "face_boxes_0": boxes[0], "face_boxes_1": boxes[1], "task": sample["task"],
            "preference": torch.from_numpy(pref), "strength": torch.from_numpy(strength), "pair_id": i,
        })
    return pairs


def _declared_layout(pref: np.ndarray, strength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's labels (overall, texture, artifacts, identity_0..) moved by name into the layout of the
    declared DPO dimensions (``idglow.preferences``); a dimension the oracle does not judge is unlabelled."""
    from idglow.preferences import dimension_names

    oracle = ("overall", "texture", "artifacts") + tuple(f"identity_{j}" for j in range(len(pref) - 3))
    names = dimension_names()
    out_pref = np.zeros(len(names), dtype=np.float32)
    out_strength = np.zeros(len(names), dtype=np.float32)
    for i, name in enumerate(oracle):
        if name in names:
            out_pref[names.index(name)] = pref[i]
            out_strength[names.index(name)] = strength[i]
    return out_pref, out_strength


class CachedDataset(torch.utils.data.Dataset):
    """Materialise a synthetic dataset once (rendering and reference embedding cost more than a tiny step)."""

    def __init__(self, dataset: SyntheticSFTDataset):
        self.dataset = dataset
        self.world = dataset.world
        self.items = [dataset[i] for i in range(len(dataset))]
        self.bucket_ids = [0] * len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]

    def spec(self, index: int):
        return self.dataset.spec(index)

    def reference_embeddings(self, refs):
        return self.dataset.reference_embeddings(refs)


@torch.no_grad()
def implicit_reward_counts(model: IdGlowDenoiser, pairs: list[dict[str, Any]], *, draws: int = 8,
                           seed: int = 0, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: (correctly ranked labelled dimensions, labelled dimensions), each (len(pairs),).

    A labelled dimension d is ranked correctly when Δ_d < 0, with the errors averaged over ``draws`` noise/σ
    draws; Δ_d = 0 (policy = reference) counts one half. Pairs are the unit to resample for an interval (see
    ``ratio_interval``): a pair's dimensions share its images."""
    from idglow.losses import orient_pairs, region_errors
    from idglow.training.data import dpo_region_masks, num_dimensions
    from idglow.training.modeling import pack_masks

    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct, total = [], []
    for start in range(0, len(pairs), batch_size):
        batch = collate_group_samples(pairs[start:start + batch_size])
        lat = torch.cat([batch["latents_0"], batch["latents_1"]])
        b, _, h, w = batch["latents_0"].shape
        n = batch["id_embeds"].shape[1]
        masks = torch.cat([pack_masks(m) for m in dpo_region_masks(batch["face_boxes_0"], batch["face_boxes_1"],
                                                                    n, h, w)])
        windows = [window_for_task(t) for t in batch["task"]]
        err_p = torch.zeros(2 * b, num_dimensions())
        err_r = torch.zeros(2 * b, num_dimensions())
        for _ in range(draws):
            noise = torch.randn(batch["latents_0"].shape, generator=g)
            sig = torch.rand(b, generator=g) * 0.98 + 0.01
            gates = torch.tensor([wd.gate(float(s)) for wd, s in zip(windows, sig)])
            scales = batch["id_mask"] * gates[:, None]
            noise2, sig2 = torch.cat([noise, noise]), torch.cat([sig, sig])
            args = (pack_latents(add_flow_noise(lat, noise2, sig2)), sig2, torch.cat([batch["prompt_embeds"]] * 2),
                    torch.cat([batch["pooled_prompt_embeds"]] * 2), latent_image_ids(h, w),
                    torch.cat([batch["id_embeds"]] * 2), torch.cat([scales, scales]))
            target = pack_latents(flow_target(lat, noise2))
            err_p += region_errors(model(*args), target, masks)
            err_r += region_errors(model(*args, reference=True), target, masks)
        pw, pl, lab = orient_pairs(err_p[:b], err_p[b:], batch["preference"])
        rw, rl, _ = orient_pairs(err_r[:b], err_r[b:], batch["preference"])
        delta = (pw - rw) - (pl - rl)
        correct.append((((delta < 0).float() + 0.5 * (delta == 0).float()) * lab).sum(-1))
        total.append(lab.sum(-1))
    model.train(was_training)
    return torch.cat(correct).numpy(), torch.cat(total).numpy()


def win_outcomes(dataset, indices: list[int], new: list[torch.Tensor], old: list[torch.Tensor], *,
                 scorer: str = "judge") -> np.ndarray:
    """Per prompt: 1 when ``scorer`` prefers ``new[i]`` over ``old[i]`` overall, ½ for a tie, 0 otherwise.

    ``scorer="judge"`` is ``judge_scores`` (a scorer that labelled nothing: position-anchored, structure-free
    code similarity); ``"oracle"`` is the labeller itself (``oracle_scores``)."""
    if scorer not in ("judge", "oracle"):
        raise ValueError(f"scorer={scorer!r}; expected 'judge' or 'oracle'")
    score = judge_scores if scorer == "judge" else oracle_scores
    analyzer = SyntheticFaceAnalyzer(dataset.world)
    out = []
    for i, a, b in zip(indices, new, old):
        target, _ = dataset.spec(i)
        sa, sb = score(analyzer, a, target)["overall"], score(analyzer, b, target)["overall"]
        out.append(1.0 if sa > sb else (0.5 if sa == sb else 0.0))
    return np.asarray(out)


def ratio_interval(numerators, denominators, *, confidence: float = 0.95, num_resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Σ numerators / Σ denominators with a percentile bootstrap interval over cases (resampled with
    replacement): (estimate, low, high). With all denominators 1 this is a mean and its interval."""
    from idglow.eval.metrics import bootstrap_indices

    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError(f"need two equal non-empty 1-d arrays, got shapes {num.shape} and {den.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    idx = bootstrap_indices(num.size, num_resamples, seed)
    ratios = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(num.sum() / max(den.sum(), 1e-12)), float(low), float(high)


def dpo_evidence(seed: int, out_dir: str, *, pretrain_steps: int = 400, sft_steps: int = 500, dpo_steps: int = 300,
                 pool: int = 1280, held_out: int = 32, held_out_pairs: int = 64, win_prompts: int = 128) -> dict:
    """The DPO learning evidence of ``tests/test_training_learning.py`` for one training seed (model init,
    batches, noise and the DPO pool's prompts; the world and the held-out sets stay fixed), with the
    binding-aware labeller: held-out identity matched and by position before and after SFT and after DPO,
    implicit reward accuracy (held-out and on training pairs) and win rates of DPO over SFT (judge and
    labeller), each with a 95% bootstrap interval."""
    import copy

    from idglow.training.config import DPOConfig, SFTConfig
    from idglow.training.data import PreferencePairDataset
    from idglow.training.trainer import DPOTrainer, SFTTrainer

    torch.manual_seed(seed)
    world = learning_world()
    model = build_learning_model(world, seed=seed)
    train = CachedDataset(SyntheticSFTDataset(world, 1024, task="fusion", seed=0))
    pretrain_base(model, train, pretrain_steps, batch_size=16, lr=2e-3, seed=seed)
    held = SyntheticSFTDataset(world, held_out, task="fusion", seed=999)
    idx = list(range(held_out))
    out: dict[str, Any] = {"seed": seed, "untrained": evaluate(model, held, idx)}
    cfg = SFTConfig(output_dir=f"{out_dir}/sft{seed}", max_steps=sft_steps, train_batch_size=16, learning_rate=2e-3,
                    report_to="none", checkpointing_steps=0, seed=seed)
    SFTTrainer(cfg, model, train).train()
    out["sft"] = evaluate(model, held, idx)
    pairs = preference_pairs(model, SyntheticSFTDataset(world, pool, task="fusion", seed=5 + 100 * seed),
                             list(range(pool)), seed=100 + seed)
    train_pairs, test_pairs = pairs[:-held_out_pairs], pairs[-held_out_pairs:]
    evalset = SyntheticSFTDataset(world, win_prompts, task="fusion", seed=77)
    eidx = list(range(win_prompts))
    sft_samples = generate(model, evalset, eidx, seed=5000)
    dpo_model = copy.deepcopy(model)
    cfg = DPOConfig(output_dir=f"{out_dir}/dpo{seed}", max_steps=dpo_steps, train_batch_size=16, learning_rate=1e-4,
                    beta=500.0, gamma=1.0, report_to="none", checkpointing_steps=0, seed=seed)
    DPOTrainer(cfg, dpo_model, PreferencePairDataset(train_pairs)).train()
    ones = np.ones(win_prompts)
    dpo_samples = generate(dpo_model, evalset, eidx, seed=5000)
    out.update(
        dpo=evaluate(dpo_model, held, idx), pairs=len(train_pairs),
        accuracy=ratio_interval(*implicit_reward_counts(dpo_model, test_pairs, draws=32)),
        fit=ratio_interval(*implicit_reward_counts(dpo_model, train_pairs[:held_out_pairs], draws=32)),
        judge=ratio_interval(win_outcomes(evalset, eidx, dpo_samples, sft_samples, scorer="judge"), ones),
        oracle=ratio_interval(win_outcomes(evalset, eidx, dpo_samples, sft_samples, scorer="oracle"), ones),
    )
    return out


#: The arms of :func:`decay_ablation`: SFT config overrides (None: the pretrained base, no identity).
DECAY_ARMS: dict[str, dict[str, Any] | None] = {
    "base": None,
    "linear": {"identity_decay": "linear"},
    "flat": {"identity_decay": "flat"},
    "no_face_term": {"face_lambda": 0.0},
}


def decay_ablation(seed: int, out_dir: str, *, arms: tuple[str, ...] = tuple(DECAY_ARMS), pretrain_steps: int = 400,
                   sft_steps: int = 300, batch_size: int = 16, eval_scenes: int = 32, train_task: str = "mixed",
                   eval_task: str = "age", train_scenes: int = 1024) -> dict[str, dict[str, float]]:
    """The training-time identity-constraint decay ablation in world v2 for one seed (world, initialisation,
    data, batches and noise all follow it): a base is pretrained once, then the adapter is trained by SFT from
    that base once per arm of ``DECAY_ARMS`` with the same data, budget and seed — w(σ) decaying linearly
    (``linear``, the default), constant (``flat``), or no face term at all (``no_face_term``, λ_face = 0) —
    and each arm generates the same held-out ``eval_task`` scenes (same noise, each person's inference
    window). ``base`` is the pretrained transformer alone. ``train_scenes``: scenes rendered for pretraining and
    for SFT. Returns ``evaluate``'s metrics per arm."""
    import copy

    from idglow.training.config import SFTConfig
    from idglow.training.trainer import SFTTrainer

    unknown = [a for a in arms if a not in DECAY_ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {', '.join(DECAY_ARMS)}")
    torch.manual_seed(seed)
    world = learning_world_v2(seed=seed)
    base = build_learning_model(world, seed=seed)
    pretrain_base(base, CachedDataset(SyntheticSFTDataset(world, train_scenes, task="mixed", seed=seed)),
                  pretrain_steps, batch_size=batch_size, seed=seed)
    train = CachedDataset(SyntheticSFTDataset(world, train_scenes, task=train_task, seed=seed + 1))
    held = SyntheticSFTDataset(world, eval_scenes, task=eval_task, seed=seed + 999)
    idx = list(range(eval_scenes))
    out: dict[str, dict[str, float]] = {}
    for arm in arms:
        overrides = DECAY_ARMS[arm]
        if overrides is None:
            out[arm] = evaluate(base, held, idx, seed=5000 + seed, with_identity=False)
            continue
        model = copy.deepcopy(base)
        cfg = SFTConfig(output_dir=f"{out_dir}/{arm}{seed}", max_steps=sft_steps, train_batch_size=batch_size,
                        learning_rate=2e-3, report_to="none", checkpointing_steps=0, seed=seed, **overrides)
        SFTTrainer(cfg, model, train).train()
        out[arm] = evaluate(model, held, idx, seed=5000 + seed)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m idglow.training.synthetic_runs --seeds 0 1 2``: the DPO learning evidence per seed, as
    JSON lines (see ``dpo_evidence``)."""
    import argparse
    import json
    import tempfile

    p = argparse.ArgumentParser(description=dpo_evidence.__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            print(json.dumps(dpo_evidence(seed, tmp)), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
