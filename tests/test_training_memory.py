"""What the full-size training path relies on to run on one GPU: the attention kernels of a training step, frozen
modules in the compute dtype with float32 trainables, prompt embeddings computed once, optional latent cache,
and the one loader of "the tiny model or a folder"."""

import math

import pytest
import torch
from training_helpers import WORLD, sft_config, small_model, snapshot

from idglow.cli import main as cli_main
from idglow.training.data import SyntheticSFTDataset
from idglow.training.trainer import BaseTrainer, SFTTrainer


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide AcceleratorState whose mixed precision cannot change once set."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def _record_attention(monkeypatch) -> list[tuple[bool, bool]]:
    """(cuDNN allowed, flash allowed) at every scaled_dot_product_attention call."""
    seen = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("backend", ["no_cudnn", "auto"])
def test_training_step_runs_inside_the_configured_attention_kernels(backend, tmp_path, monkeypatch):
    counts = {}
    for checkpointing in (False, True):
        seen = _record_attention(monkeypatch)
        cfg = sft_config(tmp_path / str(checkpointing), max_steps=1, lora_rank=2, attention_backend=backend,
                         gradient_checkpointing=checkpointing)
        out = SFTTrainer(cfg, small_model(), SyntheticSFTDataset(WORLD, 2, task="fusion")).train()
        assert math.isfinite(out.log_history[-1]["loss"])
        assert seen, "the training step ran no attention"
        cudnn = {c for c, _ in seen}
        assert cudnn == ({False} if backend == "no_cudnn" else {True}), (backend, seen)
        assert all(flash for _, flash in seen)
        counts[checkpointing] = len(seen)
    # with checkpointing every block's attention runs again in backward: those calls are inside the selection too
    assert counts[True] == 2 * counts[False]
    assert torch.backends.cuda.cudnn_sdp_enabled()  # the selection ends with the step


def test_unknown_attention_backend_is_refused(tmp_path):
    with pytest.raises(ValueError, match="attention_backend='cudnn'; expected one of no_cudnn"):
        sft_config(tmp_path, attention_backend="cudnn")


# --- the train command on the tiny FLUX --------------------------------------------------------------------


def _spy_load_model(monkeypatch, captured: list):
    """Record what `idglow train` loads (model, vae, encode_prompt) and count VAE encodes."""
    import idglow.commands.train as train_command

    original = train_command._load_model

    def spy(config, face_analyzer=None):
        model, vae, encode_prompt = original(config, face_analyzer)
        encode = vae.encode
        calls = {"vae": 0}

        def counting(*args, **kwargs):
            calls["vae"] += 1
            return encode(*args, **kwargs)

        vae.encode = counting
        captured.append({"model": model, "vae": vae, "embedder": encode_prompt, "calls": calls})
        return model, vae, encode_prompt

    monkeypatch.setattr(train_command, "_load_model", spy)
    original_train = BaseTrainer.train

    def train(self):  # the parameters as training starts (LoRA added, dtypes set)
        captured[-1]["before"] = snapshot(self.unwrapped)
        return original_train(self)

    monkeypatch.setattr(BaseTrainer, "train", train)


def _train_sft(sft_folder, out, **options) -> int:
    options = {"model": "tiny", "resolution": 64, "report_to": "none", "checkpointing_steps": 0,
               "train_data": sft_folder, "output_dir": out, "learning_rate": 0.01, **options}
    argv = ["train", "sft"]
    for key, value in options.items():
        argv += ["--set", f"{key}={value}"]
    return cli_main(argv)


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # bf16 rms_norm on CPU
def test_bf16_training_keeps_frozen_modules_bf16_and_embeds_each_prompt_once(sft_folder, tmp_path, monkeypatch,
                                                                            capsys):
    from idglow.training.caching import dataset_prompts
    from idglow.training.files import SFTFolderDataset

    prompts = dataset_prompts(SFTFolderDataset(sft_folder, resolution=64))
    steps = 2 * len(prompts)  # every prompt comes back at least once
    captured = []
    _spy_load_model(monkeypatch, captured)
    assert _train_sft(sft_folder, tmp_path / "run", mixed_precision="bf16", lora_rank=2, max_steps=steps) == 0
    assert f"trained {steps} steps" in capsys.readouterr().out
    (run,) = captured
    model, embedder = run["model"], run["embedder"]
    pipe = embedder.pipe
    for module in (pipe.text_encoder, pipe.text_encoder_2, run["vae"]):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(n.startswith("adapter.") for n in trainable)
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.dtype == torch.float32, f"trainable {name} is {p.dtype}"
            assert not torch.equal(p, run["before"][name]), f"{name} did not train"
        else:
            assert p.dtype == torch.bfloat16, f"frozen {name} is {p.dtype}"
    distinct = len(set(prompts))
    assert len(embedder) == distinct and embedder.encoder_calls == math.ceil(distinct / 8)
    assert run["calls"]["vae"] == steps  # no latent cache: one encode per step


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_latent_cache_encodes_each_image_once_and_without_cache_every_batch_is_embedded(sft_folder, tmp_path,
                                                                                        monkeypatch):
    from idglow.training.files import SFTFolderDataset

    n = len(SFTFolderDataset(sft_folder, resolution=64))
    steps = 2 * n
    captured = []
    _spy_load_model(monkeypatch, captured)
    assert _train_sft(sft_folder, tmp_path / "run", max_steps=steps, cache_latents=True,
                      cache_prompt_embeds=False) == 0
    (run,) = captured
    assert run["calls"]["vae"] == n  # every image once, before the first step
    assert run["embedder"].encoder_calls == steps and len(run["embedder"]) == 0
    assert all(p.device.type == "cpu" for p in run["vae"].parameters())


def test_prompt_embedder_matches_the_pipeline_and_encodes_a_prompt_once():
    from idglow.tiny import tiny_pipeline
    from idglow.training.caching import PromptEmbedder

    pipe = tiny_pipeline(seed=0)
    calls = []
    pipe.text_encoder_2.register_forward_hook(lambda *_: calls.append(1))
    embedder = PromptEmbedder(pipe, "cpu", max_sequence_length=32)
    embeds, pooled, txt_ids = embedder(["a photo of a family", "two friends in a park"])
    assert len(calls) == 1
    again, pooled_again, _ = embedder(["two friends in a park", "a photo of a family", "two friends in a park"])
    assert len(calls) == 1 and embedder.encoder_calls == 1
    expected = pipe.encode_prompt(prompt=["two friends in a park"], prompt_2=None, device="cpu",
                                  max_sequence_length=32)
    torch.testing.assert_close(again[0], expected[0][0])
    torch.testing.assert_close(again[2], again[0])
    torch.testing.assert_close(pooled_again[1], pooled[0])
    torch.testing.assert_close(txt_ids, expected[2])
    embedder(["a new prompt"])
    assert embedder.encoder_calls == 2 and len(embedder) == 3


# --- loading -------------------------------------------------------------------------------------------------


def test_one_loader_gives_frozen_parts_in_dtype_and_the_adapter_in_its_own(tmp_path):
    from idglow.loading import load_flux_pipeline
    from idglow.tiny import tiny_pipeline

    folder = tmp_path / "flux"
    tiny_pipeline(seed=3).save_pretrained(str(folder))
    for model in ("tiny", str(folder)):
        pipe = load_flux_pipeline(model, dtype=torch.bfloat16, adapter_dtype=torch.float32, seed=3)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
            assert {p.dtype for p in getattr(pipe, name).parameters()} == {torch.bfloat16}, (model, name)
        assert {p.dtype for p in pipe.adapter.parameters()} == {torch.float32}, model
    tiny, saved = (load_flux_pipeline(m, dtype=torch.float32, seed=3) for m in ("tiny", str(folder)))
    for name, p in tiny.transformer.state_dict().items():  # the folder holds the same tiny model
        torch.testing.assert_close(saved.transformer.state_dict()[name], p, msg=name)
