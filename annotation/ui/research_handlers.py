"""Handlers of the Research tab (signed-in researchers): counts, agreement, leaderboard, export."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone

import gradio as gr

from annotation.ui.errors import ui_errors
from db.models import Role


@dataclass
class ExportForm:
    format: str
    with_images: bool
    tie_policy: str
    min_votes: float
    since: str

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _parse_since(text: str | None) -> datetime | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise gr.Error(f"'since' {text!r} is not a date such as 2025-01-31 or 2025-01-31T12:00",
                       print_exception=False) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def leaderboard_figure(rows):
    """Bradley–Terry scores with their intervals (matplotlib figure), or None with no rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 * len(rows) + 1.2))
    names = [r.model for r in rows][::-1]
    scores = [r.score for r in rows][::-1]
    lo = [r.score - r.ci_low for r in rows][::-1]
    hi = [r.ci_high - r.score for r in rows][::-1]
    ax.errorbar(scores, range(len(rows)), xerr=[lo, hi], fmt="o", capsize=4)
    ax.set_yticks(range(len(rows)), names)
    ax.axvline(0, color="0.8", lw=1)
    ax.set_xlabel("Bradley–Terry score (95% bootstrap interval)")
    fig.tight_layout()
    plt.close(fig)
    return fig


class ResearchHandlers:
    def __init__(self, service, auth):
        self.service = service
        self.auth = auth

    def _user(self, token, action: str):
        return self.auth.require(token, Role.researcher, action)

    @ui_errors
    def refresh(self, token: str | None):
        """Returns (counts, annotators, agreement, leaderboard table, leaderboard plot)."""
        self._user(token, "see research data")
        counts = self.service.counts()
        counts_md = " · ".join(f"**{v}** {k}" for k, v in counts.items())
        stats = self.service.annotator_stats()
        annotators = {"headers": ["annotator", "votes", "mean time (s)", "gold votes", "gold accuracy"],
                      "data": [[s.username, s.votes, None if s.mean_duration_ms is None else round(s.mean_duration_ms / 1000, 1),
                                s.gold_votes, None if s.gold_accuracy is None else round(s.gold_accuracy, 3)]
                               for s in stats]}
        agreement = {"headers": ["dimension", "Krippendorff alpha", "items with 2+ votes", "ratings"],
                     "data": [[a.dimension, None if a.alpha is None else round(a.alpha, 3), a.units, a.ratings]
                              for a in self.service.agreement().values()]}
        board = self.service.leaderboard()
        table = {"headers": ["model", "score", "interval low", "interval high", "wins", "losses", "ties"],
                 "data": [[r.model, round(r.score, 3), round(r.ci_low, 3), round(r.ci_high, 3), r.wins, r.losses, r.ties]
                          for r in board]}
        if not board:
            counts_md += "\n\nThe leaderboard needs votes on pairs of two different model versions."
        return counts_md, annotators, agreement, table, leaderboard_figure(board)

    @ui_errors
    def export(self, token: str | None, form: ExportForm):
        """Returns (files to download, status with the DPO command)."""
        user = self._user(token, "export preferences")
        from annotation.research import ExportFilters

        filters = ExportFilters(format=form.format, with_images=bool(form.with_images), tie_policy=form.tie_policy,
                                min_votes=int(form.min_votes or 1), since=_parse_since(form.since))
        result = self.service.export(user.id, filters)
        files = [str(result.archive), *[str(p) for p in result.data_files]]
        status = (f"Exported **{result.rows}** comparison(s). Train DPO on it and serve the result:\n\n"
                  f"```bash\n{result.command}\n```")
        return files, status
