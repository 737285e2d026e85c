"""The Annotate tab (signed-in annotators): references beside candidates A and B, keyboard-driven votes.

Laid out so that at 1366×768 the two candidates and the overall vote fit the first screen; the shortcut legend,
the flag form and the guidelines follow below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr

from annotation.ui.annotate_handlers import (
    FAILURE_CHOICES,
    FLAG_SIDE_CHOICES,
    AnnotateHandlers,
    answer_elem_id,
    answer_names,
    form_choices,
    form_label,
    form_names,
    shown_names,
)
from annotation.ui.theme import FOCUS_PAIR_JS, GUIDELINES_MD, shortcuts_md
from idglow import preferences

IMAGE_HEIGHT = "56vh"  # each candidate at least ~55% of the viewport height
EVENTS = dict(concurrency_id="annotate", concurrency_limit=16)


def by_component(widgets: dict[str, Any], fn):
    """Wrap a handler answering by output name into one answering by component (outputs it leaves out stay)."""
    @functools.wraps(fn)
    def wrapper(*args):
        return {widgets[name]: value for name, value in fn(*args).items()}

    return wrapper


@dataclass
class AnnotateTab:
    """The tab's widgets that sign-in and sign-out change, and how to load a pair after sign-in. ``widgets``:
    every output of the pair by name (``shown_names``)."""

    content: gr.Column
    intro: gr.Markdown
    widgets: dict[str, Any]
    handlers: AnnotateHandlers
    token: gr.State

    @property
    def shown(self) -> list:
        """The outputs of the pair, in the order of ``shown_names``."""
        return [self.widgets[name] for name in shown_names()]

    def load_after(self, event) -> None:
        """After ``event`` succeeds (a sign-in), show the annotator's pair and move the focus to it."""
        # Gradio's progress and error state go on the notice beside the buttons only: never over the pair or a form
        event.success(by_component(self.widgets, self.handlers.show_after_sign_in),
                      [self.token, self.widgets["pair"]], self.shown, api_visibility="private",
                      show_progress_on=[self.widgets["notice"]], **EVENTS).success(None, js=FOCUS_PAIR_JS)


def _pair_row():
    with gr.Row(elem_id="annotate-pair", equal_height=True):
        refs = gr.Gallery(label="The people", show_label=False, columns=1, height=IMAGE_HEIGHT, object_fit="contain",
                          allow_preview=False, interactive=False, buttons=[], scale=1, min_width=150,
                          elem_id="annotate-refs")
        left = gr.Image(label="A", elem_id="annotate-left", interactive=False, type="filepath",
                        height=IMAGE_HEIGHT, buttons=[], scale=3, min_width=320)
        right = gr.Image(label="B", elem_id="annotate-right", interactive=False, type="filepath",
                         height=IMAGE_HEIGHT, buttons=[], scale=3, min_width=320)
    return refs, left, right


def _flag_form():
    # Always mounted: Gradio renders a closed accordion's content only when it opens, so keys pressed right after
    # opening one would reach inputs that are not there yet.
    with gr.Group(elem_id="flag-box"):
        gr.Markdown("**Flag a bad image** · key <kbd>f</kbd>, then <kbd>a</kbd>/<kbd>b</kbd>, number keys, "
                    "<kbd>Enter</kbd>", elem_id="flag-title")
        # what the people's apparent ages suggest flagging (hidden when nothing)
        hint = gr.HTML(elem_id="flag-hint", padding=False, visible=False)
        with gr.Row():
            side = gr.Radio(FLAG_SIDE_CHOICES, label="Image (a/b)", elem_id="flag-side", scale=1)
            types = gr.CheckboxGroup(FAILURE_CHOICES, label="Failure types (number keys)", elem_id="flag-types",
                                     scale=4)
        with gr.Row():
            note = gr.Textbox(label="Note (optional)", elem_id="flag-note", scale=4)
            flag = gr.Button("Flag [Enter]", elem_id="flag-run", scale=1)
        status = gr.Markdown(elem_id="flag-status")
    return side, types, note, flag, status, hint


def _answer_widget(question, name: str, **kwargs):
    return gr.Radio(form_choices(question), label=form_label(question), elem_id=answer_elem_id(name), **kwargs)


def _vote_row(w: dict[str, Any]) -> None:
    """The primary question and its grades beside the buttons."""
    main = preferences.primary()
    with gr.Row(elem_id="annotate-votes"):
        for question in preferences.declared():
            if question is main or question.grades == main.name:
                w[question.name] = _answer_widget(question, question.name, scale=3 if question is main else 2)
        with gr.Column(scale=2, min_width=200):
            w["submit"] = gr.Button("Submit vote [Enter]", variant="primary", elem_id="annotate-submit")
            with gr.Row():
                w["skip"] = gr.Button("Skip [k]", size="sm", elem_id="annotate-skip")
                w["undo"] = gr.Button("Undo last [u]", size="sm", elem_id="annotate-undo")


def _question_rows(w: dict[str, Any]) -> None:
    """Per-person questions (one widget per person, shown for the people of the pair), then the other ones."""
    main = preferences.primary()
    for question in [q for q in preferences.declared() if q.per_person]:
        with gr.Row():
            for name in answer_names(question):
                w[name] = _answer_widget(question, name, visible=False)
    with gr.Row():
        for question in preferences.declared():
            if not question.per_person and question is not main and question.grades != main.name:
                w[question.name] = _answer_widget(question, question.name)


def build_annotate_tab(handlers: AnnotateHandlers, token: gr.State) -> AnnotateTab:
    """The Annotate tab; its content is shown after sign-in (the handlers check the caller anyway). The answer
    widgets are built from the declared questions (``idglow.preferences``); events pass them by name."""
    w: dict[str, Any] = {}
    with gr.Tab("Annotate", id="annotate", elem_id="annotate-tab") as tab:
        w["pair"] = gr.State(None)
        intro = gr.Markdown("Annotators: sign in above to judge pairs of candidates.", elem_id="annotate-intro")
        with gr.Column(visible=False, elem_id="annotate-content") as content:
            with gr.Row(elem_id="annotate-head"):
                w["prompt"] = gr.HTML(elem_id="annotate-prompt", scale=3, padding=False)
                # every key's answer, kept up to date in the page (theme.shortcuts_js), right above the candidates
                gr.HTML(elem_id="answer-summary", padding=False)
                # what just happened ("Vote saved") or what to do first, on the first screen
                w["notice"] = gr.HTML(elem_id="annotate-notice", padding=False)
                w["progress"] = gr.Markdown(elem_id="annotate-progress")
            w["refs"], w["left"], w["right"] = _pair_row()
            _vote_row(w)
            gr.Markdown(elem_id="shortcut-hint")  # filled by the shortcut script
            _question_rows(w)
            (w["flag_side"], w["flag_types"], w["flag_note"], flag, w["flag_status"],
             w["flag_hint"]) = _flag_form()
            gr.Markdown(shortcuts_md(), elem_classes=["idglow-shortcuts"])
            with gr.Accordion("Guidelines", open=False):
                gr.Markdown(GUIDELINES_MD)
            reload = gr.Button("Reload pair", visible=False, elem_id="annotate-reload")

    annotate = AnnotateTab(content, intro, w, handlers, token)
    _wire(annotate, tab, reload, flag)
    return annotate


def _wire(annotate: AnnotateTab, tab, reload, flag) -> None:
    w, handlers, token, shown = annotate.widgets, annotate.handlers, annotate.token, annotate.shown
    names = form_names()

    def vote(token_value, pair, *answers):
        return handlers.vote(token_value, pair, dict(zip(names, answers)))

    # Selecting the tab only moves the focus to the pair: the sign-in already showed it, and a second reply
    # that lists the answers as outputs would race with the keys being pressed.
    tab.select(None, js=FOCUS_PAIR_JS)
    on_notice = dict(show_progress_on=[w["notice"]], **EVENTS)
    pair = w["pair"]
    reload.click(by_component(w, handlers.show), [token], shown, api_name="annotate_show", **on_notice)
    w["submit"].click(by_component(w, vote), [token, pair, *[w[n] for n in names]], shown, api_name="vote",
                      **on_notice)
    w["skip"].click(by_component(w, handlers.skip), [token, pair], shown, api_name="skip", **on_notice)
    w["undo"].click(by_component(w, handlers.undo), [token, pair], shown, api_name="undo", **on_notice)
    flag.click(handlers.flag, [token, pair, w["flag_side"], w["flag_types"], w["flag_note"]],
               [w["flag_status"], w["flag_side"], w["flag_types"], w["flag_note"]], api_name="flag",
               show_progress_on=[w["flag_status"]], **EVENTS)
