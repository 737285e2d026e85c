"""Handlers of sign-in and the Annotate tab. The caller is checked on the server in every handler.

Every pair is shown with a fresh form: ``_form`` builds one ``gr.update`` per output, with the answers to show
(none, or those of an undone vote). Text that visitors wrote (prompt, labels) is escaped, never rendered.
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from annotation.generation.service import typed_prompt_positions
from annotation.store.errors import UndoExpired
from annotation.store.votes import FAILURE_TYPES
from annotation.ui.errors import notice_html, ui_errors
from db.models import Role
from idglow import preferences
from idglow.preferences import Question
from idglow.prompting.badcases import wrong_age_slots
from idglow.subjects import MAX_SUBJECTS

OVERALL_LABEL = "Overall: which group photo is better?"
FLAG_SIDE_CHOICES = [("A [a]", "left"), ("B [b]", "right")]


def failure_label(name: str) -> str:
    """The human-readable name of a taxonomy failure type: identity_swap → 'Identity swap'."""
    return name.replace("_", " ").capitalize()


# shown with their number key; the stored value stays the taxonomy name
FAILURE_CHOICES = [(f"{failure_label(name)} [{i + 1}]", name) for i, name in enumerate(FAILURE_TYPES)]
WRONG_AGE_CHOICE = next(text for text, name in FAILURE_CHOICES if name == "wrong_age")  # as the flag form shows it
# How the form shows a declared question (``idglow.preferences``): its label and the text of its choices, in
# choice order. A question not listed is shown with its declared label and choices. Each choice shows its key in
# brackets and a question answered after a prefix key says so in its label, both from the declared keys; the keys
# themselves are handled in the page (``annotation.ui.theme.shortcuts_js``).
FORM_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "overall": (OVERALL_LABEL, ("A better", "B better", "Tie", "Both bad")),
    "strength": ("By how much?", ("Slightly", "Clearly")),
    "texture": ("Better texture", ("A", "B", "Same")),
    "artifacts": ("Fewer artifacts", ("A", "B", "Same")),
    "identity": ("Identity of person", ("A", "B", "Same")),
}
_SCREEN_SIDE = {"a": "left", "b": "right"}


def screen_value(value: str) -> str:
    """The form's value for the stored answer ``value``: candidates A and B are the screen sides left and right."""
    return _SCREEN_SIDE.get(value, value)


def key_hint(question: Question, person: int | None = None) -> str:
    """How to answer ``question`` (for ``person``, 0-based) by keyboard when it takes more than one key:
    "key y, then a/b/t", "key 2, then a/b/t"; empty when its keys are pressed alone or it has none."""
    if not question.keys:
        return ""
    first = [question.prefix_key] if question.prefix_key else []
    if question.per_person and person is not None:
        first.append(str(person + 1))
    if not first:
        return ""
    return f"key{'s' if len(first) > 1 else ''} {', '.join(first)}, then {'/'.join(question.keys)}"


def form_label(question: Question) -> str:
    """The label the form gives ``question`` (with its key hint for a per-pair question after a prefix key)."""
    label = FORM_TEXT.get(question.name, (question.label, None))[0]
    hint = "" if question.per_person else key_hint(question)
    return f"{label} ({hint})" if hint else label


def form_choices(question: Question) -> list[tuple[str, str]]:
    """The (text, value) choices of ``question`` on the form, each text with its key; a choice of candidate A or B
    is a screen side."""
    texts = FORM_TEXT[question.name][1] if question.name in FORM_TEXT else [c.label for c in question.choices]
    keys = question.keys or ("",) * len(question.choices)
    return [(f"{text} [{key}]" if key else text, screen_value(c.value))
            for text, key, c in zip(texts, keys, question.choices)]


def missing_primary_text() -> str:
    """What the form says when the required question (overall) is left unanswered: its choices and keys."""
    main = preferences.primary()
    names = [c.label if c.value in ("a", "b") else c.label.lower() for c in main.choices]
    keys = f" (keys {', '.join(main.keys)})" if main.keys else ""
    return f"Choose {', '.join(names[:-1])} or {names[-1]} first{keys}"


def answer_elem_id(name: str) -> str:
    """The element id of the answer widget ``name`` (``identity_0`` → ``annotate-identity-0``)."""
    return f"annotate-{name.replace('_', '-')}"


def answer_names(question: Question) -> list[str]:
    """The names of the widgets answering ``question``: its name, or ``{name}_{slot}`` per person."""
    return [f"{question.name}_{i}" for i in range(MAX_SUBJECTS)] if question.per_person else [question.name]


def form_names() -> list[str]:
    """The names of every answer widget, in declaration order."""
    return [name for q in preferences.declared() for name in answer_names(q)]


def shown_names() -> list[str]:
    """The names of the outputs of ``show``/``vote``/``skip``/``undo``."""
    return ["refs", "left", "right", "prompt", "progress", *form_names(), "flag_side", "flag_types", "flag_note",
            "flag_status", "flag_hint", "notice", "pair"]


def inline_problem(text: str, outputs: int = 4, at: int = 0) -> list:
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


def undone_answers(undone, served) -> dict[str, Any]:
    """The answers of an undone vote (candidates A/B) by widget name, on the sides where ``served`` shows
    them."""
    side = served.side_for_choice
    out: dict[str, Any] = {}
    for question in preferences.declared():
        value = undone.answers.get(question.name)
        if value is None:
            continue
        if question.per_person:
            out.update({f"{question.name}_{slot}": side(v) for slot, v in value.items()})
        else:
            out[question.name] = side(value)
    return out


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
        return f"Identity of {_person(served, i)}"
    p = positions[i]
    nth = f"{p}{'th' if 10 <= p % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(p % 10, 'th')}"
    return f"Identity — the face in {_person(served, i)}'s place ({nth} from left)"


def _person_question(question: Question, served, i: int, positions: list[int] | None) -> str:
    """The label of ``question`` for person ``i``, with the keys that answer it."""
    if question.name == "identity":
        text = _identity_question(served, i, positions)
    else:
        text = f"{form_label(question)} — {_person(served, i)}"
    hint = key_hint(question, i)
    return f"{text} ({hint})" if hint else text


def _person_updates(question: Question, served, answers: Mapping[str, Any]) -> dict[str, dict]:
    n = served.num_subjects if served is not None else 0
    positions = typed_prompt_positions(served.prompt or "", served.subject_labels[:n]) if n else None
    return {name: gr.update(visible=i < n, value=answers.get(name) if i < n else None,
                            label=_person_question(question, served, i, positions) if i < n else None)
            for i, name in enumerate(answer_names(question))}


def _form(served, answers: Mapping[str, Any]) -> dict[str, dict]:
    """One update per choice, by widget name: every declared question's widgets, then the flag form (side,
    failure types, note)."""
    out: dict[str, dict] = {}
    for question in preferences.declared():
        if question.per_person:
            out.update(_person_updates(question, served, answers))
        else:
            out[question.name] = gr.update(value=answers.get(question.name), label=form_label(question))
    return {**out, "flag_side": gr.update(value=None), "flag_types": gr.update(value=[]),
            "flag_note": gr.update(value="")}


def _vote_answers(served, given: Mapping[str, Any]) -> dict[str, Any]:
    """The answers on screen (by widget name) as answers by question name in terms of candidates A and B;
    unanswered questions, people not in the group, and a grade of an answer it does not apply to left out."""
    choice = served.choice_for_side
    main = preferences.primary()
    answers: dict[str, Any] = {}
    for question in preferences.declared():
        if question is main:
            continue
        if question.per_person:
            slots = {i: choice(v) for i, name in enumerate(answer_names(question)[: served.num_subjects])
                     if (v := given.get(name))}
            if slots:
                answers[question.name] = slots
        elif given.get(question.name):
            answers[question.name] = choice(given[question.name])
    for name in [n for n in answers if preferences.by_name()[n].grades]:
        question = preferences.by_name()[name]
        graded = choice(given.get(question.grades) or "") if question.grades == main.name else answers.get(
            question.grades)
        if graded not in question.grades_values:
            del answers[name]
    return answers


class AnnotateHandlers:
    """``show``/``vote``/``skip``/``undo`` answer by output name (``shown_names``): refs gallery, left image,
    right image, prompt, progress, the answer widgets of every declared question, flag side, failure types,
    flag note, flag status, flag hint, notice, the pair state. An output left out stays as it is on screen."""

    def __init__(self, service, auth, clock=time.monotonic):
        self.service = service
        self.auth = auth
        self.clock = clock

    def _user(self, token):
        return self.auth.require(token, Role.annotator, "annotate")

    def _show(self, user, note: str = "", undone=None) -> dict[str, Any]:
        served = self.service.next_pair(user.id)
        progress = self.service.progress(user.id)
        text = f"{progress.votes} vote(s) by you · {progress.remaining} pair(s) left in the pool"
        if note:
            text = f"{note} · {text}"
        if served is None:
            return {"refs": gr.update(value=[]), "left": None, "right": None,
                    "prompt": "<p>No pair is waiting for you. Thank you!</p>", "progress": text, **_form(None, {}),
                    "flag_status": "", "flag_hint": gr.update(value="", visible=False), "notice": notice_html(note),
                    "pair": PairState()}
        answers = (undone_answers(undone, served)
                   if undone is not None and undone.comparison_id == served.comparison_id else {})
        refs = [(self.service.image_path(p), _caption(served, i))
                for i, p in enumerate(served.reference_paths) if p]
        state = PairState(served, self.clock(), uuid.uuid4().hex, user.id)
        return {"refs": gr.update(value=refs, columns=1 if len(refs) <= 2 else 2),
                "left": self.service.image_path(served.left.image_path),
                "right": self.service.image_path(served.right.image_path), "prompt": _prompt_html(served),
                "progress": text, **_form(served, answers), "flag_status": "", "flag_hint": _flag_hint_update(served),
                "notice": notice_html(note), "pair": state}

    @ui_errors
    def show(self, token: str | None):
        return self._show(self._user(token))

    @ui_errors
    def show_after_sign_in(self, token: str | None, pair: PairState | None = None):
        """``show`` after a sign-in (on any tab). Nothing changes (no output) when nobody is signed in or when this
        annotator's pair is already on screen: the answers being given on it stay."""
        user = self.auth.user(token)
        if user is None or (pair is not None and pair.served is not None and pair.user_id == user.id):
            return {}
        return self._show(user)

    @ui_errors
    def vote(self, token: str | None, pair: PairState | None, answers: Mapping[str, Any]):
        """Record the answers on screen, by widget name (``form_names``: screen sides left|right|tie|both_bad,
        and grades such as strength)."""
        user = self._user(token)
        if pair is None or pair.served is None:
            return {"notice": notice_html("There is no pair to vote on; press Skip to load one.", problem=True)}
        main = preferences.primary()
        overall = answers.get(main.name)
        if overall is None:  # said at the top and on the overall choice itself
            missing = missing_primary_text()
            return {"notice": notice_html(f"{missing}.", problem=True),
                    main.name: gr.update(label=f"{main.name.capitalize()}: {missing[0].lower()}{missing[1:]}")}
        served = pair.served
        self.service.vote(
            user.id, served.comparison_id, overall=served.choice_for_side(overall),
            answers=_vote_answers(served, answers),
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
            return {"notice": notice_html(f"Nothing to undo: {err}", problem=True)}
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
