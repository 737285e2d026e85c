"""Handlers of the Research tab (signed-in researchers): counts, agreement, leaderboard, export."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone

import gradio as gr

from annotation.privacy.private_downloads import BROWSER_COOKIE, DEFAULT_DOWNLOAD_TTL_S, PrivateDownloads
from annotation.store.users import has_role
from annotation.ui.errors import ui_errors
from db.models import Role


@dataclass
class ExportForm:
    """The export form's widget values, by input name, before they are checked."""

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


REFRESH_OUTPUTS = 8  # counts, annotators, agreement, leaderboard table and plot, three notes
MIN_GOLD_VOTES = 10  # gold accuracy from fewer gold votes is shown with a warning
MIN_AGREEMENT_ITEMS = 20  # α from fewer items with 2+ votes is shown with a warning
MIN_MODEL_VOTES = 30  # a model with fewer head-to-head votes is marked provisional

AGREEMENT_GUIDE = (
    "**How to read α** (Krippendorff): 1 = annotators always agree, 0 = no better than chance, below 0 = "
    "systematic disagreement. Rule of thumb: ≥ 0.8 reliable, 0.67–0.8 usable with care, below 0.67 treat the "
    "labels as noisy (train with agreement as DPO strength, sharpen the guidelines or collect more votes)."
)
LEADERBOARD_GUIDE = (
    "**How to read it:** the score is a Bradley–Terry log-odds around the average model (0); a model 1.0 "
    "above another is preferred in about 73% of their head-to-head votes, and when two intervals overlap their "
    "order is not settled yet."
)


def _gold_cell(stats) -> str | None:
    if not stats.gold_votes:
        return None
    text = f"{stats.gold_accuracy:.2f}"
    return text if stats.gold_votes >= MIN_GOLD_VOTES else f"{text} ⚠ n={stats.gold_votes}"


def annotator_table(stats) -> tuple[dict, str]:
    """The annotator table and its small-sample warnings."""
    data = [[s.username, s.votes, None if s.mean_duration_ms is None else round(s.mean_duration_ms / 1000, 1),
             s.gold_votes, _gold_cell(s)] for s in stats]
    few = [s.username for s in stats if 0 < s.gold_votes < MIN_GOLD_VOTES]
    notes = (f"⚠ Gold accuracy of {', '.join(few)} rests on fewer than {MIN_GOLD_VOTES} gold votes: too few to "
             "judge an annotator." if few else "")
    return {"headers": ["annotator", "votes", "mean time (s)", "gold votes", "gold accuracy"], "data": data}, notes


def agreement_table(agreements) -> tuple[dict, str]:
    """The agreement table and the guide, with a warning for α measured on few items."""
    data = [[a.dimension, None if a.alpha is None else round(a.alpha, 3), a.units, a.ratings] for a in agreements]
    few = [a.dimension for a in agreements if a.alpha is not None and a.units < MIN_AGREEMENT_ITEMS]
    notes = AGREEMENT_GUIDE
    if few:
        notes += (f"\n\n⚠ α for {', '.join(few)} comes from fewer than {MIN_AGREEMENT_ITEMS} items with two or "
                  "more votes: a rough estimate.")
    return {"headers": ["dimension", "Krippendorff α", "items with 2+ votes", "ratings"], "data": data}, notes


def leaderboard_table(board) -> tuple[dict, str]:
    """Votes, win rate, score and interval per model, the last-updated line, the guide and warnings."""
    data = []
    for r in board.rows:
        votes = r.comparisons
        data.append([r.model, int(votes), f"{(r.wins + 0.5 * r.ties) / votes:.0%}" if votes else None,
                     round(r.score, 2), f"{r.ci_low:+.2f} … {r.ci_high:+.2f}", r.wins, r.losses, r.ties])
    if not board.rows:
        notes = "The leaderboard needs votes on pairs of two different model versions."
    else:
        updated = board.last_vote_at.strftime("%Y-%m-%d %H:%M UTC") if board.last_vote_at else "never"
        notes = f"Last vote counted: {updated}. Win rate counts a tie as half a win. {LEADERBOARD_GUIDE}"
        few = [r.model for r in board.rows if r.comparisons < MIN_MODEL_VOTES]
        if few:
            notes += (f"\n\n⚠ {', '.join(few)}: fewer than {MIN_MODEL_VOTES} head-to-head votes, the place is "
                      "provisional.")
    headers = ["model", "votes", "win rate", "score", "95% interval", "wins", "losses", "ties"]
    return {"headers": headers, "data": data}, notes


def card_preview(card: str) -> str:
    """The dataset card for the page: without its YAML front matter, headings three levels down."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end != -1:
            card = card[end + 5:]
    lines = card.strip().splitlines()
    return "\n".join("###" + line if line.startswith("#") else line for line in lines)


def export_summary(download) -> str:
    """What the export holds, in words: votes → comparisons → rows per split, ties, both bad, left out."""
    result = getattr(download, "result", None)
    if result is None:
        return f"Exported **{download.rows}** row(s)."
    splits = " · ".join(f"{k} **{v}**" for k, v in result.rows_per_split.items()) or "none"
    store = f" (the store holds {download.store_votes} votes in all)" if download.store_votes is not None else ""
    ties = ("left out (tie policy *drop*)" if result.dropped_ties else "kept with labels 0.5/0.5 (tie policy *half*)")
    lines = [
        f"**Exported {result.rows} row(s)**: {splits}.",
        f"- **{result.votes}** vote(s) on **{result.rows}** comparison(s) → **{result.rows}** row(s): one row per "
        f"pair, the votes of its annotators combined by majority{store}.",
        f"- Ties: **{result.ties if not result.dropped_ties else result.dropped_ties}** row(s) {ties}; a tie "
        "teaches DPO nothing about the overall choice.",
        f"- Both bad: **{result.both_bad}** row(s), kept with `has_label = false`; DPO uses only their per-person, "
        "texture and artifact answers.",
    ]
    lines += [f"- Left out: **{n}** comparison(s), {reason}." for reason, n in result.dropped.items()]
    if not download.with_images:
        lines.append("- ⚠ No images embedded: DPO needs an export with images (tick *Embed images*).")
    return "\n".join(lines)


def export_status(download) -> str:
    """The summary, the training command for the unzipped download and a preview of the dataset card."""
    parts = [export_summary(download),
             f"**Train DPO on the download** (from a checkout, after downloading the zip):\n\n"
             f"```bash\n{download.command}\n```"]
    card = getattr(getattr(download, "result", None), "card", "")
    if card:
        parts.append(f"<details><summary>Dataset card (README.md in the zip)</summary>\n\n"
                     f"{card_preview(card)}\n</details>")
    return "\n\n".join(parts)


NO_BROWSER_NOTE = (
    f"⚠ This call sent no `{BROWSER_COOKIE}` cookie, so nobody can download these files: the links work only "
    "for the browser that asked for the export. Through the API, keep the cookie the app sets on its first answer "
    "(gradio_client does) and send it with the export call and the download."
)


def download_note(ttl_s: float) -> str:
    """What the page says about the download links: who may use them, and for how long."""
    minutes = ttl_s / 60
    span = f"{minutes:.0f} minutes" if minutes >= 2 else f"{ttl_s:.0f} seconds"
    return (f"The download links work only in this browser while you are signed in, for {span}; then the files "
            "are deleted from the server (export again to get a fresh copy).")


SIGNED_OUT_INTRO = ("Sign in as a researcher (above) to see this: the vote counts, the annotators, their "
                    "agreement, the model leaderboard and the export.")


class ResearchHandlers:
    """The Research tab's handlers for a signed-in researcher: the overview (counts, annotators, agreement,
    leaderboard) and the export."""

    def __init__(self, service, auth, downloads: PrivateDownloads | None = None,
                 download_ttl_s: float = DEFAULT_DOWNLOAD_TTL_S):
        self.service = service
        self.auth = auth
        self.downloads = downloads if downloads is not None else PrivateDownloads()
        self.download_ttl_s = download_ttl_s

    def _user(self, token, action: str):
        return self.auth.require(token, Role.researcher, action)

    def intro(self, token: str | None):
        """The sign-in hint above the tab: shown until a researcher is signed in, and then hidden."""
        user = self.auth.user(token)
        if user is None:
            return gr.update(value=SIGNED_OUT_INTRO, visible=True)
        if not has_role(user, Role.researcher):
            return gr.update(value=f"Signed in as {user.username} ({user.role.value}): sign in as a researcher to "
                                   "see this.", visible=True)
        return gr.update(visible=False)

    def show(self, token: str | None):
        """``refresh`` for the page itself (the tab opened, a sign-in): a researcher's overview, and for anybody
        else nothing (the tab's intro already says whom it is for) — never an error."""
        user = self.auth.user(token)
        if user is None or not has_role(user, Role.researcher):
            return tuple(gr.skip() for _ in range(REFRESH_OUTPUTS))
        return self.refresh(token)

    @ui_errors
    def refresh(self, token: str | None):
        """Returns (counts, annotators, agreement, leaderboard table, leaderboard plot, annotator notes,
        agreement guide, leaderboard notes)."""
        self._user(token, "see research data")
        counts_md = " · ".join(f"**{v}** {k}" for k, v in self.service.counts().items())
        annotators, annotator_notes = annotator_table(self.service.annotator_stats())
        agreement, agreement_notes = agreement_table(list(self.service.agreement().values()))
        board = self.service.leaderboard()
        table, board_notes = leaderboard_table(board)
        return (counts_md, annotators, agreement, table, leaderboard_figure(board.rows), annotator_notes,
                agreement_notes, board_notes)

    @ui_errors
    def export(self, token: str | None, form: ExportForm, browser: str | None = None):
        """Returns (files to download, status: the summary, the DPO command and the dataset card). The files are
        private downloads: only ``browser`` (the caller's browser id cookie) may fetch them, while this session
        stays signed in as a researcher, for ``download_ttl_s``."""
        user = self._user(token, "export preferences")
        from annotation.store.research import ExportFilters

        filters = ExportFilters(format=form.format, with_images=bool(form.with_images), tie_policy=form.tie_policy,
                                min_votes=int(form.min_votes or 1), since=_parse_since(form.since))
        result = self.service.export(user.id, filters)
        files = self.downloads.publish([result.archive, *result.data_files], browser=browser,
                                       allowed=self._still_signed_in(token, user.id), ttl_s=self.download_ttl_s)
        note = download_note(self.download_ttl_s) if browser else NO_BROWSER_NOTE
        return files, f"{note}\n\n{export_status(result)}"

    def _still_signed_in(self, token: str | None, user_id: int):
        """A check that this session is still signed in as the same researcher (role and account re-read)."""

        def check() -> bool:
            user = self.auth.user(token)
            return user is not None and user.id == user_id and has_role(user, Role.researcher)

        return check
