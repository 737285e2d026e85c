"""Evaluation metrics: identity fidelity per person, missing and duplicated faces, age error, bootstrap
confidence intervals over cases and the Pareto front of configurations.

Every function here is pure: faces and matches in, numbers out. Identity similarity is FaceSim — the cosine
similarity between the face analyzer's embedding of a generated face and of the subject's reference photo,
after Hungarian assignment of generated faces to subjects (``idglow.faces.match_faces``); a subject with no
assigned face scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from idglow.faces.base import FaceMatch
from idglow.faces.match import SAME_PERSON_THRESHOLDS, same_person_threshold  # noqa: F401 (re-exported)


def identity_metrics(match: FaceMatch) -> dict[str, float]:
    """Per-image identity metrics from a ``FaceMatch`` of N subjects.

    Returns ``face_sim_mean`` (mean over subjects, 0 for a missing one), ``face_sim_worst`` (the worst
    subject), ``missing_rate`` (fraction of subjects with no face) and ``duplicate_rate`` (fraction of subjects
    whose identity also appears on a second face).
    """
    n = len(match.similarity)
    if n == 0:
        raise ValueError("a FaceMatch with no subjects has no identity metrics")
    sims = np.asarray(match.similarity, dtype=np.float64)
    return {
        "face_sim_mean": float(sims.mean()),
        "face_sim_worst": float(sims.min()),
        "missing_rate": len(set(match.missing)) / n,
        "duplicate_rate": len(set(match.duplicates)) / n,
    }


def age_errors(match: FaceMatch, target_ages: Sequence[float | None]) -> list[float | None]:
    """|estimated age − target age| per subject, from ``match.ages`` (None where the subject has no face, no
    target, or the analyzer gave no age for its face)."""
    if len(target_ages) != len(match.face_of_slot):
        raise ValueError(f"{len(target_ages)} target ages for {len(match.face_of_slot)} matched subjects")
    ages = match.ages or [None] * len(target_ages)
    return [None if target is None or age is None else abs(float(age) - float(target))
            for age, target in zip(ages, target_ages)]


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(kept)) if kept else None


def bootstrap_ci(
    values: Sequence[float],
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling cases with replacement).

    ``indices`` (num_resamples, n) may be passed so that several configurations are resampled with the same
    cases (a paired bootstrap). One value gives a zero-width interval.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-d list of values, got shape {x.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    if x.size == 1:
        return float(x[0]), float(x[0])
    if indices is None:
        indices = bootstrap_indices(x.size, num_resamples, seed)
    means = x[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_indices(n: int, num_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Resampled case indices (num_resamples, n), reproducible from ``seed``."""
    if num_resamples < 1:
        raise ValueError(f"num_resamples={num_resamples} must be at least 1")
    return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))


@dataclass(frozen=True)
class MetricSummary:
    """Mean of a metric over the cases that have it, with a bootstrap confidence interval."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


def summarize(values: Sequence[float | None], num_resamples: int = 1000, confidence: float = 0.95,
              seed: int = 0) -> MetricSummary | None:
    """Summary over cases, ignoring cases where the metric is None; None when no case has it."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    low, high = bootstrap_ci(kept, num_resamples, confidence, seed)
    return MetricSummary(mean=float(np.mean(kept)), ci_low=low, ci_high=high, n=len(kept))


def pareto_front(points: Mapping[str, tuple[float, float | None]]) -> list[str]:
    """Names of the points that no other point dominates (higher is better on both axes).

    A point dominates another when it is at least as good on both axes and better on one. When the y values
    are missing (None), only x counts.
    """
    names = list(points)
    use_y = all(points[n][1] is not None for n in names)
    front = []
    for a in names:
        xa, ya = points[a]
        dominated = False
        for b in names:
            if b == a:
                continue
            xb, yb = points[b]
            if use_y:
                if xb >= xa and yb >= ya and (xb > xa or yb > ya):
                    dominated = True
                    break
            elif xb > xa:
                dominated = True
                break
        if not dominated:
            front.append(a)
    return front
