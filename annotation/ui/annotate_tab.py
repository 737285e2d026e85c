"""The Annotate tab (signed-in annotators): references beside candidates A and B, keyboard-driven votes.

Laid out so that at 1366×768 the two candidates and the overall vote fit the first screen; the shortcut legend,
the flag form and the guidelines follow below.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from annotation.ui.annotate_handlers import (
    FAILURE_CHOICES,
    FLAG_SIDE_CHOICES,
    OVERALL_CHOICES,
    OVERALL_LABEL,
    PAIR_CHOICES,
    STRENGTH_CHOICES,
    AnnotateHandlers,
)
from annotation.ui.theme import FOCUS_PAIR_JS, GUIDELINES_MD, SHORTCUTS_MD
from idglow.subjects import MAX_SUBJECTS

IMAGE_HEIGHT = "56vh"  # each candidate at least ~55% of the viewport height
EVENTS = dict(concurrency_id="annotate", concurrency_limit=16)
# Gradio's progress and error state go on the notice beside the buttons only: they never cover the pair or a form.
NOTICE = -2


@dataclass
class AnnotateTab:
    """The tab's widgets that sign-in and sign-out change, and how to load a pair after sign-in."""

    content: gr.Column
    intro: gr.Markdown
    shown: list
    handlers: AnnotateHandlers
    token: gr.State

    def load_after(self, event) -> None:
        """After ``event`` succeeds (a sign-in), show the annotator's pair and move the focus to it."""
        event.success(self.handlers.show_after_sign_in, [self.token, self.shown[-1]], self.shown, api_visibility="private",
                      show_progress_on=[self.shown[NOTICE]], **EVENTS).success(None, js=FOCUS_PAIR_JS)


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


def build_annotate_tab(handlers: AnnotateHandlers, token: gr.State) -> AnnotateTab:
    """The Annotate tab; its content is shown after sign-in (the handlers check the caller anyway)."""
    with gr.Tab("Annotate", id="annotate", elem_id="annotate-tab") as tab:
        pair = gr.State(None)
        intro = gr.Markdown("Annotators: sign in above to judge pairs of candidates.", elem_id="annotate-intro")
        with gr.Column(visible=False, elem_id="annotate-content") as content:
            with gr.Row(elem_id="annotate-head"):
                prompt = gr.HTML(elem_id="annotate-prompt", scale=3, padding=False)
                # every key's answer, kept up to date in the page (SHORTCUTS_JS), right above the candidates
                gr.HTML(elem_id="answer-summary", padding=False)
                # what just happened ("Vote saved") or what to do first, on the first screen
                notice = gr.HTML(elem_id="annotate-notice", padding=False)
                progress = gr.Markdown(elem_id="annotate-progress")
            refs, left, right = _pair_row()
            with gr.Row(elem_id="annotate-votes"):
                overall = gr.Radio(OVERALL_CHOICES, label=OVERALL_LABEL,
                                   elem_id="annotate-overall", scale=3)
                strength = gr.Radio(STRENGTH_CHOICES, label="By how much?", elem_id="annotate-strength", scale=2)
                with gr.Column(scale=2, min_width=200):
                    submit = gr.Button("Submit vote [Enter]", variant="primary", elem_id="annotate-submit")
                    with gr.Row():
                        skip = gr.Button("Skip [k]", size="sm", elem_id="annotate-skip")
                        undo = gr.Button("Undo last [u]", size="sm", elem_id="annotate-undo")
            gr.Markdown(elem_id="shortcut-hint")  # filled by the shortcut script
            with gr.Row():
                identity = [gr.Radio(PAIR_CHOICES, label=f"Identity of person {i + 1}", visible=False,
                                     elem_id=f"annotate-identity-{i}") for i in range(MAX_SUBJECTS)]
            with gr.Row():
                texture = gr.Radio(PAIR_CHOICES, label="Better texture (key y, then a/b/t)", elem_id="annotate-texture")
                artifacts = gr.Radio(PAIR_CHOICES, label="Fewer artifacts (key r, then a/b/t)",
                                     elem_id="annotate-artifacts")
            side, types, note, flag, flag_status, flag_hint = _flag_form()
            gr.Markdown(SHORTCUTS_MD, elem_classes=["idglow-shortcuts"])
            with gr.Accordion("Guidelines", open=False):
                gr.Markdown(GUIDELINES_MD)
            reload = gr.Button("Reload pair", visible=False, elem_id="annotate-reload")

    shown = [refs, left, right, prompt, progress, *identity, overall, strength, texture, artifacts,
             side, types, note, flag_status, flag_hint, notice, pair]
    # Selecting the tab only moves the focus to the pair: the sign-in already showed it, and a second reply
    # that lists the answers as outputs would race with the keys being pressed.
    tab.select(None, js=FOCUS_PAIR_JS)
    on_notice = dict(show_progress_on=[notice], **EVENTS)
    reload.click(handlers.show, [token], shown, api_name="annotate_show", **on_notice)
    submit.click(handlers.vote, [token, pair, overall, strength, texture, artifacts, *identity], shown,
                 api_name="vote", **on_notice)
    skip.click(handlers.skip, [token, pair], shown, api_name="skip", **on_notice)
    undo.click(handlers.undo, [token, pair], shown, api_name="undo", **on_notice)
    flag.click(handlers.flag, [token, pair, side, types, note], [flag_status, side, types, note], api_name="flag",
               show_progress_on=[flag_status], **EVENTS)
    return AnnotateTab(content, intro, shown, handlers, token)
