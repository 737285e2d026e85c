"""Handlers of sign-in and the Annotate tab. The caller is checked on the server in every handler.

Every pair is shown with a fresh form: ``_form`` builds one ``gr.update`` per output, with the answers to show
(none, or those of an undone vote). Text that visitors wrote (prompt, labels) is escaped, never rendered.
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from annotation.generation.service import typed_prompt_positions
from annotation.store.errors import UndoExpired
from annotation.store.votes import FAILURE_TYPES
from annotation.ui.errors import notice_html, ui_errors
from db.models import Role
from idglow.prompting.badcases import wrong_age_slots
from idglow.subjects import MAX_SUBJECTS

# each choice shows its key in brackets
OVERALL_CHOICES = [("A better [a]", "left"), ("B better [b]", "right"), ("Tie [t]", "tie"), ("Both bad [x]", "both_bad")]
OVERALL_LABEL = "Overall: which group photo is better?"
OVERALL_MISSING = "Overall: choose A, B, tie or both bad first (keys a, b, t, x)"
OVERALL_AT = 5 + MAX_SUBJECTS  # where the overall radio stands in the shown outputs
PAIR_CHOICES = [("A [a]", "left"), ("B [b]", "right"), ("Same [t]", "tie")]
STRENGTH_CHOICES = [("Slightly [s]", "slight"), ("Clearly [c]", "clear")]
FLAG_SIDE_CHOICES = [("A [a]", "left"), ("B [b]", "right")]


def failure_label(name: str) -> str:
    """The human-readable name of a taxonomy failure type: identity_swap → 'Identity swap'."""
    return name.replace("_", " ").capitalize()


# shown with their number key; the stored value stays the taxonomy name
FAILURE_CHOICES = [(f"{failure_label(name)} [{i + 1}]", name) for i, name in enumerate(FAILURE_TYPES)]
WRONG_AGE_CHOICE = next(text for text, name in FAILURE_CHOICES if name == "wrong_age")  # as the flag form shows it
# refs, A, B, prompt, progress, identity radios, overall, strength, texture, artifacts, flag side, failure types,
# flag note, flag status, flag hint, vote notice, pair state
SHOWN_OUTPUTS = 5 + MAX_SUBJECTS + 4 + 3 + 4
NOTICE = -2  # where the vote notice (beside Submit) stands in the shown outputs


def inline_problem(text: str, outputs: int = SHOWN_OUTPUTS, at: int = NOTICE) -> list:
    """Outputs that leave everything on screen as it is and say ``text`` at ``at`` (the form stays usable:
    no error state covers the pair or the answers given)."""
    out: list = [gr.skip() for _ in range(outputs)]
    out[at] = notice_html(text, problem=True)
    return out


TAB_IDS = ("generate", "annotate", "research")  # ids of the page's tabs, as gr.Tabs(selected=...) takes them


def home_tab(role: Role, on_tab: str | None) -> str | None:
    """Where a sign-in takes the person: from Generate (where everyone lands) to their work (Research for a
    researcher, Annotate for an annotator); from any other tab nowhere (None: they chose that tab)."""
    if on_tab not in (None, "generate"):
        return None
    return "research" if role in (Role.researcher, Role.admin) else "annotate"


def sign_in_client(request) -> str:
    """Whom a sign-in's backoff counts against: the browser cookie, else the network address."""
    from annotation.privacy.private_downloads import browser_id

    if request is None:
        return ""
    browser = browser_id(dict(getattr(request, "cookies", None) or {}))
    if browser:
        return f"browser:{browser}"
    client = getattr(request, "client", None)
    return f"address:{getattr(client, 'host', '')}"


class SignInHandlers:
    """Outputs of sign-in and sign-out: token, status line, password box, sign-in panel, signed-in bar,
    annotate content, annotate intro, research content, the tabs (the one to show)."""

    def __init__(self, auth):
        self.auth = auth

    @ui_errors
    def sign_in(self, username: str, password: str, on_tab: str | None = None, request: gr.Request = None):
        signed = self.auth.sign_in(username, password, client=sign_in_client(request))
        user = signed.user
        researcher = user.role in (Role.researcher, Role.admin)
        status = f"Signed in as **{html.escape(user.username)}** · {user.role.value}"
        tab = home_tab(user.role, on_tab)
        return (signed.token, status, "", gr.update(visible=False), gr.update(visible=True),
                gr.update(visible=True), gr.update(visible=False), gr.update(visible=researcher),
                gr.update(selected=tab) if tab else gr.skip())

    def after_attempt(self, token: str | None):
        """The line under the sign-in form after an attempt: empty once signed in, else what went wrong in
        words (the refusal itself is also the page's message)."""
        if self.auth.user(token) is not None:
            return ""
        return notice_html("Not signed in: check the user name and the password, then press Sign in again.",
                           problem=True)

    def sign_out(self, token: str | None):
        self.auth.sign_out(token)
        return (None, "", "", gr.update(visible=True), gr.update(visible=False),
                gr.update(visible=False), gr.update(visible=True), gr.update(visible=False), gr.skip())


@dataclass
class PairState:
    """The pair on screen: what was served, when, its idempotency key and whom it was served to."""

    served: Any = None  # ServedComparison
    shown_at: float = 0.0
    key: str = ""
    user_id: int | None = None  # whom the pair was served to


@dataclass(frozen=True)
class Answers:
    """Answers on the screen's sides (left|right|tie|both_bad); None = not chosen."""

    overall: str | None = None
    strength: str | None = None
    texture: str | None = None
    artifacts: str | None = None
    identity: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def of_undone(cls, undone, served) -> Answers:
        """The answers of an undone vote (candidates A/B) on the sides where ``served`` shows them."""
        side = served.side_for_choice
        return cls(
            overall=side(undone.overall) if undone.overall else None, strength=undone.strength,
            texture=side(undone.texture) if undone.texture else None,
            artifacts=side(undone.artifacts) if undone.artifacts else None,
            identity={slot: side(v) for slot, v in (undone.identity or {}).items()},
        )


def _person(served, i: int) -> str:
    return served.subject_labels[i] or f"Person {i + 1}"


def _caption(served, i: int) -> str:
    ages = served.target_ages or ()
    age = ages[i] if i < len(ages) else None
    return _person(served, i) if age is None else f"{_person(served, i)} · age {age:g}"


def _prompt_html(served) -> str:
    """Task and prompt as escaped text: a visitor's Markdown or HTML is shown, never rendered or fetched."""
    task = "age transformation" if served.task == "age" else "group fusion"
    prompt = html.escape(served.prompt or "")
    # one line (the candidates stay on the first screen); a click shows the whole prompt
    return (f'<details class="annotate-prompt-text"><summary><b>Task:</b> {task} · '
            f"<b>Prompt:</b> {prompt}</summary></details>")


def _flag_hint(served) -> str:
    """The people whose apparent age (face analyzer) is far from their target age in image A or B, suggesting
    the wrong-age flag; escaped HTML, empty when there is nothing to suggest."""
    if served is None:
        return ""
    targets = served.target_ages or ()
    found = []
    for name, shown in (("A", served.left), ("B", served.right)):
        ages = shown.apparent_ages
        people = [f"{html.escape(_person(served, i))} looks {ages[i]:.0f} (target {targets[i]:g})"
                  for i in wrong_age_slots(ages, targets)]
        if people:
            found.append(f"in {name}, " + ", ".join(people))
    if not found:
        return ""
    return f'<p class="flag-hint">Face ages suggest <b>{WRONG_AGE_CHOICE}</b>: {"; ".join(found)}.</p>'


def _flag_hint_update(served) -> dict:
    hint = _flag_hint(served)
    return gr.update(value=hint, visible=bool(hint))


def _identity_question(served, i: int, positions: list[int] | None) -> str:
    """"Identity — the face in Anna's place (2nd from left)" where the prompt places the people."""
    if not positions or len(positions) < 2:
        return f"Identity of {_person(served, i)} (key {i + 1}, then a/b/t)"
    p = positions[i]
    nth = f"{p}{'th' if 10 <= p % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(p % 10, 'th')}"
    return f"Identity — the face in {_person(served, i)}'s place ({nth} from left) (key {i + 1}, then a/b/t)"


def _identity_updates(served, answers: Answers) -> list[dict]:
    n = served.num_subjects if served is not None else 0
    positions = typed_prompt_positions(served.prompt or "", served.subject_labels[:n]) if n else None
    return [gr.update(visible=i < n, value=answers.identity.get(i) if i < n else None,
                      label=_identity_question(served, i, positions) if i < n else None)
            for i in range(MAX_SUBJECTS)]


def _form(served, answers: Answers) -> list[dict]:
    """One update per choice: 6 identity radios, overall, strength, texture, artifacts, flag side, failure
    types, flag note."""
    return [*_identity_updates(served, answers), gr.update(value=answers.overall, label=OVERALL_LABEL),
            gr.update(value=answers.strength), gr.update(value=answers.texture), gr.update(value=answers.artifacts),
            gr.update(value=None), gr.update(value=[]), gr.update(value="")]


class AnnotateHandlers:
    """Outputs of ``show``/``vote``/``skip``/``undo``: refs gallery, left image, right image, prompt, progress,
    6 identity radios, overall, strength, texture, artifacts, flag side, failure types, flag note, flag status,
    flag hint, the pair state."""

    def __init__(self, service, auth, clock=time.monotonic):
        self.service = service
        self.auth = auth
        self.clock = clock

    def _user(self, token):
        return self.auth.require(token, Role.annotator, "annotate")

    def _show(self, user, note: str = "", undone=None):
        served = self.service.next_pair(user.id)
        progress = self.service.progress(user.id)
        text = f"{progress.votes} vote(s) by you · {progress.remaining} pair(s) left in the pool"
        if note:
            text = f"{note} · {text}"
        if served is None:
            return [gr.update(value=[]), None, None, "<p>No pair is waiting for you. Thank you!</p>", text,
                    *_form(None, Answers()), "", gr.update(value="", visible=False), notice_html(note),
                    PairState()]
        answers = (Answers.of_undone(undone, served)
                   if undone is not None and undone.comparison_id == served.comparison_id else Answers())
        refs = [(self.service.image_path(p), _caption(served, i))
                for i, p in enumerate(served.reference_paths) if p]
        state = PairState(served, self.clock(), uuid.uuid4().hex, user.id)
        return [gr.update(value=refs, columns=1 if len(refs) <= 2 else 2),
                self.service.image_path(served.left.image_path), self.service.image_path(served.right.image_path),
                _prompt_html(served), text, *_form(served, answers), "", _flag_hint_update(served),
                notice_html(note), state]

    @ui_errors
    def show(self, token: str | None):
        return self._show(self._user(token))

    @ui_errors
    def show_after_sign_in(self, token: str | None, pair: PairState | None = None):
        """``show`` after a sign-in (on any tab). Nothing changes when nobody is signed in or when this annotator's
        pair is already on screen: the answers being given on it stay."""
        user = self.auth.user(token)
        if user is None or (pair is not None and pair.served is not None and pair.user_id == user.id):
            return [gr.skip() for _ in range(SHOWN_OUTPUTS)]
        return self._show(user)

    @ui_errors
    def vote(self, token: str | None, pair: PairState | None, overall: str | None, strength: str | None,
             texture: str | None, artifacts: str | None, *identity: str | None):
        user = self._user(token)
        if pair is None or pair.served is None:
            return inline_problem("There is no pair to vote on; press Skip to load one.")
        if overall is None:  # said at the top and on the overall choice itself
            out = inline_problem("Choose A, B, tie or both bad first (keys a, b, t, x).")
            out[OVERALL_AT] = gr.update(label=OVERALL_MISSING)
            return out
        served = pair.served
        choice = served.choice_for_side
        ident = {i: choice(v) for i, v in enumerate(identity[: served.num_subjects]) if v}
        self.service.vote(
            user.id, served.comparison_id, overall=choice(overall),
            strength=strength if overall in ("left", "right") else None,
            identity=ident, texture=choice(texture) if texture else None,
            artifacts=choice(artifacts) if artifacts else None,
            duration_ms=min(int((self.clock() - pair.shown_at) * 1000), 24 * 3600 * 1000), key=pair.key,
        )
        return self._show(user, "Vote saved")

    @ui_errors
    def skip(self, token: str | None, pair: PairState | None):
        user = self._user(token)
        if pair is not None and pair.served is not None:
            self.service.skip(user.id, pair.served.comparison_id)
        return self._show(user, "Skipped")

    @ui_errors
    def undo(self, token: str | None, pair: PairState | None):
        """The last vote is deleted and its pair shown again with the answers it had. The pair that was on
        screen is left as it was (not skipped): it is served again after the undone one."""
        user = self._user(token)
        try:
            undone = self.service.undo(user.id)
        except UndoExpired as err:
            return inline_problem(f"Nothing to undo: {err}")
        return self._show(user, "Last vote undone", undone=undone)

    @ui_errors
    def flag(self, token: str | None, pair: PairState | None, side: str | None, failure_types, note: str):
        """Outputs: flag status, then a cleared flag form (side, failure types, note)."""
        user = self._user(token)
        if pair is None or pair.served is None:
            return inline_problem("There is no pair on screen to flag.", outputs=4, at=0)
        if side not in ("left", "right"):
            return inline_problem("Choose which image (A or B) to flag first (key a or b).", outputs=4, at=0)
        shown = pair.served.left if side == "left" else pair.served.right
        types = list(failure_types or [])
        self.service.flag(user.id, shown.candidate_id, types, note or "")
        names = ", ".join(failure_label(t) for t in types)
        return (f"Flagged image {'A' if side == 'left' else 'B'} as {names}.",
                gr.update(value=None), gr.update(value=[]), gr.update(value=""))
