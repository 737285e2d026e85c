"""``build_app``: the three tabs and the sign-in bar on one gr.Blocks, plus the queue and launch options."""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from annotation.privacy.private_downloads import DEFAULT_DOWNLOAD_TTL_S, PrivateDownloads
from annotation.privacy.uploads import UploadLimits, UploadRegistry
from annotation.ui.annotate_handlers import AnnotateHandlers, SignInHandlers
from annotation.ui.annotate_tab import AnnotateTab, build_annotate_tab
from annotation.ui.generate_handlers import GenerateHandlers
from annotation.ui.generate_tab import build_generate_tab
from annotation.ui.research_handlers import ResearchHandlers
from annotation.ui.research_tab import build_research_tab
from annotation.ui.theme import CSS, SHORTCUTS_JS


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
    export_ttl_s: float = DEFAULT_DOWNLOAD_TTL_S  # a researcher's export download is deleted after this
    uploads: UploadRegistry = field(default_factory=UploadRegistry)  # raw uploads in the web server's temp area
    downloads: PrivateDownloads = field(default_factory=PrivateDownloads)  # researchers' private export copies


def build_app(services: AppServices) -> gr.Blocks:
    """The whole page: banner, sign-in panel and the Generate, Annotate and Research tabs wired to ``services``."""
    generate = GenerateHandlers(services.generation, services.limits, default_steps=services.default_steps,
                                default_size=services.default_size, uploads=services.uploads)
    sign_in = SignInHandlers(services.auth)
    with gr.Blocks(title="IdGlow", analytics_enabled=False) as demo:
        gr.Markdown("# IdGlow · group photos that keep everyone's identity", elem_id="idglow-title")
        if services.banner:
            gr.Markdown(services.banner, elem_id="idglow-banner")
        token = gr.State(None)
        signin = _sign_in_panel()
        with gr.Tabs():
            build_generate_tab(generate, services.generation.model_versions, tiny=services.tiny)
            annotate_tab = build_annotate_tab(AnnotateHandlers(services.annotation, services.auth), token)
            research_tab = build_research_tab(
                ResearchHandlers(services.research, services.auth, services.downloads,
                                 download_ttl_s=services.export_ttl_s), token)
        _wire_sign_in(sign_in, signin, token, annotate_tab, research_tab)
        demo.load(None, js=SHORTCUTS_JS)
    demo.queue(max_size=max(64, 4 * (services.concurrency + services.max_queue)), default_concurrency_limit=4)
    return demo


@dataclass
class SignInPanel:
    """The sign-in form and the signed-in bar that replaces it."""

    username: gr.Textbox
    password: gr.Textbox
    run: gr.Button
    form: gr.Accordion  # shown while signed out
    bar: gr.Row  # "Signed in as NAME · Sign out", shown while signed in
    status: gr.Markdown
    sign_out: gr.Button


def _sign_in_panel() -> SignInPanel:
    with gr.Accordion("Sign in (annotators and researchers)", open=False, elem_id="signin") as form:
        with gr.Row():
            username = gr.Textbox(label="User name", elem_id="signin-user")
            password = gr.Textbox(label="Password", type="password", elem_id="signin-password")
        run = gr.Button("Sign in", variant="primary", elem_id="signin-run")
    with gr.Row(visible=False, elem_id="signin-bar") as bar:
        status = gr.Markdown(elem_id="signin-status")
        sign_out = gr.Button("Sign out", size="sm", scale=0, min_width=100, elem_id="signin-out")
    return SignInPanel(username, password, run, form, bar, status, sign_out)


def _wire_sign_in(handlers: SignInHandlers, panel: SignInPanel, token: gr.State, annotate_tab: AnnotateTab,
                  research_tab: gr.Column) -> None:
    """Sign-in collapses the panel to the signed-in bar and loads the annotator's pair; sign-out reverses it."""
    opts = dict(concurrency_id="signin", concurrency_limit=4)
    toggled = [panel.form, panel.bar, annotate_tab.content, annotate_tab.intro, research_tab]
    signed_in = [token, panel.status, panel.password, *toggled]
    by_button = panel.run.click(handlers.sign_in, [panel.username, panel.password], signed_in, api_name="sign_in",
                                **opts)
    by_enter = panel.password.submit(handlers.sign_in, [panel.username, panel.password], signed_in,
                                     api_visibility="private", **opts)
    for event in (by_button, by_enter):
        annotate_tab.load_after(event)
    panel.sign_out.click(handlers.sign_out, [token], [token, panel.status, panel.password, *toggled],
                         api_name="sign_out", **opts)


def launch_options(host: str, port: int, max_upload_mb: int, services: AppServices,
                   max_per_visitor: int = 2) -> dict:
    """Keyword arguments of ``Blocks.launch``: never a share link, no analytics, uploads capped, raw uploads
    recorded in ``services.uploads`` and never served back, private downloads served to their browser only
    (:class:`TempAreaGuard`), request sizes and calls per client bounded at the edge (:class:`EdgeGuard`)."""
    from starlette.middleware import Middleware

    from annotation.ui.edge_guard import EdgeGuard, EdgeLimits
    from annotation.ui.route_guard import TempAreaGuard

    # The app refuses files over max_upload_mb itself, in plain words; the web server's own limit (whose message
    # is "exceed the maximum allowed size") is only a backstop for much larger files.
    return dict(server_name=host, server_port=port, share=False, max_file_size=f"{4 * max_upload_mb}mb",
                css=CSS, ssr_mode=False, footer_links=["api"], show_error=False, quiet=True,
                app_kwargs={"middleware": [Middleware(EdgeGuard, limits=EdgeLimits.for_upload_mb(max_upload_mb,
                                                                                           max_per_visitor)),
                                           Middleware(TempAreaGuard, registry=services.uploads,
                                                      downloads=services.downloads)]})
