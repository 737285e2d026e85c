"""The Research tab (signed-in researchers): counts, annotators, agreement, leaderboard, export."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from annotation.privacy.private_downloads import browser_id
from annotation.store.research import dpo_command
from annotation.ui.research_handlers import SIGNED_OUT_INTRO, ExportForm, ResearchHandlers


@dataclass
class ResearchTab:
    """The tab's content (shown to researchers), and how to fill it after a sign-in."""

    content: gr.Column
    handlers: ResearchHandlers
    token: gr.State
    outputs: list

    def load_after(self, event) -> None:
        """After ``event`` succeeds (a sign-in on any tab), show a researcher the overview at once."""
        event.success(self.handlers.show, [self.token], self.outputs, api_visibility="private",
                      concurrency_id="research", concurrency_limit=2, show_progress_on=[self.token])


def build_research_tab(handlers: ResearchHandlers, token: gr.State) -> ResearchTab:
    """The tab and its content column, shown after a researcher signs in (the handlers check the caller anyway)."""
    with gr.Tab("Research", id="research", elem_id="research-tab") as tab:
        intro = gr.Markdown(SIGNED_OUT_INTRO, elem_id="research-intro")
        with gr.Column(visible=False) as content:
            refresh = gr.Button("Refresh", elem_id="research-refresh")
            counts = gr.Markdown(elem_id="research-counts")
            leaderboard = gr.Dataframe(label="Model leaderboard (Bradley–Terry)", interactive=False, wrap=True,
                                       elem_id="research-leaderboard")
            board_notes = gr.Markdown(elem_id="research-leaderboard-notes")
            plot = gr.Plot(label="Scores with 95% intervals", elem_id="research-plot")
            with gr.Row(equal_height=False):
                with gr.Column(min_width=300):
                    annotators = gr.Dataframe(label="Annotators", interactive=False, wrap=True,
                                              elem_id="research-annotators")
                    annotator_notes = gr.Markdown(elem_id="research-annotator-notes")
                with gr.Column(min_width=300):
                    agreement = gr.Dataframe(label="Agreement", interactive=False, wrap=True,
                                             elem_id="research-agreement")
                    agreement_notes = gr.Markdown(elem_id="research-agreement-notes")
            gr.Markdown("### Export (the filters of `idglow export`)")
            with gr.Row():
                fmt = gr.Radio(["parquet", "jsonl"], value="parquet", label="Format", elem_id="export-format")
                with_images = gr.Checkbox(label="Embed images", value=True, elem_id="export-images")
                tie_policy = gr.Radio(["half", "drop"], value="half", label="Ties", elem_id="export-ties")
                min_votes = gr.Number(value=1, precision=0, minimum=1, label="Minimum votes", elem_id="export-min-votes")
                since = gr.Textbox(label="Voted since (UTC date, optional)", placeholder="2025-01-31",
                                   elem_id="export-since")
            export = gr.Button("Export", variant="primary", elem_id="export-run")
            files = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="export-files")
            command = dpo_command(served=getattr(handlers.service, "served", None))  # for the weights served here
            status = gr.Markdown("Export to see what the rows hold, the dataset card and the command that trains DPO "
                                 f"on the download:\n\n```bash\n{command}\n```", elem_id="export-status")

    form = dict(format=fmt, with_images=with_images, tie_policy=tie_policy, min_votes=min_votes, since=since)
    assert list(form) == ExportForm.names()

    def run_export(token_value, format, with_images, tie_policy, min_votes, since,  # noqa: A002 - API names
                   request: gr.Request):
        form = ExportForm(format, with_images, tie_policy, min_votes, since)
        return handlers.export(token_value, form, browser_id(getattr(request, "cookies", None)))

    outputs = [counts, annotators, agreement, leaderboard, plot, annotator_notes, agreement_notes, board_notes]
    opts = dict(concurrency_id="research", concurrency_limit=2)
    token.change(handlers.intro, [token], [intro], queue=False, api_visibility="private")
    # opening the tab shows a researcher the overview, and anybody else only the intro (no error)
    tab.select(handlers.show, [token], outputs, api_visibility="private", show_progress="hidden", **opts)
    refresh.click(handlers.refresh, [token], outputs, api_name="research_refresh", show_progress_on=[counts], **opts)
    export.click(run_export, [token, *form.values()], [files, status], api_name="export", show_progress_on=[status],
                 **opts)
    return ResearchTab(content, handlers, token, outputs)
