"""The Annotate tab (signed-in annotators): references above candidates A and B, keyboard-driven votes."""

from __future__ import annotations

import gradio as gr

from annotation.ui.annotate_handlers import OVERALL_CHOICES, PAIR_CHOICES, STRENGTH_CHOICES, AnnotateHandlers
from annotation.ui.theme import GUIDELINES_MD, SHORTCUTS_MD
from annotation.votes import FAILURE_TYPES
from idglow.subjects import MAX_SUBJECTS


def build_annotate_tab(handlers: AnnotateHandlers, token: gr.State) -> gr.Column:
    """The tab's content column, shown after an annotator signs in (the handlers check the caller anyway)."""
    with gr.Tab("Annotate") as tab:
        pair = gr.State(None)
        gr.Markdown("Annotators: sign in above to judge pairs of candidates.")
        with gr.Column(visible=False) as content:
            with gr.Accordion("Guidelines", open=False):
                gr.Markdown(GUIDELINES_MD)
            gr.Markdown(SHORTCUTS_MD, elem_classes=["idglow-shortcuts"])
            hint = gr.Markdown(elem_id="shortcut-hint")  # noqa: F841 - filled by the shortcut script
            progress = gr.Markdown(elem_id="annotate-progress")
            prompt = gr.Markdown(elem_id="annotate-prompt")
            refs = gr.Gallery(label="The people (references)", columns=6, height=180, elem_id="annotate-refs",
                              interactive=False)
            with gr.Row():
                left = gr.Image(label="A", elem_id="annotate-left", interactive=False, type="filepath", height=360)
                right = gr.Image(label="B", elem_id="annotate-right", interactive=False, type="filepath", height=360)
            with gr.Row():
                overall = gr.Radio(OVERALL_CHOICES, label="Overall: which group photo is better?",
                                   elem_id="annotate-overall")
                strength = gr.Radio(STRENGTH_CHOICES, label="By how much?", elem_id="annotate-strength")
            with gr.Row():
                identity = [gr.Radio(PAIR_CHOICES, label=f"Identity of person {i + 1}", visible=False,
                                     elem_id=f"annotate-identity-{i}") for i in range(MAX_SUBJECTS)]
            with gr.Row():
                texture = gr.Radio(PAIR_CHOICES, label="Better texture", elem_id="annotate-texture")
                artifacts = gr.Radio(PAIR_CHOICES, label="Fewer artifacts", elem_id="annotate-artifacts")
            with gr.Row():
                submit = gr.Button("Submit vote (Enter)", variant="primary", elem_id="annotate-submit")
                skip = gr.Button("Skip (k)", elem_id="annotate-skip")
                undo = gr.Button("Undo last vote (u)", elem_id="annotate-undo")
            with gr.Accordion("Flag a bad image", open=False):
                side = gr.Radio([("A", "left"), ("B", "right")], label="Image", elem_id="flag-side")
                types = gr.CheckboxGroup(list(FAILURE_TYPES), label="Failure types", elem_id="flag-types")
                note = gr.Textbox(label="Note (optional)", elem_id="flag-note")
                flag = gr.Button("Flag", elem_id="flag-run")
                flag_status = gr.Markdown(elem_id="flag-status")

    shown = [refs, left, right, prompt, progress, *identity, overall, strength, texture, artifacts, pair]
    opts = dict(concurrency_id="annotate", concurrency_limit=16)
    tab.select(handlers.show, [token], shown, api_name="annotate_show", **opts)
    submit.click(handlers.vote, [token, pair, overall, strength, texture, artifacts, *identity], shown,
                 api_name="vote", **opts)
    skip.click(handlers.skip, [token, pair], shown, api_name="skip", **opts)
    undo.click(handlers.undo, [token, pair], shown, api_name="undo", **opts)
    flag.click(handlers.flag, [token, pair, side, types, note], [flag_status], api_name="flag", **opts)
    return content
