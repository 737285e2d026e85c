"""The SFT → DPO hand-off (the fused SFT LoRA is both the policy start and the frozen reference) and mixed
precision in both trainers."""

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import WORLD, sft_config, small_model, snapshot, toy_pairs

from idglow.cli import main as cli_main
from idglow.training.config import DPOConfig

LORA_RANK, LORA_ALPHA = 2, 4  # alpha ≠ rank: the LoRA scale (alpha / rank = 2) must survive the hand-off


def _train_command(stage: str, **options) -> int:
    """`idglow train STAGE --set key=value ...` on the tiny model at 64 px, no tracker, no checkpoints."""
    options = {"model": "tiny", "resolution": 64, "report_to": "none", "checkpointing_steps": 0, **options}
    argv = ["train", stage]
    for key, value in options.items():
        argv += ["--set", f"{key}={value}"]
    return cli_main(argv)


def _spy_load_model(monkeypatch, captured: list):
    """Record the model every `idglow train` run builds (it is trained in place)."""
    import idglow.commands.train as train_command

    original = train_command._load_model

    def spy(config, face_analyzer=None):
        loaded = original(config, face_analyzer)
        captured.append(loaded[0])
        return loaded

    monkeypatch.setattr(train_command, "_load_model", spy)


@pytest.fixture(scope="module")
def sft_run(sft_folder, tmp_path_factory):
    """`idglow train sft` with a LoRA for 2 steps: (output folder, the trained model as it is in memory)."""
    out = tmp_path_factory.mktemp("sft-lora") / "run"
    captured = []
    with pytest.MonkeyPatch.context() as mp:
        _spy_load_model(mp, captured)
        rc = _train_command(
            "sft",
            train_data=sft_folder,
            output_dir=out,
            max_steps=2,
            lora_rank=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            learning_rate=0.01,
        )
    assert rc == 0
    (model,) = captured
    model.eval()
    return out, model


def _dpo_start_config(sft_out, tmp_path, **kw) -> DPOConfig:
    return DPOConfig(
        model="tiny",
        adapter=str(sft_out / "adapter"),
        lora=str(sft_out / "lora"),
        output_dir=str(tmp_path / "dpo"),
        report_to="none",
        checkpointing_steps=0,
        **kw,
    )


def _tiny_inputs(seed=0):
    """One forward's arguments for the tiny FLUX (8×8 latent, 4 channels, one identity)."""
    from idglow.training.modeling import latent_image_ids

    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 16, 16, generator=g),
        torch.tensor([0.6]),
        torch.randn(1, 6, 32, generator=g),
        torch.randn(1, 32, generator=g),
        latent_image_ids(8, 8),
        torch.randn(1, 1, 128, generator=g),
        torch.ones(1, 1),
    )


def _tiny_pair():
    from idglow.training.data import PreferencePairDataset

    g = torch.Generator().manual_seed(1)
    pref = torch.zeros(9)
    pref[0] = 1.0
    return PreferencePairDataset(
        [
            {
                "latents_0": torch.randn(4, 8, 8, generator=g),
                "latents_1": torch.randn(4, 8, 8, generator=g),
                "prompt_embeds": torch.randn(6, 32, generator=g),
                "pooled_prompt_embeds": torch.randn(32, generator=g),
                "id_embeds": torch.randn(1, 128, generator=g),
                "face_boxes_0": [(0.25, 0.25, 0.75, 0.75)],
                "face_boxes_1": [(0.25, 0.25, 0.75, 0.75)],
                "task": "fusion",
                "preference": pref,
                "strength": torch.ones(9),
            }
        ]
    )


@torch.no_grad()
def test_dpo_start_model_is_the_fused_sft_model(sft_run, tmp_path):
    from safetensors.torch import load_file

    from idglow.adapter import IdGlowAdapter
    from idglow.commands.train import _load_model
    from idglow.testing import tiny_pipeline

    sft_out, sft_model = sft_run
    model, _, _ = _load_model(_dpo_start_config(sft_out, tmp_path))
    assert not model.has_lora  # fused and unloaded: the DPO stage starts from plain weights

    # (a) fused = base + (alpha / rank)·B·A on every LoRA target, untouched elsewhere
    lora = load_file(str(sft_out / "lora" / "pytorch_lora_weights.safetensors"))
    base = tiny_pipeline(seed=0).transformer.state_dict()
    fused = model.transformer.state_dict()
    assert fused.keys() == base.keys()
    targets = 0
    for name, weight in base.items():
        a_key = "transformer." + name.replace(".weight", ".lora_A.weight")
        if a_key in lora:
            targets += 1
            b = lora[a_key.replace("lora_A", "lora_B")]
            assert b.abs().sum() > 0, f"SFT did not train the LoRA of {name}"
            expected = weight + (LORA_ALPHA / LORA_RANK) * b @ lora[a_key]
        else:
            expected = weight
        torch.testing.assert_close(fused[name], expected, rtol=0, atol=1e-6, msg=name)
    assert targets == len([k for k in lora if "lora_A" in k]) > 0

    # (b) the adapter is the SFT adapter (which SFT did change)
    saved = IdGlowAdapter.from_pretrained(str(sft_out / "adapter")).state_dict()
    fresh = tiny_pipeline(seed=0).adapter.state_dict()
    for name, p in model.adapter.state_dict().items():
        assert torch.equal(p, saved[name]) and torch.equal(p, sft_model.adapter.state_dict()[name]), name
    assert any(not torch.equal(saved[n], fresh[n]) for n in saved)

    # the whole model computes what the SFT model computed at the end of training (LoRA unfused there)
    args = _tiny_inputs()
    torch.testing.assert_close(model(*args), sft_model(*args), rtol=0, atol=1e-5)


@torch.no_grad()
def test_dpo_reference_and_policy_start_at_the_sft_model(sft_run, tmp_path):
    from idglow.commands.train import _load_model
    from idglow.training.trainer import DPOTrainer

    sft_out, sft_model = sft_run
    config = _dpo_start_config(sft_out, tmp_path, lora_rank=2, max_steps=1)
    model, _, _ = _load_model(config)
    trainer = DPOTrainer(config, model, _tiny_pair())
    policy = trainer.unwrapped
    assert policy.has_lora and policy.ref_adapter is not None
    args = _tiny_inputs()
    expected = sft_model(*args)
    torch.testing.assert_close(policy(*args, reference=True), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(policy(*args), expected, rtol=0, atol=1e-5)  # new LoRA B = 0, same adapter

    # once the policy moves (its LoRA and its adapter), the reference still is the SFT model
    assert all(p.requires_grad for p in policy.adapter.parameters())
    lora = [p for n, p in policy.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora
    for p in [*lora, *policy.adapter.parameters()]:
        p.add_(0.05 * torch.randn_like(p))
    torch.testing.assert_close(policy(*args, reference=True), expected, rtol=0, atol=1e-5)
    assert (policy(*args) - expected).abs().max() > 1e-3


def _write_export(folder) -> None:
    """A one-row preference export (the columns `PreferenceExportDataset` reads): the astronaut at 64×64
    preferred (clear) over a noisy copy on overall, texture and identity_0; the reference is her face."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import skimage

    def png(image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    photo = Image.fromarray(skimage.data.astronaut())
    good = photo.resize((64, 64))
    noise = np.random.default_rng(0).integers(-60, 60, (64, 64, 3))
    bad = Image.fromarray(np.clip(np.asarray(good, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
    faces = json.dumps({"matches": {"bboxes": [[22.0, 5.0, 34.0, 21.0]]}})
    row = {
        "ranking_id": 1,
        "caption": "a portrait of an adult in a white suit",
        "task": "fusion",
        "num_subjects": 1,
        "split": "train",
        "target_ages": [None],
        "reference_images": [png(photo.crop((100, 0, 356, 256)))],
        "jpg_0": png(good),
        "jpg_1": png(bad),
        "faces_0": faces,
        "faces_1": faces,
        "label_0": 1.0,
        "has_label": True,
        "texture_label_0": 1.0,
        "artifacts_label_0": 0.5,
        "identity_labels_0": [1.0],
        "strength": 1.0,
        "agreement": 1.0,
    }
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([row]), str(folder / "part-0.parquet"))


def test_train_dpo_command_from_the_sft_output(sft_run, tmp_path, monkeypatch, capsys):
    sft_out, sft_model = sft_run
    export = tmp_path / "export"
    _write_export(export)
    out = tmp_path / "dpo"
    captured = []
    _spy_load_model(monkeypatch, captured)
    rc = _train_command(
        "dpo",
        train_data=export,
        output_dir=out,
        adapter=sft_out / "adapter",
        lora=sft_out / "lora",
        max_steps=1,
        lora_rank=2,
        learning_rate=0.01,
        beta=100,
        gamma=1,
    )
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "trained 1 steps" in printed.out
    # at step 0 policy == reference, so each labelled dimension gives −log σ(−γ·s) with s = 1 (clear)
    last = float(printed.out.split("last loss ")[1].split(")")[0])
    assert last == pytest.approx(math.log(1 + math.e), abs=1e-5)
    assert (out / "adapter" / "config.json").is_file() and (out / "lora").is_dir()

    (model,) = captured
    model.eval()
    sft_adapter = sft_model.adapter.state_dict()
    for name, p in model.ref_adapter.state_dict().items():  # the frozen reference is the SFT adapter
        assert torch.equal(p, sft_adapter[name]), name
    assert any(not torch.equal(p, sft_adapter[n]) for n, p in model.adapter.state_dict().items())
    args = _tiny_inputs()
    with torch.no_grad():
        expected, reference, policy = sft_model(*args), model(*args, reference=True), model(*args)
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)
    assert (policy - expected).abs().max() > 1e-4  # the policy trained


# --- mixed precision ------------------------------------------------------------------------------------


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide AcceleratorState whose mixed precision cannot change once set."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _dtype_recorder(model, seen: list):
    return model.transformer.register_forward_hook(
        lambda module, inputs, output: seen.append(output[0].dtype)
    )


def _train(trainer_cls, config, dataset):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    model = small_model()
    trainer = trainer_cls(config, model, dataset)
    before = snapshot(model)  # with the LoRA
    seen = []
    hook = _dtype_recorder(model, seen)
    out = trainer.train()
    hook.remove()
    return out, model, before, seen


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # bf16 rms_norm on CPU
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_bf16_keeps_trainables_float32_and_frozen_weights_bf16(stage, tmp_path):
    from idglow.training.data import SyntheticSFTDataset
    from idglow.training.trainer import DPOTrainer, SFTTrainer

    def config(precision):
        if stage == "sft":
            return sft_config(tmp_path / precision, max_steps=2, lora_rank=2, mixed_precision=precision)
        return DPOConfig(
            output_dir=str(tmp_path / precision),
            max_steps=2,
            train_batch_size=2,
            learning_rate=1e-2,
            report_to="none",
            checkpointing_steps=0,
            beta=50.0,
            gamma=1.0,
            lora_rank=2,
            mixed_precision=precision,
        )

    trainer_cls = SFTTrainer if stage == "sft" else DPOTrainer
    dataset = SyntheticSFTDataset(WORLD, 4, task="fusion") if stage == "sft" else toy_pairs(4)
    full, _, _, full_dtypes = _train(trainer_cls, config("no"), dataset)
    mixed, model, before, mixed_dtypes = _train(trainer_cls, config("bf16"), dataset)

    assert set(full_dtypes) == {torch.float32} and set(mixed_dtypes) == {torch.bfloat16}
    assert mixed.global_step == 2 and all(math.isfinite(r["loss"]) for r in mixed.log_history)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and any("lora_" in n for n in trainable)
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.dtype == torch.float32, f"{name} is {p.dtype}: trainable master weights must stay float32"
            assert not torch.equal(p, before[name]), f"{name} did not train under bf16"
        else:
            assert p.dtype == torch.bfloat16, f"frozen {name} is {p.dtype}: it should be in the compute dtype"
    step0_full, step0_mixed = full.log_history[0]["loss"], mixed.log_history[0]["loss"]
    if stage == "sft":  # same seed, same σ and noise: only the arithmetic differs
        assert step0_mixed != step0_full and step0_mixed == pytest.approx(step0_full, rel=1e-2)
    else:  # policy == reference at step 0 under the same autocast: Δ = 0 exactly, loss = −log σ(−γ·s)
        expected = math.log(1 + math.exp(0.5))  # s = 0.5 (slight), γ = 1
        assert step0_mixed == pytest.approx(expected, abs=1e-6)
        assert step0_full == pytest.approx(expected, abs=1e-6)


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_fp16_on_cpu_is_refused(tmp_path):
    from idglow.training.data import SyntheticSFTDataset
    from idglow.training.trainer import SFTTrainer

    if torch.cuda.is_available():
        pytest.skip("fp16 is refused only where accelerate would run on the CPU")
    with pytest.raises(ValueError, match="mixed_precision='fp16' needs a GPU"):
        SFTTrainer(sft_config(tmp_path, mixed_precision="fp16"), small_model(), SyntheticSFTDataset(WORLD, 2))
