"""The identity residual as the trainers and the pipeline use it: gating, masking, continuity, fp32 σ."""

from __future__ import annotations

import pytest
import torch

from idglow.adapter import IdGlowAdapter
from idglow.schedule import IdentityWindow
from idglow.testing import random_embeddings, tiny_adapter, tiny_components
from idglow.training.modeling import IdGlowDenoiser, latent_image_ids


def _randomize_biases(adapter: IdGlowAdapter) -> None:
    """Trained adapters have non-zero output biases; make sure the tests see them."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in adapter.layers.values():
            layer.to_out.bias.copy_(torch.randn(layer.to_out.bias.shape, generator=g) * 0.5)


@pytest.fixture(scope="module")
def denoiser() -> IdGlowDenoiser:
    transformer = tiny_components(seed=0)["transformer"].eval()
    adapter = tiny_adapter(transformer, seed=0).eval()
    _randomize_biases(adapter)
    return IdGlowDenoiser(transformer, adapter, guidance_scale=3.5).eval()


def _inputs(batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, 16, 16, generator=g),
        sigmas=torch.full((batch,), 0.5),
        encoder_hidden_states=torch.randn(batch, 8, 32, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        img_ids=latent_image_ids(8, 8),
    )


def _predict(model: IdGlowDenoiser, inputs: dict, embeds=None, scales=None) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, id_embeds=embeds, id_scales=scales)


def test_gated_off_sample_equals_base_beside_a_gated_on_batch_mate(denoiser):
    """The trainer folds each sample's gate into its scales; gate 0 must remove the whole residual, bias too."""
    inputs = _inputs(2)
    base = _predict(denoiser, inputs)
    embeds = random_embeddings(3, seed=1).expand(2, -1, -1)
    scales = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mixed = _predict(denoiser, inputs, embeds, scales)
    assert torch.equal(mixed[0], base[0])
    assert (mixed[1] - base[1]).abs().max() > 1e-3  # the batch-mate does get identity


def test_identity_fades_continuously_to_zero(denoiser):
    inputs = _inputs(1)
    base = _predict(denoiser, inputs)
    embeds = random_embeddings(2, seed=2).unsqueeze(0)
    full = _predict(denoiser, inputs, embeds, torch.ones(1, 2))
    tiny = _predict(denoiser, inputs, embeds, torch.full((1, 2), 1e-6))
    effect = (full - base).abs().max()
    assert effect > 1e-2
    assert (tiny - base).abs().max() < 1e-4 * effect
    # a ramp gate g folded into the scales scales the residual's effect smoothly: half gate, roughly half effect
    half = _predict(denoiser, inputs, embeds, torch.full((1, 2), 0.5))
    assert 0.2 * effect < (half - base).abs().max() < 0.8 * effect


def test_padded_slot_changes_nothing(denoiser):
    inputs = _inputs(1)
    two = random_embeddings(2, seed=3).unsqueeze(0)
    padded = torch.cat([two, random_embeddings(1, seed=4).unsqueeze(0)], dim=1)
    unpadded = _predict(denoiser, inputs, two, torch.ones(1, 2))
    with_padding = _predict(denoiser, inputs, padded, torch.tensor([[1.0, 1.0, 0.0]]))
    assert (with_padding - unpadded).abs().max() <= 1e-5


def test_person_at_scale_zero_does_not_dilute_the_others(denoiser):
    inputs = _inputs(1)
    pair = random_embeddings(2, seed=5).unsqueeze(0)
    alone = _predict(denoiser, inputs, pair[:, :1], torch.ones(1, 1))
    second_off = _predict(denoiser, inputs, pair, torch.tensor([[1.0, 0.0]]))
    both = _predict(denoiser, inputs, pair, torch.ones(1, 2))
    assert (second_off - alone).abs().max() <= 1e-5
    assert (both - alone).abs().max() > 1e-3


def test_per_sample_masks_in_one_batch_match_separate_calls(denoiser):
    """Identity dropout in a batch: each sample's result is what it would be alone."""
    inputs = _inputs(2, seed=1)
    embeds = random_embeddings(3, seed=6).expand(2, -1, -1).clone()
    scales = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.5]])
    batch = _predict(denoiser, inputs, embeds, scales)
    for i in range(2):
        one = {k: (v[i:i + 1] if k != "img_ids" else v) for k, v in inputs.items()}
        alone = _predict(denoiser, one, embeds[i:i + 1], scales[i:i + 1])
        assert (batch[i] - alone[0]).abs().max() <= 1e-5


def test_negative_scales_are_refused(denoiser):
    with pytest.raises(ValueError, match="scales must be finite and >= 0"):
        _predict(denoiser, _inputs(1), random_embeddings(1).unsqueeze(0), torch.tensor([[-1.0]]))


def _transformer_call(model: IdGlowDenoiser, timestep: torch.Tensor, dtype: torch.dtype) -> None:
    inputs = _inputs(1)
    model.transformer(
        hidden_states=inputs["hidden_states"].to(dtype), timestep=timestep,
        guidance=torch.full((1,), 3.5, dtype=dtype), pooled_projections=inputs["pooled_projections"].to(dtype),
        encoder_hidden_states=inputs["encoder_hidden_states"].to(dtype),
        txt_ids=torch.zeros(8, 3), img_ids=inputs["img_ids"], return_dict=False,
    )


def test_gate_reads_the_float32_schedule_not_the_rounded_timestep(denoiser):
    """σ = 0.6 is the age window's edge; in bfloat16 it becomes 0.6015625, outside the window."""
    sigma = torch.tensor(0.6, dtype=torch.float32)
    rounded = sigma.to(torch.bfloat16)
    assert float(rounded) > 0.6
    window = IdentityWindow(0.3, 0.6)
    embeds = random_embeddings(2, seed=8)
    adapter = denoiser.adapter
    with torch.no_grad():
        with adapter.inject(embeds, 1.0, window) as from_timestep:
            _transformer_call(denoiser, rounded.reshape(1), torch.float32)
        with adapter.inject(embeds, 1.0, window, sigma_source=lambda: sigma) as from_schedule:
            _transformer_call(denoiser, rounded.reshape(1), torch.float32)
    assert from_timestep.active_sigmas == [] and from_timestep.attention_calls == 0
    assert from_schedule.active_sigmas == [pytest.approx(0.6)]
    assert from_schedule.attention_calls == len(adapter.layers)


def test_per_slot_windows_gate_each_person(denoiser):
    embeds = random_embeddings(2, seed=9)
    windows = [IdentityWindow(0.3, 0.6), IdentityWindow(0.0, 1.0)]
    with torch.no_grad(), denoiser.adapter.inject(embeds, 1.0, windows) as state:
        _transformer_call(denoiser, torch.tensor([0.9]), torch.float32)
        outside = state.token_scale.clone()
        _transformer_call(denoiser, torch.tensor([0.45]), torch.float32)
        inside = state.token_scale.clone()
    k = denoiser.adapter.config.num_tokens
    assert outside.tolist() == [[0.0] * k + [1.0] * k]
    assert inside.tolist() == [[1.0] * (2 * k)]
    assert state.active_sigmas == [pytest.approx(0.9), pytest.approx(0.45)]


def test_timestep_given_by_position_is_read_from_the_signature(denoiser):
    inputs = _inputs(1)
    embeds = random_embeddings(1, seed=10)
    args = (inputs["hidden_states"], inputs["encoder_hidden_states"], inputs["pooled_projections"],
            torch.tensor([0.45]), inputs["img_ids"], torch.zeros(8, 3), torch.full((1,), 3.5))
    with torch.no_grad():
        with denoiser.adapter.inject(embeds, 1.0, IdentityWindow(0.3, 0.6)) as state:
            positional = denoiser.transformer(*args, return_dict=False)[0]
        keyword = denoiser(**{**inputs, "sigmas": torch.tensor([0.45])}, id_embeds=embeds.unsqueeze(0),
                           id_scales=torch.ones(1, 1))
    assert state.active_sigmas == [pytest.approx(0.45)]
    assert (positional - keyword).abs().max() <= 1e-5


def test_attaching_after_a_cache_warns(caplog):
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    transformer = tiny_components(seed=1)["transformer"]
    apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=0.1))
    with caplog.at_level("WARNING", logger="idglow.adapter"):
        tiny_adapter(transformer).attach(transformer)
    assert "attach IdGlow before enabling caches" in caplog.text


def test_injection_flag_follows_every_inject_scope(denoiser):
    import idglow.adapter as adapter_module

    embeds = random_embeddings(1, seed=11)
    assert not adapter_module._ANY_INJECTING
    with pytest.raises(RuntimeError, match="boom"):
        with denoiser.adapter.inject(embeds):
            assert adapter_module._ANY_INJECTING
            with denoiser.adapter.inject(embeds):
                pass
            assert adapter_module._ANY_INJECTING  # the outer call is still injecting
            raise RuntimeError("boom")
    assert not adapter_module._ANY_INJECTING
    inputs = _inputs(1)
    base = _predict(denoiser, inputs)
    with torch.no_grad():  # a transformer call outside any inject() is the base model
        assert torch.equal(denoiser.transformer(
            hidden_states=inputs["hidden_states"], timestep=inputs["sigmas"], guidance=torch.full((1,), 3.5),
            pooled_projections=inputs["pooled_projections"], encoder_hidden_states=inputs["encoder_hidden_states"],
            txt_ids=torch.zeros(8, 3), img_ids=inputs["img_ids"], return_dict=False)[0], base)
