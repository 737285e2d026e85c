"""Learning evidence on the synthetic identity world (CPU): SFT learns identity, DPO learns the oracle's
preferences. A small real FluxTransformer2DModel + IdGlowAdapter generates latents directly (no VAE), trained
by the project's SFTTrainer and DPOTrainer.

The world (``learning_world``) centres 2–3 people in the cells of a 2×2 grid that the prompt names, so the
pretrained base draws every person the prompt places and identity similarity measures identity, not presence.
The base is pretrained once per module and shared by the tests.
"""

import copy

import numpy as np
import pytest
import torch

from idglow.synthetic import SyntheticFaceAnalyzer
from idglow.training.config import DPOConfig, SFTConfig
from idglow.training.data import PreferencePairDataset, SyntheticSFTDataset
from idglow.training.synthetic_runs import (
    CachedDataset,
    build_learning_model,
    evaluate,
    generate,
    implicit_reward_counts,
    learning_world,
    preference_pairs,
    pretrain_base,
    ratio_interval,
    win_outcomes,
)
from idglow.training.trainer import DPOTrainer, SFTTrainer

PRETRAIN_STEPS = 400
SFT_STEPS = 500
DPO_STEPS = 300
DPO_POOL = 1280
HELD_OUT = 32
HELD_OUT_PAIRS = 64
WIN_PROMPTS = 128
# Measured with these settings and the earlier labeller (identity of the Hungarian-matched face, wherever it
# stood): held-out reward accuracy 0.562 [0.492, 0.634], judge win rate 0.547 [0.469, 0.633], accuracy on 64
# training pairs 0.620 [0.550, 0.687] (95% bootstrap). The held-out intervals do not exclude chance, so their bar
# is only "no worse than chance"; DPO does fit its own training pairs. With the labeller reading identity in each
# person's prompted box (today's): held-out accuracy 0.559 [0.476, 0.639], judge win rate 0.789 [0.719, 0.859],
# training pairs 0.761 [0.690, 0.826] (one seed); `python -m idglow.training.synthetic_runs --seeds 0 1 2` reruns
# this evidence per seed.
ACC_AFTER_MIN = 0.5
JUDGE_WIN_MIN = 0.5
FIT_MIN = 0.58

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_run():
    torch.manual_seed(0)
    world = learning_world()
    model = build_learning_model(world)
    train = CachedDataset(SyntheticSFTDataset(world, 1024, task="fusion", seed=0))
    losses = pretrain_base(model, train, PRETRAIN_STEPS, batch_size=16, lr=2e-3)
    return {"world": world, "model": model, "train": train, "losses": losses}


@pytest.fixture(scope="module")
def sft_run(base_run, tmp_path_factory):
    world, model = base_run["world"], copy.deepcopy(base_run["model"])
    held = SyntheticSFTDataset(world, HELD_OUT, task="fusion", seed=999)
    idx = list(range(HELD_OUT))
    before = evaluate(model, held, idx)
    cfg = SFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), max_steps=SFT_STEPS, train_batch_size=16,
                    learning_rate=2e-3, report_to="none", checkpointing_steps=0)
    SFTTrainer(cfg, model, base_run["train"]).train()
    after = evaluate(model, held, idx)
    return {"world": world, "model": model, "before": before, "after": after, "tmp": tmp_path_factory}


def test_pretrained_base_draws_every_person_the_prompt_places(base_run):
    """Presence is the base model's job: every prompted person is drawn, in its cell, and nothing else."""
    world, model = base_run["world"], base_run["model"]
    assert np.mean(base_run["losses"][-20:]) < 0.5 * np.mean(base_run["losses"][:20])
    held = SyntheticSFTDataset(world, HELD_OUT, task="fusion", seed=999)
    analyzer = SyntheticFaceAnalyzer(world)
    drawn, wanted, extra = 0, 0, 0
    for i, lat in enumerate(generate(model, held, list(range(HELD_OUT)))):
        spec, _ = held.spec(i)
        cells = {world.cell_of(f.bbox) for f in analyzer.detect(lat)}
        want = {world.cell_of(b) for b in spec.boxes}
        drawn += len(cells & want)
        wanted += len(want)
        extra += len(cells - want)
    print(f"base drew {drawn}/{wanted} prompted people, {extra} extra")
    assert drawn >= 0.95 * wanted and extra <= 0.05 * wanted


def test_sft_raises_held_out_identity_similarity(sft_run):
    before, after = sft_run["before"], sft_run["after"]
    print(f"SFT held-out identity: untrained adapter {before['identity']:.3f} -> trained {after['identity']:.3f} "
          f"matched, {before['identity_in_place']:.3f} -> {after['identity_in_place']:.3f} by position (code "
          f"similarity {before['code_similarity']:.3f} -> {after['code_similarity']:.3f} matched, "
          f"{before['place_code_similarity']:.3f} -> {after['place_code_similarity']:.3f} by position); binding "
          f"accuracy {after['binding_accuracy']:.3f}, swap rate {after['swap_rate']:.3f}")
    assert after["identity"] - before["identity"] >= 0.3, (before, after)


def test_dpo_learns_oracle_preferences_from_seed_pairs(sft_run):
    """DPO without engineered pairs: each prompt's two candidates come from the same SFT model at the same ID
    weight and different seeds; the oracle labels every dimension, reading each person's identity in their
    prompted box (a face drawn in another person's place counts against both); the win rate is judged by
    ``judge_scores``, which labelled nothing (position-anchored, structure-free code similarity). Intervals: 95% bootstrap over
    held-out pairs (reward accuracy) and prompts (win rates)."""
    world, model = sft_run["world"], copy.deepcopy(sft_run["model"])
    pool = SyntheticSFTDataset(world, DPO_POOL, task="fusion", seed=5)
    pairs = preference_pairs(model, pool, list(range(len(pool))), seed=100)
    train_pairs, test_pairs = pairs[:-HELD_OUT_PAIRS], pairs[-HELD_OUT_PAIRS:]  # held out: other prompts
    evalset = SyntheticSFTDataset(world, WIN_PROMPTS, task="fusion", seed=77)
    eidx = list(range(len(evalset)))
    sft_samples = generate(model, evalset, eidx, seed=5000)
    cfg = DPOConfig(output_dir=str(sft_run["tmp"].mktemp("dpo")), max_steps=DPO_STEPS, train_batch_size=16,
                    learning_rate=1e-4, beta=500.0, gamma=1.0, report_to="none", checkpointing_steps=0)
    trainer = DPOTrainer(cfg, model, PreferencePairDataset(train_pairs))
    acc_before = ratio_interval(*implicit_reward_counts(model, test_pairs, draws=2))  # policy = reference: ½
    trainer.train()
    acc_after = ratio_interval(*implicit_reward_counts(model, test_pairs, draws=32))
    fit = ratio_interval(*implicit_reward_counts(model, train_pairs[:HELD_OUT_PAIRS], draws=32))
    dpo_samples = generate(model, evalset, eidx, seed=5000)
    held = SyntheticSFTDataset(world, HELD_OUT, task="fusion", seed=999)
    sft, dpo = sft_run["after"], evaluate(model, held, list(range(HELD_OUT)))
    ones = np.ones(len(eidx))
    judge = ratio_interval(win_outcomes(evalset, eidx, dpo_samples, sft_samples, scorer="judge"), ones)
    oracle = ratio_interval(win_outcomes(evalset, eidx, dpo_samples, sft_samples, scorer="oracle"), ones)
    fmt = "{:.3f} [{:.3f}, {:.3f}]".format
    print(f"DPO on {len(train_pairs)} seed pairs: held-out implicit reward accuracy {fmt(*acc_before)} -> "
          f"{fmt(*acc_after)} ({len(test_pairs)} pairs), on {HELD_OUT_PAIRS} training pairs {fmt(*fit)}; win rate over SFT on {len(eidx)} prompts: judge "
          f"{fmt(*judge)}, oracle (labeller) {fmt(*oracle)}; held-out identity SFT -> DPO "
          f"{sft['identity']:.3f} -> {dpo['identity']:.3f} matched, {sft['identity_in_place']:.3f} -> "
          f"{dpo['identity_in_place']:.3f} by position, swap rate {sft['swap_rate']:.3f} -> {dpo['swap_rate']:.3f}")
    assert abs(acc_before[0] - 0.5) < 0.05
    assert acc_after[0] >= ACC_AFTER_MIN
    assert judge[0] >= JUDGE_WIN_MIN
    assert fit[0] >= FIT_MIN
