"""``build_app``: the three tabs and the sign-in bar on one gr.Blocks, plus the queue and launch options."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from annotation.privacy import UploadLimits
from annotation.ui.annotate_handlers import AnnotateHandlers, SignInHandlers
from annotation.ui.annotate_tab import build_annotate_tab
from annotation.ui.generate_handlers import GenerateHandlers
from annotation.ui.generate_tab import build_generate_tab
from annotation.ui.research_handlers import ResearchHandlers
from annotation.ui.research_tab import build_research_tab
from annotation.ui.theme import CSS, SHORTCUTS_JS

# Gradio lets this many more generate calls reach the app than the generator's queue admits, so that a call
# beyond the queue's limits gets the app's own "busy, try again in …" at once instead of waiting in Gradio's queue.
REFUSAL_LANES = 4


@dataclass
class AppServices:
    """Everything the tabs call: built by the composition root (app.py) or by tests with fakes."""

    generation: object  # GenerationService
    annotation: object  # AnnotationService
    research: object  # ResearchService
    auth: object  # SessionAuth
    limits: UploadLimits = UploadLimits()
    banner: str = ""
    tiny: bool = True
    default_steps: int = 8
    default_size: int = 64
    concurrency: int = 1
    max_queue: int = 8


def build_app(services: AppServices) -> gr.Blocks:
    generate = GenerateHandlers(services.generation, services.limits, default_steps=services.default_steps,
                                default_size=services.default_size)
    sign_in = SignInHandlers(services.auth)
    with gr.Blocks(title="IdGlow", analytics_enabled=False) as demo:
        gr.Markdown("# IdGlow · group photos that keep everyone's identity")
        if services.banner:
            gr.Markdown(services.banner, elem_id="idglow-banner")
        token = gr.State(None)
        with gr.Accordion("Sign in (annotators and researchers)", open=False, elem_id="signin"):
            with gr.Row():
                username = gr.Textbox(label="User name", elem_id="signin-user")
                password = gr.Textbox(label="Password", type="password", elem_id="signin-password")
            with gr.Row():
                sign_in_btn = gr.Button("Sign in", variant="primary", elem_id="signin-run")
                sign_out_btn = gr.Button("Sign out", elem_id="signin-out")
            signed = gr.Markdown(elem_id="signin-status")
        with gr.Tabs():
            build_generate_tab(generate, services.generation.model_versions, tiny=services.tiny,
                               concurrency_limit=services.concurrency + services.max_queue + REFUSAL_LANES)
            annotate_tab = build_annotate_tab(AnnotateHandlers(services.annotation, services.auth), token)
            research_tab = build_research_tab(ResearchHandlers(services.research, services.auth), token)
        opts = dict(concurrency_id="signin", concurrency_limit=4)
        sign_in_btn.click(sign_in.sign_in, [username, password], [token, signed, password, annotate_tab, research_tab],
                          api_name="sign_in", **opts)
        password.submit(sign_in.sign_in, [username, password], [token, signed, password, annotate_tab, research_tab],
                        api_visibility="private", **opts)
        sign_out_btn.click(sign_in.sign_out, [token], [token, signed, annotate_tab, research_tab],
                           api_name="sign_out", **opts)
        demo.load(None, js=SHORTCUTS_JS)
    demo.queue(max_size=max(64, 4 * (services.concurrency + services.max_queue)), default_concurrency_limit=4)
    return demo


def launch_options(host: str, port: int, max_upload_mb: int) -> dict:
    """Keyword arguments of ``Blocks.launch``: never a share link, no analytics, uploads capped, raw uploads
    recorded and never served back (:class:`TempAreaGuard`)."""
    from starlette.middleware import Middleware

    from annotation.ui.file_guard import TempAreaGuard

    return dict(server_name=host, server_port=port, share=False, max_file_size=f"{max_upload_mb}mb",
                css=CSS, ssr_mode=False, footer_links=["api"], show_error=False, quiet=True,
                app_kwargs={"middleware": [Middleware(TempAreaGuard)]})
