"""Handlers of sign-in and the Annotate tab. The caller is checked on the server in every handler."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import gradio as gr

from annotation.errors import UndoExpired
from annotation.ui.errors import ui_errors
from db.models import Role
from idglow.subjects import MAX_SUBJECTS

OVERALL_CHOICES = [("A (left)", "left"), ("B (right)", "right"), ("Tie", "tie"), ("Both bad", "both_bad")]
PAIR_CHOICES = [("A", "left"), ("B", "right"), ("Same", "tie")]
STRENGTH_CHOICES = [("Slightly", "slight"), ("Clearly", "clear")]


class SignInHandlers:
    def __init__(self, auth):
        self.auth = auth

    @ui_errors
    def sign_in(self, username: str, password: str):
        """Returns (token, status, password field cleared, annotate content, research content)."""
        signed = self.auth.sign_in(username, password)
        user = signed.user
        researcher = user.role in (Role.researcher, Role.admin)
        status = f"Signed in as **{user.username}** ({user.role.value})."
        return signed.token, status, "", gr.update(visible=True), gr.update(visible=researcher)

    def sign_out(self, token: str | None):
        self.auth.sign_out(token)
        return None, "Signed out.", gr.update(visible=False), gr.update(visible=False)


@dataclass
class PairState:
    served: Any = None  # ServedComparison
    shown_at: float = 0.0
    key: str = ""


class AnnotateHandlers:
    """Outputs of ``show``: refs gallery, left image, right image, prompt, progress, 6 identity radios
    (visibility), then the reset choices (overall, strength, texture, artifacts), the pair state."""

    def __init__(self, service, auth, clock=time.monotonic):
        self.service = service
        self.auth = auth
        self.clock = clock

    def _user(self, token):
        return self.auth.require(token, Role.annotator, "annotate")

    def _show(self, user, note: str = ""):
        served = self.service.next_pair(user.id)
        progress = self.service.progress(user.id)
        text = f"{progress.votes} vote(s) by you · {progress.remaining} pair(s) left in the pool"
        if note:
            text = f"{note} · {text}"
        reset = [gr.update(value=None)] * 4
        if served is None:
            hidden = [gr.update(visible=False, value=None)] * MAX_SUBJECTS
            return [[], None, None, "No pair is waiting for you. Thank you!", text, *hidden, *reset, PairState()]
        refs = [(self.service.image_path(p), label or f"Person {i + 1}")
                for i, (p, label) in enumerate(zip(served.reference_paths, served.subject_labels)) if p]
        radios = [gr.update(visible=i < served.num_subjects, value=None,
                            label=f"Identity of {served.subject_labels[i] or f'Person {i + 1}'} (key {i + 1})"
                            if i < served.num_subjects else None)
                  for i in range(MAX_SUBJECTS)]
        task = "age transformation" if served.task == "age" else "group fusion"
        prompt = f"**Task:** {task}  \n**Prompt:** {served.prompt}"
        state = PairState(served, self.clock(), uuid.uuid4().hex)
        return [refs, self.service.image_path(served.left.image_path), self.service.image_path(served.right.image_path),
                prompt, text, *radios, *reset, state]

    @ui_errors
    def show(self, token: str | None):
        return self._show(self._user(token))

    @ui_errors
    def vote(self, token: str | None, pair: PairState | None, overall: str | None, strength: str | None,
             texture: str | None, artifacts: str | None, *identity: str | None):
        user = self._user(token)
        if pair is None or pair.served is None:
            raise gr.Error("There is no pair to vote on; press Skip to load one.", print_exception=False)
        if overall is None:
            raise gr.Error("Choose A, B, tie or both bad first.", print_exception=False)
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
        user = self._user(token)
        try:
            self.service.undo(user.id)
        except UndoExpired as err:
            raise gr.Error(f"Nothing to undo: {err}", print_exception=False) from None
        if pair is not None and pair.served is not None:  # the pair on screen goes back in the queue
            self.service.skip(user.id, pair.served.comparison_id)
        return self._show(user, "Last vote undone")

    @ui_errors
    def flag(self, token: str | None, pair: PairState | None, side: str | None, failure_types, note: str):
        user = self._user(token)
        if pair is None or pair.served is None:
            raise gr.Error("There is no pair on screen to flag.", print_exception=False)
        if side not in ("left", "right"):
            raise gr.Error("Choose which image (A or B) to flag.", print_exception=False)
        shown = pair.served.left if side == "left" else pair.served.right
        self.service.flag(user.id, shown.candidate_id, failure_types or [], note or "")
        return f"Flagged image {'A' if side == 'left' else 'B'} as {', '.join(failure_types)}."
