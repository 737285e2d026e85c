"""World v3: a synthetic identity world in which temporal identity gating has something to prevent.

World v2 (``learning_world_v2``) cannot test the stability–plasticity claim: every reference is an adult, so no
adapter can learn to carry a reference's build into a child, and identity (full-amplitude 3×3 texture) is mostly
decided before σ = 0.6. World v3 changes four things and keeps the rest of v2 (16×16 latent, 2–3 people
anywhere, prompts made of order, position and age words, embeddings that carry the face's structure):

- **a place for every person**: position words on an 8×8 grid (v2: 3×2), so the prompt puts each face's centre
  within 2 latent pixels and "the face in person j's prompted box" is something a model can get right;

- **references whose structure varies**: in fusion data each person is a child or an adult (``child_probability``)
  and the reference shows them with the same build as the target, so an always-on adapter can learn to copy
  structure from the reference;
- **scarce age-paired supervision**: only ``age_fraction`` of training samples pair a reference with a target of
  the other build, so copying rarely conflicts with the age word during training, and does at inference;
- **identity in faint fine detail**: texture amplitude 0.25 with 6×6 patterns, so identity is still undecided at
  σ = 0.6 where the build already is (``separation`` measures both).

``judge_v3`` sees what a user sees: each requested person is looked for in their own prompted box (a face whose
box overlaps it with IoU ≥ 0.25, each face serving one person), then read for identity (cosine of the recovered
code, 0 when nobody stands there) and build (child or adult proportions). A face of the right person elsewhere
scores nothing. Training never sees the judge (SFT has no labeller).

``sample_v3`` is the Euler sampler with FLUX's resolution shift, σ' = shift·σ / (1 + (shift − 1)·σ), and a window
read in one of three coordinates (``WINDOW_COORDINATES``): σ itself, t = 1 − σ, or the fraction of steps done, so
that the three choices select different steps once the schedule is shifted.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from idglow.faces.base import l2_normalize
from idglow.faces.binding import box_iou
from idglow.schedule import WINDOW_COORDINATES, shift_sigma
from idglow.synthetic import SceneSpec, SyntheticFaceAnalyzer, SyntheticWorld
from idglow.training.data import SyntheticSFTDataset
from idglow.training.modeling import latent_image_ids, pack_latents, unpack_latents
from idglow.training.synthetic_runs import noise_batches

logger = logging.getLogger(__name__)



def world_v3(seed: int = 0, *, texture_amplitude: float = 0.25, pattern_size: int = 6,
             structure_weight: float = 0.5) -> SyntheticWorld:
    """The v3 world: v2's random layout and word prompts, position words on an 8×8 grid, and faint 6×6 identity
    texture (amplitude 0.25)."""
    return SyntheticWorld(size=16, adult_shape=(6, 4), child_shape=(4, 4), min_people=2, max_people=3,
                          code_dim=6, embedding_dim=32, layout="random", prompt="words", position_bins=(8, 8),
                          structure_weight=structure_weight, texture_amplitude=texture_amplitude,
                          pattern_size=pattern_size, seed=seed)


# --- how early identity and structure are decided ---------------------------------------------------------------


def identity_r2(world: SyntheticWorld, sigma: float, child: bool = False) -> float:
    """Fraction of the identity code's variance that the exact posterior mean recovers from one face at noise
    level σ (box known): codes are taken as N(0, I/k) and the texture is linear in the code, so the posterior is
    Gaussian and R² = 1 − tr(Σ_post), Σ_post = (MᵀM/σ² + k·I)⁻¹, M = (1 − σ)·amplitude·patterns."""
    if not 0.0 < sigma < 1.0:
        raise ValueError(f"sigma={sigma} must be in (0, 1)")
    h, w = world.face_shape(child)
    k = world.code_dim
    basis = (world.texture_basis(h, w) * world.silhouette(h, w)).reshape(k, -1).T
    m = basis * world.texture_amplitude * (1.0 - sigma)
    post = np.linalg.inv(m.T @ m / sigma ** 2 + k * np.eye(k))
    return float(1.0 - np.trace(post))


def structure_r2(world: SyntheticWorld, sigma: float, *, samples: int = 4000, seed: int = 0) -> float:
    """Fraction of the build's variance (child 0 / adult 1, equally likely) that the exact posterior recovers
    from the silhouette channel at noise level σ, the face's centre known (Monte Carlo over noise). The texture
    channels are ignored, so this is a lower bound."""
    if not 0.0 < sigma < 1.0:
        raise ValueError(f"sigma={sigma} must be in (0, 1)")
    templates = [_silhouette_patch(world, c) for c in (True, False)]  # child, adult
    rng = np.random.default_rng(seed)
    adult = rng.random(samples) < 0.5
    clean = np.where(adult[:, None, None], templates[1], templates[0])
    x = (1.0 - sigma) * clean + sigma * rng.standard_normal(clean.shape)
    mean = [(1.0 - sigma) * t for t in templates]
    loglik = [-((x - m) ** 2).sum((1, 2)) / (2 * sigma ** 2) for m in mean]
    p_adult = 1.0 / (1.0 + np.exp(np.clip(loglik[0] - loglik[1], -50, 50)))
    return float(1.0 - np.mean((adult - p_adult) ** 2) / 0.25)


def _silhouette_patch(world: SyntheticWorld, child: bool) -> np.ndarray:
    """Channel 0 of a face centred in a patch large enough for either build (background −1)."""
    hh = max(world.adult_shape[0], world.child_shape[0]) + 2
    ww = max(world.adult_shape[1], world.child_shape[1]) + 2
    out = -np.ones((hh, ww))
    h, w = world.face_shape(child)
    y, x = (hh - h) // 2, (ww - w) // 2
    out[y:y + h, x:x + w] = np.where(world.silhouette(h, w), 1.0, -1.0)
    return out


def separation(world: SyntheticWorld, sigmas=(0.3, 0.45, 0.6, 0.75, 0.9)) -> dict[str, list[float]]:
    """Identity R² (mean of the adult and child builds) and structure R² at each σ (see ``identity_r2``,
    ``structure_r2``)."""
    ident = [float(np.mean([identity_r2(world, s, c) for c in (False, True)])) for s in sigmas]
    return {"sigma": list(sigmas), "identity_r2": ident, "structure_r2": [structure_r2(world, s) for s in sigmas]}


# --- data ------------------------------------------------------------------------------------------------------


class WorldV3Dataset(SyntheticSFTDataset):
    """Scenes of world v3 with per-slot reference embeddings, deterministic per index.

    ``split="train"``: each person is a child with probability ``child_probability``; a sample is age-paired
    with probability ``age_fraction`` (task ``age``: every reference shows its person with the other build) and
    is a fusion sample otherwise (task ``fusion``: the references show the target's builds).
    ``split="eval"``: age requests only — adult references, every person to be shown as a child.
    """

    def __init__(self, world: SyntheticWorld, size: int, *, split: str = "train", seed: int = 0,
                 child_probability: float = 0.5, age_fraction: float = 0.1):
        if split not in ("train", "eval"):
            raise ValueError(f"split={split!r}; expected 'train' or 'eval'")
        if not (0.0 <= child_probability <= 1.0 and 0.0 <= age_fraction <= 1.0):
            raise ValueError(f"child_probability={child_probability} and age_fraction={age_fraction} must be "
                             "in [0, 1]")
        super().__init__(world, size, task="mixed", seed=seed)
        self.split = split
        self.child_probability = child_probability
        self.age_fraction = age_fraction

    def task_of(self, index: int) -> str:
        """``age`` for an age-paired sample, ``fusion`` otherwise."""
        if self.split == "eval":
            return "age"
        return "age" if np.random.default_rng([self.seed, index, 3]).random() < self.age_fraction else "fusion"

    def spec(self, index: int) -> tuple[SceneSpec, SceneSpec]:
        """(target scene, reference scene) for ``index``."""
        rng = np.random.default_rng([self.seed, index])
        n = int(rng.integers(self.world.min_people, self.world.max_people + 1))
        if self.split == "eval":
            child = [True] * n
        else:
            child = [bool(v) for v in rng.random(n) < self.child_probability]
        boxes = self.world.sample_layout(child, rng)
        # word prompts list people left to right: sample_layout sorts the boxes, so read each build back
        child = [(y2 - y1, x2 - x1) == self.world.child_shape for x1, y1, x2, y2 in boxes]
        target = SceneSpec(codes=self.world.random_codes(n, rng), child=child, boxes=boxes)
        ref_child = [not c for c in child] if self.task_of(index) == "age" else list(child)
        return target, SceneSpec(codes=target.codes.copy(), child=ref_child, boxes=list(target.boxes))


# --- sampling with FLUX's shift and a window coordinate -----------------------------------------------------------


def flux_shifted_sigmas(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """σ_0 = 1 > … > σ_N = 0 for ``num_steps`` Euler steps: a uniform grid bent by FLUX's resolution shift
    σ' = shift·σ / (1 + (shift − 1)·σ) (shift 1: the uniform grid; FLUX.1-dev at 1024² uses about 3.16)."""
    if num_steps < 1 or shift <= 0:
        raise ValueError(f"num_steps={num_steps} must be >= 1 and shift={shift} > 0")
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift).float()


def window_position(coordinate: str, sigma: float, step: int, num_steps: int) -> float:
    """Where step ``step`` (at noise level ``sigma``) lies in ``coordinate``: σ, 1 − σ, or step / num_steps."""
    if coordinate == "sigma":
        return float(sigma)
    if coordinate == "one_minus_sigma":
        return 1.0 - float(sigma)
    if coordinate == "step_fraction":
        return step / num_steps
    raise ValueError(f"coordinate={coordinate!r}; expected one of {WINDOW_COORDINATES}")


@torch.no_grad()
def sample_v3(model, dataset, indices: list[int], *, window, seed: int = 0, num_steps: int = 10,
              shift: float = 1.0, coordinate: str = "sigma", id_scale: float = 1.0, with_identity: bool = True,
              batch_size: int = 16) -> list[torch.Tensor]:
    """Generated latents (C, S, S) for ``dataset[i]``, noise from ``seed + i``, integrated over
    ``flux_shifted_sigmas(num_steps, shift)``; identity at ``id_scale``·``window.gate(position)`` where position
    is the step's place in ``coordinate`` (``window_position``). ``with_identity=False`` is the base model."""
    window_position(coordinate, 1.0, 0, num_steps)  # validates the coordinate
    sigmas = flux_shifted_sigmas(num_steps, shift)
    was_training = model.training
    model.eval()
    out = []
    for _, batch, noise in noise_batches(dataset, indices, seed, batch_size):
        b, _, h, w = noise.shape
        x, img_ids = pack_latents(noise), latent_image_ids(h, w)
        for i in range(num_steps):
            s = float(sigmas[i])
            scales = None
            if with_identity:
                gate = window.gate(window_position(coordinate, s, i, num_steps))
                scales = id_scale * gate * batch["id_mask"].float()
            v = model(x, torch.full((b,), s), batch["prompt_embeds"], batch["pooled_prompt_embeds"], img_ids,
                      batch["id_embeds"] if with_identity else None, scales)
            x = x + (float(sigmas[i + 1]) - s) * v
        out.extend(unpack_latents(x, h, w))
    model.train(was_training)
    return out


# --- the judge --------------------------------------------------------------------------------------------------


def judge_v3(analyzer: SyntheticFaceAnalyzer, latent, spec: SceneSpec, *, min_iou: float = 0.25) -> dict[str, Any]:
    """Each requested person judged in their own prompted box.

    A person is *in place* when a face's box overlaps their requested box with IoU ≥ ``min_iou`` (faces and
    people paired by a Hungarian match on IoU, whoever the faces look like). Per person: ``in_place``,
    ``identity`` (cosine of the recovered code with the person's code; 0 when not in place), ``adult_build``
    (the face in place has adult proportions; None when not in place) and ``right_age`` (in place with the
    requested build).
    """
    from scipy.optimize import linear_sum_assignment

    faces = analyzer.detect(latent)
    n = spec.num_subjects
    in_place, identity, adult_build = [False] * n, [0.0] * n, [None] * n
    if faces:
        iou = np.array([[box_iou(f.bbox, box) for box in spec.boxes] for f in faces])
        for fi, pj in zip(*linear_sum_assignment(-iou)):
            if iou[fi, pj] < min_iou:
                continue
            face = faces[fi]
            in_place[pj] = True
            identity[pj] = float(l2_normalize(face.code) @ l2_normalize(spec.codes[pj]))  # type: ignore[attr-defined]
            adult_build[pj] = not analyzer.world.is_child_shape(face.bbox)
    right_age = [p and (a != c) for p, a, c in zip(in_place, adult_build, spec.child)]
    return {"in_place": in_place, "identity": identity, "adult_build": adult_build, "right_age": right_age,
            "faces": len(faces)}


def evaluate_v3(model, dataset: WorldV3Dataset, indices: list[int], **kwargs) -> dict[str, float]:
    """Judge ``sample_v3``'s scenes (its keyword arguments pass through): mean per-person ``identity`` by
    position, ``in_place`` rate, ``right_age`` rate, and ``leak``: the fraction of people requested as children
    and found in place who are drawn with an adult build (the structure an adult reference carries)."""
    analyzer = SyntheticFaceAnalyzer(dataset.world)
    latents = sample_v3(model, dataset, indices, **kwargs)
    ident, place, age, leak = [], [], [], []
    for i, lat in zip(indices, latents):
        target, _ = dataset.spec(i)
        j = judge_v3(analyzer, lat, target)
        ident.extend(j["identity"])
        place.extend(j["in_place"])
        age.extend(j["right_age"])
        leak.extend(a for a, c, p in zip(j["adult_build"], target.child, j["in_place"]) if c and p)
    return {"identity": float(np.mean(ident)), "in_place": float(np.mean(place)), "right_age": float(np.mean(age)),
            "leak": float(np.mean(leak)) if leak else float("nan")}
