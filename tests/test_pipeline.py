"""Behaviour of the IdGlow adapter inside the FLUX pipeline, on the tiny offline model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from idglow.adapter import IdGlowAdapter
from idglow.pipeline import IdGlowPipeline
from idglow.schedule import IdentityWindow
from idglow.testing import random_embeddings, tiny_pipeline

PROMPT = "a family photo of three people in a park"
SIZE = dict(height=64, width=64)


def run(pipe, steps=6, seed=3, **kwargs):
    out = pipe(PROMPT, seed=seed, num_inference_steps=steps, output_type="np", **SIZE, **kwargs)
    return out, np.asarray(out.images)


def flux_reference(pipe, steps=6, seed=3, num_images=1):
    """The same components through diffusers' own FluxPipeline (no hooks active: no injection state)."""
    flux = FluxPipeline(
        scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2, transformer=pipe.transformer,
    )
    flux.set_progress_bar_config(disable=True)
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_images)]
    return flux(PROMPT, generator=gens, num_inference_steps=steps, output_type="np", num_images_per_prompt=num_images,
                max_sequence_length=pipe.tokenizer_2.model_max_length, **SIZE).images


class CountCalls:
    """Counts forward calls of every identity cross-attention module."""

    def __init__(self, adapter: IdGlowAdapter):
        self.count = 0
        self.handles = [m.register_forward_hook(self._hook) for m in adapter.layers.values()]

    def _hook(self, *_):
        self.count += 1

    def close(self):
        for h in self.handles:
            h.remove()


def test_scale_zero_and_no_subjects_equal_plain_flux(tiny_pipe):
    reference = flux_reference(tiny_pipe, num_images=2)
    emb = random_embeddings(3)
    _, zero_scale = run(tiny_pipe, subject_embeds=emb, id_scale=0.0, num_images=2)
    _, per_slot_zero = run(tiny_pipe, subject_embeds=emb, id_scale=[0.0, 0.0, 0.0], num_images=2)
    _, no_subjects = run(tiny_pipe, num_images=2)
    for images in (zero_scale, per_slot_zero, no_subjects):
        assert np.abs(images - reference).max() <= 1e-6
    _, injected = run(tiny_pipe, subject_embeds=emb, num_images=2)
    assert np.abs(injected - reference).max() > 1e-3


def test_window_outside_all_sigmas_gives_base_image_and_skips_attention(tiny_pipe):
    _, base = run(tiny_pipe)
    counter = CountCalls(tiny_pipe.adapter)
    try:
        # 6 steps: the shifted σ values never fall inside a window this narrow between two of them
        sigmas = _shifted_sigmas(tiny_pipe, 6)
        gap_lo = (sigmas[2] + sigmas[3]) / 2
        out, images = run(tiny_pipe, subject_embeds=random_embeddings(2), id_window=(gap_lo, gap_lo + 1e-4))
    finally:
        counter.close()
    assert counter.count == 0
    assert out.active_sigmas == []
    assert np.abs(images - base).max() == 0.0


def _shifted_sigmas(pipe, steps):
    """σ values the pipeline will use: run it once and read the scheduler (after FLUX's resolution shift)."""
    run(pipe, steps=steps)
    return [float(s) for s in pipe.scheduler.sigmas[:-1]]


def test_window_runs_identity_attention_on_exactly_its_steps(tiny_pipe):
    steps = 8
    sigmas = _shifted_sigmas(tiny_pipe, steps)
    window = IdentityWindow(0.3, 0.6)
    expected = [s for s in sigmas if 0.3 <= s <= 0.6]
    assert 0 < len(expected) < steps
    counter = CountCalls(tiny_pipe.adapter)
    try:
        out, images = run(tiny_pipe, steps=steps, subject_embeds=random_embeddings(2), id_window=window)
    finally:
        counter.close()
    assert out.active_sigmas == pytest.approx(expected)
    assert counter.count == len(expected) * len(tiny_pipe.adapter.layers)
    _, base = run(tiny_pipe, steps=steps)
    assert np.abs(images - base).max() > 1e-4


def test_age_preset_uses_shifted_sigmas(tiny_pipe):
    steps = 8
    shifted = _shifted_sigmas(tiny_pipe, steps)
    unshifted = list(np.linspace(1.0, 1 / steps, steps))
    expected = [s for s in shifted if 0.3 <= s <= 0.6]
    naive = [s for s in unshifted if 0.3 <= s <= 0.6]
    assert expected != pytest.approx(naive)  # the shift matters at this size
    out, _ = run(tiny_pipe, steps=steps, subject_embeds=random_embeddings(2), task="age")
    assert out.active_sigmas == pytest.approx(expected)
    assert out.params["id_window"] == [0.3, 0.6, 0.0]


def test_slot_order_and_identity_change_the_image(tiny_pipe):
    a, b, c = random_embeddings(3, seed=11)
    _, ab = run(tiny_pipe, subject_embeds=torch.stack([a, b]))
    _, ba = run(tiny_pipe, subject_embeds=torch.stack([b, a]))
    _, ac = run(tiny_pipe, subject_embeds=torch.stack([a, c]))
    assert np.abs(ab - ba).max() > 1e-4
    assert np.abs(ab - ac).max() > 1e-4


def test_per_slot_scale_and_weight_act_on_one_person(tiny_pipe):
    emb = random_embeddings(2, seed=5)
    _, both = run(tiny_pipe, subject_embeds=emb)
    _, only_first = run(tiny_pipe, subject_embeds=emb, id_scale=[1.0, 0.0])
    _, first_alone = run(tiny_pipe, subject_embeds=emb[:1])
    assert np.abs(both - only_first).max() > 1e-4
    # slot 2 at scale 0 is masked out of the identity attention: it takes nothing from slot 1
    assert np.abs(only_first - first_alone).max() <= 1e-5


def test_seeds_are_consecutive_and_reproducible(tiny_pipe):
    out, images = run(tiny_pipe, subject_embeds=random_embeddings(2), num_images=2, seed=40)
    assert out.seeds == [40, 41]
    _, second_alone = run(tiny_pipe, subject_embeds=random_embeddings(2), num_images=1, seed=41)
    assert np.abs(images[1] - second_alone[0]).max() <= 1e-5
    assert out.params["seed"] == 40 and out.params["num_subjects"] == 2


def test_callback_sees_every_step(tiny_pipe):
    seen = []

    def on_step(pipe, i, t, kwargs):
        seen.append(i)
        return kwargs

    run(tiny_pipe, steps=5, subject_embeds=random_embeddings(1), callback_on_step_end=on_step)
    assert seen == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(task="swap"), "unknown task 'swap'"),
        (dict(subject_embeds=random_embeddings(7)), "7 people"),
        (dict(subject_embeds=random_embeddings(2), id_scale=[1.0]), "1 per-person values for 2 subjects"),
        (dict(subject_embeds=random_embeddings(2), id_window=(0.7, 0.2)), "sigma_lo=0.7"),
        (dict(subject_embeds=random_embeddings(2, dim=64)), "id_dim=128"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(tiny_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(tiny_pipe, **kwargs)


def test_adapter_and_pipeline_save_load_round_trip(tmp_path):
    pipe = tiny_pipeline(seed=1)
    emb = random_embeddings(2, seed=2)
    _, before = run(pipe, subject_embeds=emb)

    pipe.adapter.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = IdGlowAdapter.from_pretrained(tmp_path / "adapter")
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(pipe.adapter.config)
    for (name, p), (_, q) in zip(pipe.adapter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name

    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = IdGlowPipeline.from_pretrained(tmp_path / "pipe")
    reloaded.set_progress_bar_config(disable=True)
    _, after = run(reloaded, subject_embeds=emb)
    assert np.abs(before - after).max() <= 1e-6

    # base FLUX folder + separate adapter folder, as a GPU user lays them out
    with_adapter = IdGlowPipeline.from_pretrained(tmp_path / "pipe", adapter=tmp_path / "adapter")
    with_adapter.set_progress_bar_config(disable=True)
    _, again = run(with_adapter, subject_embeds=emb)
    assert np.abs(before - again).max() <= 1e-6


def test_first_block_cache_hook_composes_with_identity_hooks():
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = tiny_pipeline(seed=2)
    emb = random_embeddings(2, seed=3)
    _, plain = run(pipe, steps=8, subject_embeds=emb)
    _, base = run(pipe, steps=8)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=1e9))  # reuse after the first step
    counter = CountCalls(pipe.adapter)
    try:
        out, cached = run(pipe, steps=8, subject_embeds=emb)
    finally:
        counter.close()
    # the head block's identity residual is added at the next block's input, so the cache decides from the base
    # model's first block and every identity module runs only on the computed step
    n_layers = len(pipe.adapter.layers)
    assert counter.count == n_layers
    assert np.isfinite(cached).all()
    assert np.abs(cached - base).max() > 1e-4  # identity still reaches the image through the cache
    assert np.abs(cached - plain).max() > 0  # and the cache did skip work


def test_missing_model_folder_is_reported(tmp_path):
    from idglow.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="model_index.json"):
        IdGlowPipeline.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ModelFolderError, match="config.json"):
        (tmp_path / "flux").mkdir()
        pipe = tiny_pipeline()
        pipe.save_pretrained(tmp_path / "flux")
        IdGlowPipeline.from_pretrained(tmp_path / "flux", adapter=tmp_path / "no_adapter")


@pytest.mark.gpu
def test_model_cpu_offload_runs_on_gpu():
    pipe = tiny_pipeline(seed=0)
    pipe.enable_model_cpu_offload()
    out = pipe(PROMPT, subject_embeds=random_embeddings(2), seed=0, num_inference_steps=4, **SIZE)
    assert len(out.images) == 1 and out.active_sigmas


def test_per_call_adapter_serves_another_version_without_changing_the_pipeline(tiny_pipe):
    from idglow.testing import tiny_adapter

    emb = random_embeddings(2, seed=9)
    other = tiny_adapter(tiny_pipe.transformer, seed=123).eval()
    _, default_before = run(tiny_pipe, subject_embeds=emb)
    _, with_other = run(tiny_pipe, subject_embeds=emb, adapter=other)
    _, default_after = run(tiny_pipe, subject_embeds=emb)
    assert np.abs(with_other - default_before).max() > 1e-4
    assert np.abs(default_after - default_before).max() == 0.0
    assert tiny_pipe.adapter is not other


def test_generator_argument_like_flux_pipeline(tiny_pipe):
    emb = random_embeddings(2, seed=4)
    by_seed, seeded = run(tiny_pipe, subject_embeds=emb, num_images=2, seed=10)
    gens = [torch.Generator("cpu").manual_seed(s) for s in (10, 11)]
    out = tiny_pipe(PROMPT, subject_embeds=emb, num_images=2, generator=gens, num_inference_steps=6,
                    output_type="np", **SIZE)
    assert np.abs(np.asarray(out.images) - seeded).max() == 0.0
    assert out.seeds == [10, 11] and out.params["seed_source"] == "generator"
    one = tiny_pipe(PROMPT, subject_embeds=emb, generator=torch.Generator("cpu").manual_seed(10),
                    num_inference_steps=6, output_type="np", **SIZE)
    assert np.abs(np.asarray(one.images)[0] - seeded[0]).max() <= 1e-5  # batch of 1 vs 2: round-off only
    assert one.seeds == [10] and one.params["seed"] == 10
    shared = tiny_pipe(PROMPT, subject_embeds=emb, num_images=2, generator=torch.Generator("cpu").manual_seed(3),
                       num_inference_steps=2, output_type="np", **SIZE)
    assert shared.params["seed_source"] == "shared generator" and shared.seeds == [3, 3]
    with pytest.raises(ValueError, match="either `seed` or `generator`"):
        run(tiny_pipe, subject_embeds=emb, generator=gens[0])
    with pytest.raises(ValueError, match="3 generators for num_images=2"):
        tiny_pipe(PROMPT, num_images=2, generator=gens + gens[:1], num_inference_steps=2, **SIZE)


def test_age_task_keeps_identity_on_for_people_without_a_target_age(tiny_pipe):
    steps = 8
    sigmas = _shifted_sigmas(tiny_pipe, steps)
    emb = random_embeddings(2, seed=12)
    mixed, mixed_images = run(tiny_pipe, steps=steps, subject_embeds=emb, task="age", target_ages=[6.0, None])
    both, both_images = run(tiny_pipe, steps=steps, subject_embeds=emb, task="age", target_ages=[6.0, 70.0])
    assert both.active_sigmas == pytest.approx([s for s in sigmas if 0.3 <= s <= 0.6])
    assert mixed.active_sigmas == pytest.approx(sigmas)  # the second person's identity is on at every step
    assert [mixed.params["slot_windows"][0][k] for k in ("sigma_lo", "sigma_hi")] == [0.3, 0.6]
    assert [mixed.params["slot_windows"][1][k] for k in ("sigma_lo", "sigma_hi")] == [0.0, 1.0]
    assert mixed.params["target_ages"] == [6.0, None]
    assert np.abs(mixed_images - both_images).max() > 1e-4
    with pytest.raises(ValueError, match="target age for at least one person"):
        run(tiny_pipe, subject_embeds=emb, task="age", target_ages=[None, None])


def test_linear_profile_decays_identity_inside_the_window(tiny_pipe):
    emb = random_embeddings(2, seed=13)
    flat, flat_images = run(tiny_pipe, subject_embeds=emb)
    linear, linear_images = run(tiny_pipe, subject_embeds=emb, id_profile="linear")
    _, base = run(tiny_pipe)
    assert linear.params["id_profile"] == "linear"
    assert all(w["profile"] == "linear" for w in linear.params["slot_windows"])
    # σ = 1 (the first step) gets strength 0, so fewer σ are active; the image lies between base and flat
    assert len(linear.active_sigmas) == len(flat.active_sigmas) - 1
    assert 0 < np.abs(linear_images - base).max() and np.abs(linear_images - flat_images).max() > 1e-4
    with pytest.raises(ValueError, match="profile 'cosine'"):
        run(tiny_pipe, subject_embeds=emb, id_profile="cosine")


def test_bfloat16_pipeline_gates_from_the_float32_schedule():
    """A window edge exactly at a scheduler σ that bfloat16 rounds upwards: that step must be injected."""
    pipe = tiny_pipeline(seed=0).to(dtype=torch.bfloat16)
    steps = 8
    sigmas = _shifted_sigmas(pipe, steps)
    edge = next(s for s in sigmas if float(torch.tensor(s).to(torch.bfloat16)) > s + 1e-4)
    out, _ = run(pipe, steps=steps, subject_embeds=random_embeddings(2), id_window=(0.0, edge))
    assert out.active_sigmas == pytest.approx([s for s in sigmas if s <= edge + 1e-6])
    assert any(s == pytest.approx(edge) for s in out.active_sigmas)


def test_first_block_cache_computes_as_many_steps_with_identity_as_without():
    """FirstBlockCache decides from the first block's change between steps; the identity residual must not hide
    that change (it made the cache reuse nearly every step), nor should caching drift further from the uncached
    image than it does for the base model."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = tiny_pipeline(seed=0)
    emb = random_embeddings(3, seed=1)
    variants = {"base": {}, "always_on": dict(subject_embeds=emb), "age": dict(subject_embeds=emb, task="age")}
    uncached = {name: run(pipe, steps=20, **kw)[1] for name, kw in variants.items()}
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))
    computed = []  # the last block's output projection runs only on computed steps
    pipe.transformer.single_transformer_blocks[-1].proj_out.register_forward_hook(lambda *_: computed.append(1))
    steps, deviation = {}, {}
    for name, kw in variants.items():
        computed.clear()
        _, cached = run(pipe, steps=20, **kw)
        steps[name] = len(computed)
        deviation[name] = float(np.abs(cached - uncached[name]).mean())
    assert 0 < steps["base"] < 20  # the threshold does skip some steps
    for name in ("always_on", "age"):
        assert steps[name] >= steps["base"] - 1, steps
        assert deviation[name] <= 2 * deviation["base"] + 1e-4, deviation
    assert np.abs(uncached["always_on"] - uncached["base"]).mean() > 10 * deviation["always_on"]


def test_prompts_encoded_from_several_threads_get_their_own_embeddings(tiny_pipe):
    """Pipelines sharing one set of components (as the app's concurrent generations do) encode prompts from
    several threads while another thread counts prompt tokens with the same tokenizers (as the app's prompt
    writer does): each call gets the embeddings it gets alone. Fast tokenizers change their padding and
    truncation settings within every call."""
    from idglow.prompting import TokenCounter

    prompts = [PROMPT, "two friends", "a grandmother, her son and three grandchildren on a sunny beach at noon"]
    alone = [tiny_pipe.encode_prompt(p, prompt_2=None) for p in prompts]
    pipes = [IdGlowPipeline(**tiny_pipe.components) for _ in prompts]
    counters = [TokenCounter(tiny_pipe.tokenizer), TokenCounter(tiny_pipe.tokenizer_2)]
    counts = [counter(prompts[2]) for counter in counters]
    start = threading.Barrier(len(prompts) + 1)
    wrong: list[tuple[int, int]] = []

    def encode(i: int) -> None:
        start.wait()
        for call in range(100):
            embeds, pooled, _ = pipes[i].encode_prompt(prompts[i], prompt_2=None)
            if not (torch.equal(embeds, alone[i][0]) and torch.equal(pooled, alone[i][1])):
                wrong.append((i, call))

    def count() -> None:
        start.wait()
        while any(t.is_alive() for t in encoders):
            if [counter(prompts[2]) for counter in counters] != counts:
                wrong.append((-1, 0))

    encoders = [threading.Thread(target=encode, args=(i,)) for i in range(len(prompts))]
    threads = [*encoders, threading.Thread(target=count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_window_coordinate_selects_other_steps_and_is_recorded(tiny_pipe):
    """The window [0.3, 0.6] read as σ (the default), as t = 1 − σ and as the fraction of steps done gates
    three different sets of steps of the tiny model's shifted schedule; each call records its coordinate."""
    steps = 10
    sigmas = _shifted_sigmas(tiny_pipe, steps)
    emb = random_embeddings(2, seed=14)
    args = dict(steps=steps, subject_embeds=emb, task="age", target_ages=[6.0, 70.0])
    default, default_images = run(tiny_pipe, **args)
    out = {c: run(tiny_pipe, window_coordinate=c, **args) for c in ("sigma", "one_minus_sigma", "step_fraction")}
    expected = {
        "sigma": [s for s in sigmas if 0.3 <= s <= 0.6],
        "one_minus_sigma": [s for s in sigmas if 0.3 <= 1 - s <= 0.6],
        "step_fraction": [s for i, s in enumerate(sigmas) if 0.3 <= i / steps <= 0.6],
    }
    for coordinate, (result, _) in out.items():
        assert result.active_sigmas == pytest.approx(expected[coordinate]), coordinate
        assert result.params["window_coordinate"] == coordinate
        assert [w["sigma_lo"] for w in result.params["slot_windows"]] == [0.3, 0.3]  # as given
    assert len({tuple(v) for v in expected.values()}) == 3  # the three really differ here
    assert default.params["window_coordinate"] == "sigma" and default.active_sigmas == out["sigma"][0].active_sigmas
    assert np.abs(default_images - out["sigma"][1]).max() == 0.0
    assert np.abs(out["step_fraction"][1] - default_images).max() > 1e-4
    assert out["one_minus_sigma"][0].params["sigma_windows"][0]["sigma_lo"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="window_coordinate='steps'"):
        run(tiny_pipe, window_coordinate="steps", **args)
