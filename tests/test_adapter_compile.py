"""torch.compile of the transformer's repeated blocks with identity injected: no graph breaks, a bounded number
of compiles that does not grow with depth or with the σ window switching, and the eager model's outputs."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from idglow.adapter import IdGlowAdapter
from idglow.pipeline import IdGlowPipeline
from idglow.testing import random_embeddings, tiny_components, tiny_pipeline

torch_dynamo = pytest.importorskip("torch._dynamo")


def run(pipe, steps=8, size=64, **kwargs) -> np.ndarray:
    out = pipe("a group photo", seed=0, num_inference_steps=steps, height=size, width=size, output_type="np",
               **kwargs)
    return np.asarray(out.images)


class DynamoCounts:
    """Graph breaks and frame compiles (first compiles and recompiles) counted by TorchDynamo since start."""

    def __init__(self):
        from torch._dynamo.utils import counters

        torch_dynamo.reset()
        counters.clear()
        self.counters = counters

    @property
    def graph_breaks(self) -> int:
        return int(sum(self.counters["graph_break"].values()))

    @property
    def compiles(self) -> int:
        return int(self.counters["frames"]["total"])

    @property
    def compiled_ok(self) -> int:
        """Compiles that produced a graph (a frame that hit the recompile limit runs uncompiled: not ok)."""
        return int(self.counters["frames"]["ok"])


@pytest.fixture
def dynamo():
    counts = DynamoCounts()
    yield counts
    torch_dynamo.reset()


def test_compiled_blocks_inject_identity_without_graph_breaks_or_recompiles(dynamo):
    pipe = tiny_pipeline(seed=0)
    emb = random_embeddings(3, seed=1)
    variants = {"base": {}, "age": dict(subject_embeds=emb, task="age"), "always_on": dict(subject_embeds=emb)}
    eager = {name: run(pipe, **kw) for name, kw in variants.items()}
    age_steps = pipe(subject_embeds=emb, task="age", num_inference_steps=8, height=64, width=64, seed=0,
                     output_type="latent").active_sigmas
    assert 0 < len(age_steps) < 8  # the age window switches identity on and off inside one call

    pipe.transformer.compile_repeated_blocks(backend="eager")
    compiled = {"base": run(pipe, **variants["base"])}
    base_compiles = dynamo.compiles
    compiled["age"] = run(pipe, **variants["age"])
    first_identity_compiles = dynamo.compiles
    compiled["always_on"] = run(pipe, **variants["always_on"])
    for name in ("age", "base", "age"):  # gate switching and repeated calls: every graph is already there
        np.testing.assert_allclose(run(pipe, **variants[name]), eager[name], atol=1e-5)
    run(pipe, subject_embeds=random_embeddings(2, seed=4))  # another number of people: the same graphs

    assert dynamo.graph_breaks == 0, dict(dynamo.counters["graph_break"])
    assert dynamo.compiles == dynamo.compiled_ok  # no frame fell back to eager on the recompile limit
    assert 0 < first_identity_compiles - base_compiles <= 4  # one graph per block kind with identity
    assert dynamo.compiles == first_identity_compiles
    for name, image in compiled.items():
        np.testing.assert_allclose(image, eager[name], atol=1e-5, err_msg=name)
    assert np.abs(eager["always_on"] - eager["base"]).max() > 1e-3  # identity does change the image


def _flux_depth_pipeline(num_layers: int, num_single_layers: int) -> IdGlowPipeline:
    """Toy widths, the given depths, and the adapter's default intervals (every 2nd double, 4th single)."""
    components = tiny_components(0, num_layers=num_layers, num_single_layers=num_single_layers)
    torch.manual_seed(4)
    adapter = IdGlowAdapter.from_transformer(components["transformer"], id_dim=128, num_tokens=2, attn_dim=32,
                                             num_heads=2, resampler_hidden=64, zero_init=False)
    pipe = IdGlowPipeline(**components, adapter=adapter)
    for module in [*components.values(), adapter]:
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("depth", [(4, 8), (19, 38)], ids=["shallow", "flux_depth"])
def test_compiles_stay_under_the_recompile_limit_at_flux_depth(dynamo, depth):
    """The blocks of one kind share graphs: the number of compiles does not grow with the number of blocks, and
    stays under TorchDynamo's default recompile limit (past it, blocks silently run uncompiled)."""
    pipe = _flux_depth_pipeline(*depth)
    emb = random_embeddings(2, seed=2)
    eager = run(pipe, steps=4, size=32, subject_embeds=emb)
    pipe.transformer.compile_repeated_blocks(backend="eager")
    run(pipe, steps=4, size=32)
    compiled = run(pipe, steps=4, size=32, subject_embeds=emb)
    assert dynamo.graph_breaks == 0
    assert dynamo.compiles == dynamo.compiled_ok
    assert dynamo.compiles <= torch_dynamo.config.recompile_limit
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


def test_concurrent_calls_keep_their_own_identity():
    """Calls from several threads through one transformer and adapter (each with its own scheduler, which holds
    the denoising loop's position): each image is the one its call makes alone."""
    pipe = tiny_pipeline(seed=0)
    requests = [dict(subject_embeds=random_embeddings(2, seed=s)) for s in (1, 2)] + [{}]
    alone = [run(pipe, steps=20, **kw) for kw in requests]
    pipes = [IdGlowPipeline(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)}) for _ in requests]
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(requests))

    def worker(i: int) -> None:
        pipes[i].set_progress_bar_config(disable=True)
        start.wait()
        results[i] = run(pipes[i], steps=20, **requests[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # CPU kernels called from several threads at once may sum in another order (differences ~1e-6); identity
    # from another call would change the image by far more than the tolerance
    for i, image in enumerate(alone):
        np.testing.assert_allclose(results[i], image, atol=1e-4, rtol=0, err_msg=f"call {i}")
    assert max(float(np.abs(alone[i] - alone[j]).max()) for i in range(3) for j in range(i)) > 1e-2


def test_a_pipeline_with_identity_hooks_can_be_deep_copied():
    pipe = tiny_pipeline(seed=0)
    copied = copy.deepcopy(pipe)  # a thread lock cannot be copied: the copy's hooks get a lock of their own
    emb = random_embeddings(2, seed=3)
    np.testing.assert_array_equal(run(copied, steps=4, subject_embeds=emb), run(pipe, steps=4, subject_embeds=emb))
