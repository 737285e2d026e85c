"""Training data: sample formats, collate functions and the synthetic-world datasets.

An SFT sample is a dict with
    latents (C, h, w) float — or pixel_values (3, H, W) in [−1, 1] (encoded by the trainer's VAE)
    prompt_embeds (T, D) + pooled_prompt_embeds (P,) — or prompt (str) (encoded by the trainer)
    id_embeds (N, id_dim) reference embeddings in slot order
    face_boxes list of N boxes (x1, y1, x2, y2) normalised to [0, 1] (None for a slot with no face)
    task "fusion" | "age";  target_ages list of N floats or None
A DPO sample has the same keys for the shared conditioning, and per image i ∈ {0, 1}: latents_i /
pixel_values_i, face_boxes_i; plus preference (D,) ∈ {+1, −1, 0} (+1: image 0 preferred on that dimension)
and strength (D,) in the layout of ``idglow.preferences.dpo_dimensions()``.

Regions of the DPO dimensions (``dpo_region_masks``), per image, by the region their question declares:
    whole_image  the whole image (overall)
    faces        (texture) the people's faces: the union of that image's face boxes (whole image when none)
    background   (artifacts) everything outside the face boxes (whole image when the faces cover it all)
    person       (identity_j) person j's face box in that image: the face standing in j's own place when the
                 prompt gives places (``idglow.faces.binding``: the left-to-right order of the prompt, or the
                 synthetic world's boxes), so that a face drawn in another person's place is judged where j
                 should be; else j's identity-matched face. Where j's place is empty (or j is missing), the box
                 where the other image shows j (both images answer the same prompt and noise: it is where the
                 face was expected); the whole image when j is missing from both.
A person missing from one image is therefore still a labelled identity_j pair: missing from the loser is the
loser's identity failure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from idglow import preferences
from idglow.schedule import TASKS
from idglow.subjects import MAX_SUBJECTS

logger = logging.getLogger(__name__)

#: Preference strength used where a row gives none (a tie on overall, an unrated vote, a missing
#: agreement): "slight", so that an unrated preference never claims to be clear.
DEFAULT_MISSING_STRENGTH = 0.5
_STACKED = ("latents", "pixel_values", "prompt_embeds", "pooled_prompt_embeds", "latents_0", "latents_1",
            "pixel_values_0", "pixel_values_1", "preference", "strength")
_LISTS = ("prompt", "clip_prompt", "task", "target_ages", "face_boxes", "face_boxes_0", "face_boxes_1", "pair_id")


def boxes_to_masks(boxes: Sequence[Sequence[Sequence[float] | None]], num_slots: int, height: int,
                   width: int) -> torch.Tensor:
    """Per-sample lists of normalised boxes → masks (B, num_slots, height, width) (1 inside a box).

    A box covers every latent pixel it overlaps; a missing (None) or padded slot gives an empty mask."""
    masks = torch.zeros(len(boxes), num_slots, height, width)
    for b, sample in enumerate(boxes):
        for j, box in enumerate(list(sample or [])[:num_slots]):
            if box is None:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            c1, r1 = int(np.floor(x1 * width)), int(np.floor(y1 * height))
            c2, r2 = int(np.ceil(x2 * width)), int(np.ceil(y2 * height))
            masks[b, j, max(r1, 0):min(r2, height), max(c1, 0):min(c2, width)] = 1.0
    return masks


def _identity_regions(own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(B, n, H, W) identity regions of one image: its own face masks, the other image's where it has none,
    the whole image where neither has the person."""
    has_own = own.flatten(2).amax(dim=2) > 0  # (B, n)
    has_other = other.flatten(2).amax(dim=2) > 0
    whole = torch.ones_like(own)
    fallback = torch.where(has_other[..., None, None], other, whole)
    return torch.where(has_own[..., None, None], own, fallback)


def _image_regions(faces: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-pair regions of one image, by region name, from its face masks (B, n, H, W): each (B, H, W)."""
    whole = torch.ones_like(faces[:, 0])
    union = faces.amax(dim=1) if faces.shape[1] else torch.zeros_like(whole)
    has_faces = union.flatten(1).amax(dim=1) > 0
    outside = 1.0 - union
    has_outside = outside.flatten(1).amax(dim=1) > 0
    return {"whole_image": whole,
            "faces": torch.where(has_faces[:, None, None], union, whole),
            "background": torch.where(has_outside[:, None, None], outside, whole)}


def num_dimensions() -> int:
    """D, the length of preference, strength and α vectors: the declared dimensions for MAX_SUBJECTS people."""
    return len(preferences.dpo_dimensions(MAX_SUBJECTS))


def dpo_region_masks(boxes_0: Sequence[Sequence[Sequence[float] | None]],
                     boxes_1: Sequence[Sequence[Sequence[float] | None]], num_slots: int, height: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent-pixel regions of every DPO dimension for image 0 and image 1 of each pair: each dimension's
    region is the one its question declares (``idglow.preferences``; see the module docstring).

    Args:
        boxes_0, boxes_1: per pair, the normalised face box of each slot in image 0 / image 1 (None: missing).
        num_slots: identity slots in the batch (padded slots have no box in either image).
        height, width: latent size.

    Returns:
        Two (B, D, height, width) masks in the layout of ``preferences.dpo_dimensions()``; every region is
        non-empty, and per-person dimensions of slots beyond ``num_slots`` are the whole image (their
        preference is 0: unlabelled).
    """
    dims = preferences.dpo_dimensions(MAX_SUBJECTS)
    faces_0 = boxes_to_masks(boxes_0, num_slots, height, width)
    faces_1 = boxes_to_masks(boxes_1, num_slots, height, width)
    n = min(num_slots, MAX_SUBJECTS)
    out = []
    for own, other in ((faces_0, faces_1), (faces_1, faces_0)):
        masks = torch.ones(own.shape[0], len(dims), height, width)
        image = _image_regions(own)
        people = _identity_regions(own[:, :n], other[:, :n])
        for d, dim in enumerate(dims):
            if dim.region == "person":
                if dim.slot < n:
                    masks[:, d] = people[:, dim.slot]
            else:
                masks[:, d] = image[dim.region]
        out.append(masks)
    return out[0], out[1]


def _strength_value(value: Any) -> float | None:
    """A stored strength or agreement as a number in (0, 1], or None when it is missing, NaN or 0."""
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or value <= 0.0:
        return None
    if value > 1.0:
        raise ValueError(f"preference strength {value} is above 1; strengths and agreements lie in [0, 1]")
    return value


def preference_strengths(row: dict[str, Any], *, use_agreement: bool = False,
                         missing: float = DEFAULT_MISSING_STRENGTH) -> np.ndarray:
    """Per-dimension preference strength s_d (D,) of one export row, in the layout of
    ``preferences.dpo_dimensions()``.

    The overall strength is the row's ``agreement`` (``use_agreement``) or the export column of the grade of
    the primary question (``strength``: slight 0.5, clear 1.0); where it is missing, NaN or 0 (ties, unrated
    votes) it is ``missing``. A dimension whose question has its own grade takes that grade's column where the
    row has a value (a list per person for a per-person question), else the overall strength.
    """
    if not 0.0 <= missing <= 1.0:
        raise ValueError(f"missing strength {missing} must be in [0, 1]")
    main = preferences.primary()
    main_grade = preferences.grade_of(main)
    overall = _strength_value(row.get("agreement") if use_agreement or main_grade is None
                              else row.get(main_grade.column))
    overall = missing if overall is None else overall
    dims = preferences.dpo_dimensions(MAX_SUBJECTS)
    out = np.full(len(dims), overall, dtype=np.float32)
    for d, dim in enumerate(dims):
        grade = preferences.grade_of(dim.question)
        if dim.question is main or grade is None:
            continue
        value = row.get(grade.column)
        if dim.slot is not None:
            value = list(value or [])[dim.slot] if dim.slot < len(value or []) else None
        own = _strength_value(value)
        out[d] = overall if own is None else own
    return out


def collate_group_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, pad identities to the batch's largest group (``id_mask`` marks real slots) and keep
    the per-sample lists (prompts, tasks, boxes) as lists. Works for SFT and DPO samples alike."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in _STACKED:
        if key in samples[0]:
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    for key in _LISTS:
        if key in samples[0]:
            batch[key] = [s[key] for s in samples]
    embeds = [torch.as_tensor(s["id_embeds"], dtype=torch.float32) for s in samples]
    n = max(e.shape[0] for e in embeds)
    dim = embeds[0].shape[-1]
    batch["id_embeds"] = torch.zeros(len(samples), n, dim)
    batch["id_mask"] = torch.zeros(len(samples), n)
    for i, e in enumerate(embeds):
        batch["id_embeds"][i, : e.shape[0]] = e
        batch["id_mask"][i, : e.shape[0]] = 1.0
    if "id_weights" in samples[0]:
        for i, s in enumerate(samples):
            w = torch.as_tensor(s["id_weights"], dtype=torch.float32)
            batch["id_mask"][i, : w.shape[0]] *= w
    return batch


# --- the synthetic world ------------------------------------------------------------------------------------


class SyntheticSFTDataset(Dataset):
    """Group scenes of a ``SyntheticWorld`` with per-slot reference embeddings, deterministic per index.

    ``task="fusion"``: the target is the scene and the references are its own people (same-photo crops).
    ``task="age"``: the references are the adults and the target shows ``child_fraction`` of them (at least
    one) as children, through the world's age transform. ``task="mixed"`` alternates the two.
    """

    def __init__(self, world, size: int, *, task: str = "fusion", seed: int = 0, child_fraction: float = 1.0):
        from idglow.synthetic import SyntheticFaceAnalyzer

        if task not in (*TASKS, "mixed"):
            raise ValueError(f"task={task!r}; expected fusion, age or mixed")
        self.world = world
        self.size = size
        self.task = task
        self.seed = seed
        self.child_fraction = child_fraction
        self.analyzer = SyntheticFaceAnalyzer(world)
        self.bucket_ids = [0] * size

    def __len__(self) -> int:
        return self.size

    def task_of(self, index: int) -> str:
        return ("fusion", "age")[index % 2] if self.task == "mixed" else self.task

    def spec(self, index: int):
        """(target scene, reference scene) for ``index``."""
        rng = np.random.default_rng([self.seed, index])
        adult = self.world.sample_scene(rng)
        if self.task_of(index) == "fusion":
            return adult, adult
        child = [bool(rng.random() < self.child_fraction) for _ in adult.child]
        if not any(child):
            child[int(rng.integers(len(child)))] = True
        return self.world.age_transform(adult, child), adult

    def reference_embeddings(self, reference_spec) -> np.ndarray:
        return np.stack([self.analyzer.embed_reference(self.world.reference(z, c))
                         for z, c in zip(reference_spec.codes, reference_spec.child)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        target, refs = self.spec(index)
        prompt_embeds, pooled = self.world.encode_prompt(target)
        s = float(self.world.size)
        return {
            "latents": torch.from_numpy(self.world.render_scene(target)),
            "prompt_embeds": torch.from_numpy(prompt_embeds),
            "pooled_prompt_embeds": torch.from_numpy(pooled),
            "id_embeds": torch.from_numpy(self.reference_embeddings(refs)),
            "face_boxes": [tuple(v / s for v in box) for box in target.boxes],
            "task": self.task_of(index),
            "target_ages": target.target_ages,
        }


class PreferencePairDataset(Dataset):
    """DPO pairs held in memory: a list of DPO sample dicts (e.g. generated and oracle-labelled)."""

    def __init__(self, samples: list[dict[str, Any]]):
        if not samples:
            raise ValueError("no preference pairs given")
        self.samples = samples
        self.bucket_ids = [0] * len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]
