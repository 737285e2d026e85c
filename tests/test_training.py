import numpy as np
import pytest
import torch
from training_helpers import WORLD, sft_config, small_model, snapshot, toy_pairs

from idglow.errors import InputError
from idglow.synthetic import SyntheticFaceAnalyzer
from idglow.training.buckets import BucketBatchSampler, make_buckets, nearest_bucket
from idglow.training.config import DPOConfig, SFTConfig
from idglow.training.data import SyntheticSFTDataset, collate_group_samples
from idglow.training.trainer import DPOTrainer, SFTTrainer


def _base_name(name):  # peft wraps a layer as <layer>.base_layer
    return name.replace(".base_layer", "")


def test_sft_three_steps_change_every_trainable_parameter_and_nothing_frozen(tmp_path):
    model = small_model()
    before_t, before_a = snapshot(model.transformer), snapshot(model.adapter)
    trainer = SFTTrainer(sft_config(tmp_path, lora_rank=2), model, SyntheticSFTDataset(WORLD, 8, task="fusion"))
    out = trainer.train()
    assert out.global_step == 3 and all(np.isfinite(r["loss"]) for r in out.log_history)
    for name, p in model.adapter.named_parameters():
        assert not torch.equal(p, before_a[name]), f"adapter parameter {name} did not change"
    lora = [n for n, _ in model.transformer.named_parameters() if "lora_" in n]
    assert lora
    for name, p in model.transformer.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            continue
        assert torch.equal(p, before_t[_base_name(name)]), f"frozen parameter {name} changed"
    for name, p in model.transformer.named_parameters():
        if "lora_B" in name:
            assert p.abs().sum() > 0, f"LoRA {name} did not train"
    out_dir = trainer.save_model()
    assert (out_dir / "adapter" / "config.json").is_file() and (out_dir / "lora").is_dir()


def test_gradient_checkpointing_keeps_the_identity_gradients(tmp_path):
    """With checkpointing the adapter must get the same update as without (recomputation re-injects)."""
    results = []
    for checkpointing in (False, True):
        model = small_model()
        cfg = sft_config(tmp_path / str(checkpointing), max_steps=1, gradient_checkpointing=checkpointing)
        trainer = SFTTrainer(cfg, model, SyntheticSFTDataset(WORLD, 8, task="fusion"))
        if checkpointing:  # autograd may recompute in its own threads: the identity-aware checkpoint is required
            from idglow.adapter import identity_checkpoint

            assert model.transformer._gradient_checkpointing_func is identity_checkpoint
        trainer.train()
        results.append(snapshot(model.adapter))
    plain, checkpointed = results
    for name, p in plain.items():
        torch.testing.assert_close(checkpointed[name], p, rtol=1e-4, atol=1e-6, msg=name)


def test_dpo_three_steps_train_policy_and_keep_reference_frozen(tmp_path):
    model = small_model()
    before_t, before_a = snapshot(model.transformer), snapshot(model.adapter)
    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=3, train_batch_size=2, learning_rate=1e-2,
                    report_to="none", checkpointing_steps=0, beta=50.0, gamma=1.0, lora_rank=2)
    trainer = DPOTrainer(cfg, model, toy_pairs())
    ref = trainer.unwrapped.ref_adapter
    for name, p in ref.named_parameters():  # reference starts as the SFT adapter
        assert torch.equal(p, before_a[name]) and not p.requires_grad
    out = trainer.train()
    assert all(np.isfinite(r["loss"]) for r in out.log_history)
    assert "accuracy/overall" in out.log_history[-1] and "accuracy/identity_0" in out.log_history[-1]
    for name, p in model.adapter.named_parameters():
        assert not torch.equal(p, before_a[name]), f"policy adapter parameter {name} did not change"
    for name, p in ref.named_parameters():
        assert torch.equal(p, before_a[name]), f"reference parameter {name} changed"
    for name, p in model.transformer.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, before_t[_base_name(name)]), f"frozen parameter {name} changed"


def test_dpo_at_start_policy_equals_reference_loss_is_log2(tmp_path):
    model = small_model()
    cfg = DPOConfig(output_dir=str(tmp_path / "dpo0"), max_steps=1, train_batch_size=3, learning_rate=1e-12,
                    report_to="none", checkpointing_steps=0, beta=10.0, gamma=0.0, lora_rank=2)
    trainer = DPOTrainer(cfg, model, toy_pairs(3))
    batch = next(iter(trainer.dataloader))
    loss, _ = trainer.compute_loss(batch, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(np.log(2), abs=1e-6)


def test_resume_continues_step_count_and_reproduces_losses(tmp_path):
    ds = SyntheticSFTDataset(WORLD, 6, task="mixed")
    full = SFTTrainer(sft_config(tmp_path / "a", max_steps=6), small_model(), ds).train()

    first = SFTTrainer(sft_config(tmp_path / "b", max_steps=4, checkpointing_steps=2, checkpoints_total_limit=1),
                       small_model(), ds).train()
    ckpts = sorted(p.name for p in (tmp_path / "b" / "run").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-4"]  # total limit 1 removed checkpoint-2
    resumed = SFTTrainer(sft_config(tmp_path / "b", max_steps=6, resume_from_checkpoint="latest"),
                         small_model(), ds).train()
    assert [r["step"] for r in resumed.log_history] == [5, 6]
    losses = [r["loss"] for r in first.log_history] + [r["loss"] for r in resumed.log_history]
    np.testing.assert_allclose(losses, [r["loss"] for r in full.log_history], rtol=1e-5)


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    cfg = sft_config(tmp_path, max_steps=2, gradient_accumulation_steps=2, train_batch_size=1)
    out = SFTTrainer(cfg, small_model(), SyntheticSFTDataset(WORLD, 8)).train()
    assert [r["step"] for r in out.log_history] == [1, 2]


def test_age_samples_train_identity_and_the_face_term_only_inside_their_window(tmp_path, monkeypatch):
    """The SFT age path: window sampling draws age samples' σ inside σ ∈ [0.3, 0.6] (fusion samples keep the
    full density); outside the window the gate folded into the identity scales and the face-term gate switch
    both off, so an age sample there teaches the adapter nothing and its loss has no face term."""
    model = small_model()
    trainer = SFTTrainer(sft_config(tmp_path, train_batch_size=4, window_sampling_fraction=1.0, face_lambda=1.0),
                         model, SyntheticSFTDataset(WORLD, 8, task="age"))
    tasks = ["age"] * 32 + ["fusion"] * 32
    sigmas = trainer.sample_sigmas(64, torch.Generator().manual_seed(0), tasks, 1.0).cpu()
    assert bool(((sigmas[:32] >= 0.3) & (sigmas[:32] <= 0.6)).all())
    assert bool(((sigmas[32:] < 0.3) | (sigmas[32:] > 0.6)).any())

    batch = next(iter(trainer.dataloader))
    assert set(batch["task"]) == {"age"} and bool(batch["id_mask"].any())

    def step(sigma: float, face_lambda: float) -> tuple[float, float]:
        """(loss, size of the adapter's gradient) of one step with every sample at ``sigma``."""
        monkeypatch.setattr(trainer, "sample_sigmas", lambda b, *_: torch.full((b,), sigma))
        monkeypatch.setattr(trainer.config, "face_lambda", face_lambda)
        model.zero_grad(set_to_none=True)
        loss, _ = trainer.compute_loss(batch, torch.Generator().manual_seed(0))
        if loss.requires_grad:  # only the adapter trains (no LoRA): without identity nothing has a gradient
            loss.backward()
        grads = [p.grad.abs().sum() for p in model.adapter.parameters() if p.grad is not None]
        return loss.item(), float(sum(grads)) if grads else 0.0

    outside, outside_no_face = step(0.85, 1.0), step(0.85, 0.0)
    inside, inside_no_face = step(0.45, 1.0), step(0.45, 0.0)
    assert outside[1] == 0.0 and outside_no_face[1] == 0.0
    assert outside[0] == outside_no_face[0]
    assert inside[1] > 0.0
    assert inside[0] > inside_no_face[0]


def _identity_scales(trainer, monkeypatch, batch, sigma: float) -> torch.Tensor:
    """The per-person identity scales the SFT step hands the model, with every sample at ``sigma``."""
    seen = []
    forward = trainer.model

    def spy(*args, **kwargs):
        seen.append(args[6].detach().cpu())
        return forward(*args, **kwargs)

    monkeypatch.setattr(trainer, "sample_sigmas", lambda b, *_: torch.full((b,), sigma))
    monkeypatch.setattr(trainer, "model", spy)
    try:
        trainer.compute_loss(batch, torch.Generator().manual_seed(0))
    finally:
        monkeypatch.setattr(trainer, "model", forward)
    return seen[0]


def test_age_samples_window_only_the_people_with_a_target_age_as_inference_does(tmp_path, monkeypatch):
    """Per-person windows in training: in an age sample, the person without a target age keeps identity (and
    their face term) at every σ, exactly the windows the pipeline builds (``slot_windows``); the re-aged
    person is gated by the age window."""
    from idglow.schedule import slot_windows

    model = small_model()
    ds = SyntheticSFTDataset(WORLD, 8, task="age")
    samples = [ds[i] for i in range(8) if len(ds[i]["face_boxes"]) >= 2][:2]
    for s in samples:
        s["target_ages"] = [None] + [6.0] * (len(s["face_boxes"]) - 1)
    batch = collate_group_samples(samples)
    trainer = SFTTrainer(sft_config(tmp_path, face_lambda=1.0), model, ds)
    for sigma in (0.85, 0.45, 0.1):
        scales = _identity_scales(trainer, monkeypatch, batch, sigma)
        for i, ages in enumerate(batch["target_ages"]):
            expected = [w.gate(sigma) for w in slot_windows("age", ages)]
            assert scales[i, : len(ages)].tolist() == expected
    outside = _identity_scales(trainer, monkeypatch, batch, 0.85)
    assert outside[:, 0].tolist() == [1.0, 1.0] and float(outside[:, 1:].abs().sum()) == 0.0

    def loss(face_lambda):
        monkeypatch.setattr(trainer.config, "face_lambda", face_lambda)
        return trainer.compute_loss(batch, torch.Generator().manual_seed(0))[0].item()

    assert loss(1.0) > loss(0.0)  # outside the window the un-aged person's face term still counts


def test_dpo_uses_the_same_per_person_windows(tmp_path, monkeypatch):
    pairs = toy_pairs(4)
    samples = [pairs[i] for i in range(4) if len(pairs[i]["face_boxes_0"]) >= 2][:1]
    samples[0] = {**samples[0], "task": "age", "target_ages": [None] + [6.0] * (len(samples[0]["face_boxes_0"]) - 1)}
    cfg = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, report_to="none", checkpointing_steps=0)
    trainer = DPOTrainer(cfg, small_model(), toy_pairs())
    batch = collate_group_samples(samples)
    gates = trainer.slot_gates(batch, torch.tensor([0.85]), batch["id_embeds"].shape[1])
    assert gates[0, 0].item() == 1.0 and float(gates[0, 1:].sum()) == 0.0
    assert trainer.slot_gates(batch, torch.tensor([0.45]), batch["id_embeds"].shape[1]).min().item() == 1.0


def test_training_window_coordinate_moves_the_age_window(tmp_path):
    """``window_coordinate: one_minus_sigma`` reads the age window [0.3, 0.6] as t = 1 − σ, i.e. σ ∈ [0.4, 0.7]."""
    ds = SyntheticSFTDataset(WORLD, 4, task="age")
    batch = collate_group_samples([ds[0]])
    n = batch["id_embeds"].shape[1]
    gates = {}
    for coordinate in ("sigma", "one_minus_sigma", "step_fraction"):
        trainer = SFTTrainer(sft_config(tmp_path / coordinate, window_coordinate=coordinate), small_model(), ds)
        gates[coordinate] = [trainer.slot_gates(batch, torch.tensor([s]), n)[0, 0].item() for s in (0.35, 0.65, 0.8)]
    assert gates["sigma"] == [1.0, 0.0, 0.0]
    assert gates["one_minus_sigma"] == [0.0, 1.0, 0.0]
    assert gates["step_fraction"] == [0.0, 0.0, 1.0]  # FLUX 1024² shift: steps 30–60 % are σ ∈ [0.68, 0.88]
    with pytest.raises(ValueError, match="window_coordinate='t'"):
        SFTConfig(window_coordinate="t")


def test_identity_decay_switch_reaches_the_face_term(tmp_path, monkeypatch):
    """``identity_decay: flat`` (the ablation) keeps the face term's weight at w_clean at high noise, where the
    paper's linear decay lowers it to w_noisy; at σ ≈ 0 the two agree."""
    ds = SyntheticSFTDataset(WORLD, 4, task="fusion")
    batch = collate_group_samples([ds[0], ds[1]])
    losses = {}
    for decay in ("linear", "flat"):
        trainer = SFTTrainer(sft_config(tmp_path / decay, identity_decay=decay, face_lambda=1.0), small_model(), ds)
        losses[decay] = []
        for sigma in (1e-4, 0.9):
            monkeypatch.setattr(trainer, "sample_sigmas", lambda b, *_, s=sigma: torch.full((b,), s))
            losses[decay].append(trainer.compute_loss(batch, torch.Generator().manual_seed(0))[0].item())
    assert losses["flat"][0] == pytest.approx(losses["linear"][0], rel=1e-3)
    assert losses["flat"][1] > losses["linear"][1] * 1.01
    with pytest.raises(ValueError, match="identity_decay='cosine'"):
        SFTConfig(identity_decay="cosine")


def test_config_validation_and_yaml_overrides(tmp_path):
    with pytest.raises(ValueError, match="max_steps=0"):
        SFTConfig(max_steps=0)
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="sigma_lo"):
        SFTConfig(age_window=(0.7, 0.2))
    path = tmp_path / "cfg.yaml"
    path.write_text("max_steps: 7\nlearning_rate: 0.001\nface_lambda: 2.0\n")
    cfg = SFTConfig.from_yaml(path, ["max_steps=9", "age_window=[0.2, 0.5]"])
    assert (cfg.max_steps, cfg.learning_rate, cfg.face_lambda, cfg.age_window) == (9, 0.001, 2.0, (0.2, 0.5))
    with pytest.raises(ValueError, match="unknown SFTConfig option.*bogus"):
        SFTConfig.from_yaml(path, ["bogus=1"])
    # YAML reads 1e-4 (no dot) as a string and 2 as an int: both become the number the field declares
    path.write_text("learning_rate: 1e-4\nbeta: 2\ncheckpoints_total_limit: null\n")
    cfg = DPOConfig.from_yaml(path, ["max_steps=3.0"])
    assert (cfg.learning_rate, cfg.beta, cfg.max_steps, cfg.checkpoints_total_limit) == (1e-4, 2.0, 3, None)
    assert type(cfg.beta) is float and type(cfg.max_steps) is int
    with pytest.raises(InputError, match="learning_rate='fast' is not a number"):
        DPOConfig.from_yaml(path, ["learning_rate=fast"])
    with pytest.raises(InputError, match="max_steps=2.5 is not an integer"):
        DPOConfig.from_yaml(path, ["max_steps=2.5"])


@pytest.mark.parametrize("name", ["sft.yaml", "sft_tiny.yaml", "dpo.yaml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / name
    cfg = (DPOConfig if name.startswith("dpo") else SFTConfig).from_yaml(path)
    assert cfg.output_dir.startswith("runs/") and cfg.output_dir != "runs/idglow"  # read from the file


def test_buckets_and_bucket_sampler():
    buckets = make_buckets(512)
    assert (512, 512) in buckets and all(w % 16 == 0 and h % 16 == 0 for w, h in buckets)
    assert buckets[nearest_bucket(1920, 1080, buckets)][0] > buckets[nearest_bucket(1920, 1080, buckets)][1]
    ids = [0, 1, 0, 1, 0, 1, 0, 1]
    s0 = BucketBatchSampler(ids, 2, num_replicas=2, rank=0)
    s1 = BucketBatchSampler(ids, 2, num_replicas=2, rank=1)
    b0, b1 = list(s0), list(s1)
    assert len(b0) == len(b1) == 2
    for batch in b0 + b1:
        assert len({ids[i] for i in batch}) == 1
    assert sorted(i for b in b0 + b1 for i in b) == list(range(8))
    s0.set_epoch(1)
    assert list(s0) != b0 or list(s1) != b1


def test_collate_pads_identities():
    ds = SyntheticSFTDataset(WORLD, 4)
    samples = [ds[i] for i in range(4)]
    batch = collate_group_samples(samples)
    n = max(len(s["face_boxes"]) for s in samples)
    assert batch["id_embeds"].shape == (4, n, WORLD.embedding_dim)
    assert batch["id_mask"].sum().item() == sum(len(s["face_boxes"]) for s in samples)


def test_synthetic_analyzer_on_small_world():
    ds = SyntheticSFTDataset(WORLD, 2, task="age")
    target, refs = ds.spec(0)
    faces = SyntheticFaceAnalyzer(WORLD).detect(ds[0]["latents"])
    assert len(faces) == target.num_subjects and any(target.child)
