"""Annotator statistics, inter-annotator agreement and the model leaderboard."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.orm import Session, aliased

from annotation.store.votes import vote_answers
from db.engine import read_only
from db.models import Candidate, Comparison, Generation, ModelVersion, Overall, User, Vote
from idglow import preferences

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotatorStats:
    """One annotator's votes, mean time per vote (ms) and answers on gold items."""

    user_id: int
    username: str
    votes: int
    mean_duration_ms: float | None
    gold_votes: int
    gold_correct: int

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_votes if self.gold_votes else None


def annotator_stats(session: Session) -> list[AnnotatorStats]:
    """Per annotator: votes, mean time per vote and accuracy on gold items (most active first)."""
    read_only(session)
    correct = case((Vote.overall == Comparison.gold_answer, 1), else_=0)
    rows = session.execute(
        select(
            User.id,
            User.username,
            func.count(Vote.id),
            func.avg(Vote.duration_ms),
            func.sum(cast(Comparison.is_gold, Integer)),
            func.sum(case((Comparison.is_gold.is_(True), correct), else_=0)),
        )
        .join(Vote, Vote.user_id == User.id)
        .join(Comparison, Comparison.id == Vote.comparison_id)
        .group_by(User.id, User.username)
        .order_by(func.count(Vote.id).desc(), User.id)
    ).all()
    session.commit()
    return [
        AnnotatorStats(uid, name, int(n), None if avg is None else float(avg), int(gold or 0), int(ok or 0))
        for uid, name, n, avg, gold, ok in rows
    ]


@dataclass(frozen=True)
class Agreement:
    """Inter-annotator agreement on one answer dimension."""

    dimension: str
    alpha: float | None  # Krippendorff's alpha (nominal); None when fewer than two units have 2+ ratings
    units: int  # items rated by at least two annotators
    ratings: int


def _alpha(counts: dict[object, dict[str, int]], categories: list[str]) -> tuple[float | None, int, int]:
    units = [c for c in counts.values() if sum(c.values()) >= 2]
    ratings = sum(sum(c.values()) for c in units)
    if len(units) < 2:
        return None, len(units), ratings
    import krippendorff

    matrix = np.array([[u.get(cat, 0) for cat in categories] for u in units], dtype=float)
    if np.count_nonzero(matrix.sum(axis=0)) < 2:  # one category only: perfect agreement, alpha undefined
        return 1.0, len(units), ratings
    return float(krippendorff.alpha(value_counts=matrix, level_of_measurement="nominal")), len(units), ratings


def agreement_dimensions() -> tuple[str, ...]:
    """The questions agreement is measured on: the declared DPO questions (``idglow.preferences``), in
    declaration order."""
    return tuple(q.name for q in preferences.declared() if q.is_dimension)


def _count_answers(counts: dict[str, dict[object, dict[str, int]]], cid: int, answers: dict[str, Any],
                   per_person: set[str]) -> None:
    for name, units in counts.items():
        value = answers.get(name)
        if value is None:
            continue
        if name in per_person:
            for slot, choice in value.items():
                units[(cid, int(slot))][choice] += 1
        else:
            units[cid][value] += 1


def agreement(session: Session, dimensions: tuple[str, ...] | None = None) -> dict[str, Agreement]:
    """Krippendorff's alpha per question over non-gold comparisons with two or more votes (default: every
    question of :func:`agreement_dimensions`), with the question's choices as categories.

    A per-person question (``identity``) pools every (comparison, slot) as one unit.
    """
    known = agreement_dimensions()
    dimensions = known if dimensions is None else tuple(dimensions)
    unknown = [d for d in dimensions if d not in known]
    if unknown:
        raise ValueError(f"unknown agreement dimension {unknown[0]!r}; expected {known}")
    questions = preferences.by_name()
    per_person = {d for d in dimensions if questions[d].per_person}
    read_only(session)
    counts: dict[str, dict[object, dict[str, int]]] = {
        d: defaultdict(lambda: defaultdict(int)) for d in dimensions
    }
    q = (
        select(Vote.comparison_id, Vote.overall, Vote.answers)
        .join(Comparison, Comparison.id == Vote.comparison_id)
        .where(Comparison.is_gold.is_(False), Comparison.vote_count >= 2)
        .execution_options(yield_per=20_000)
    )
    for cid, overall, answers in session.execute(q):
        _count_answers(counts, cid, vote_answers(overall, answers), per_person)
    session.commit()
    out = {}
    for dim in dimensions:
        alpha, units, ratings = _alpha(counts[dim], list(questions[dim].values))
        out[dim] = Agreement(dim, alpha, units, ratings)
    return out


@dataclass(frozen=True)
class LeaderboardRow:
    """One model version's Bradley–Terry score with its bootstrap interval and its vote tally."""

    model: str
    score: float  # Bradley-Terry log-strength, mean 0 over the listed models
    ci_low: float
    ci_high: float
    wins: float
    losses: float
    ties: float

    @property
    def comparisons(self) -> float:
        return self.wins + self.losses + self.ties


def _bt(matrix: np.ndarray, alpha: float) -> np.ndarray:
    import choix

    params = choix.ilsr_pairwise_dense(matrix, alpha=alpha, max_iter=1000)
    return params - params.mean()


_Cell = tuple[int, int, bool]  # (winner index, loser index, tie?)


def _cross_model_outcomes(session: Session) -> tuple[list[Any], dict[int, str]]:
    """Overall-vote counts per (model of A, model of B, answer) on non-gold comparisons of two different
    models, ``both_bad`` left out; and the model names by id."""
    read_only(session)
    ca, cb = aliased(Candidate), aliased(Candidate)
    ga, gb = aliased(Generation), aliased(Generation)
    rows = session.execute(
        select(ga.model_version_id, gb.model_version_id, Vote.overall, func.count())
        .select_from(Vote)
        .join(Comparison, Comparison.id == Vote.comparison_id)
        .join(ca, ca.id == Comparison.candidate_a_id)
        .join(cb, cb.id == Comparison.candidate_b_id)
        .join(ga, ga.id == ca.generation_id)
        .join(gb, gb.id == cb.generation_id)
        .where(Comparison.is_gold.is_(False), ga.model_version_id != gb.model_version_id)
        .where(Vote.overall != Overall.both_bad)
        .group_by(ga.model_version_id, gb.model_version_id, Vote.overall)
    ).all()
    names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
    session.commit()
    return rows, names


def _outcome_cells(rows: list[Any], index: dict[int, int]) -> tuple[list[_Cell], np.ndarray]:
    """One cell per (winner, loser, tie?) outcome with its vote count; a tie is half a win each way."""
    cells: list[_Cell] = []
    counts: list[int] = []
    for mv_a, mv_b, overall, n in rows:
        i, j = index[mv_a], index[mv_b]
        if overall == Overall.a:
            cells.append((i, j, False))
        elif overall == Overall.b:
            cells.append((j, i, False))
        else:
            cells.append((i, j, True))
        counts.append(int(n))
    return cells, np.array(counts)


def _win_matrix(cells: list[_Cell], weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The win matrix (row beats column, ties as half a win each way) and each model's number of ties."""
    m = np.zeros((size, size))
    ties = np.zeros(size)
    for (win, lose, is_tie), c in zip(cells, weights):
        if is_tie:
            m[win, lose] += 0.5 * c
            m[lose, win] += 0.5 * c
            ties[win] += c
            ties[lose] += c
        else:
            m[win, lose] += c
    return m, ties


def _bootstrap_interval(
    cells: list[_Cell],
    counts: np.ndarray,
    size: int,
    *,
    n_bootstrap: int,
    confidence: float,
    regularization: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap bounds of every model's score, resampling the votes ``n_bootstrap`` times."""
    rng = np.random.default_rng(seed)
    total = int(counts.sum())
    boot = np.empty((n_bootstrap, size))
    for k in range(n_bootstrap):
        resampled = rng.multinomial(total, counts / total)
        boot[k] = _bt(_win_matrix(cells, resampled, size)[0], regularization)
    lo, hi = np.percentile(boot, [50 * (1 - confidence), 100 - 50 * (1 - confidence)], axis=0)
    return lo, hi


def leaderboard(
    session: Session,
    *,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    regularization: float = 0.01,
    seed: int = 0,
) -> list[LeaderboardRow]:
    """Bradley–Terry ranking of model versions from overall votes on comparisons of two different models.

    A tie counts as half a win for each side; ``both_bad`` votes and gold items are left out. The interval is
    a percentile bootstrap over votes (``n_bootstrap`` resamples, fitted with ``choix``).
    """
    rows, names = _cross_model_outcomes(session)
    ids = sorted({r[0] for r in rows} | {r[1] for r in rows})
    if len(ids) < 2:
        return []
    index = {mid: i for i, mid in enumerate(ids)}
    cells, counts = _outcome_cells(rows, index)
    matrix, ties = _win_matrix(cells, counts, len(ids))
    scores = _bt(matrix, regularization)
    lo, hi = _bootstrap_interval(
        cells,
        counts,
        len(ids),
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        regularization=regularization,
        seed=seed,
    )
    board = [
        LeaderboardRow(
            model=names.get(mid, str(mid)),
            score=float(scores[i]),
            ci_low=float(lo[i]),
            ci_high=float(hi[i]),
            wins=float(matrix[i].sum() - 0.5 * ties[i]),
            losses=float(matrix[:, i].sum() - 0.5 * ties[i]),
            ties=float(ties[i]),
        )
        for mid, i in index.items()
    ]
    board.sort(key=lambda r: r.score, reverse=True)
    return board
