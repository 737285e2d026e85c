"""``build_app``: the three tabs and the sign-in bar on one gr.Blocks, plus the queue and launch options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from annotation.privacy.private_downloads import DEFAULT_DOWNLOAD_TTL_S, PrivateDownloads
from annotation.privacy.uploads import UploadLimits, UploadRegistry
from annotation.ui.annotate_handlers import TAB_IDS, AnnotateHandlers, SignInHandlers
from annotation.ui.annotate_tab import AnnotateTab, build_annotate_tab
from annotation.ui.generate_handlers import GenerateHandlers
from annotation.ui.generate_tab import build_generate_tab
from annotation.ui.research_handlers import ResearchHandlers
from annotation.ui.research_tab import ResearchTab, build_research_tab
from annotation.ui.theme import CLEAR_TOASTS_JS, CSS, shortcuts_js


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
    closers: list[Callable[[], None]] = field(default_factory=list)  # what `close` ends, in order

    def close(self) -> None:
        """End what the services started besides the web server (the replica follower, the Ray client process,
        the face analysis process); safe to call twice."""
        while self.closers:
            self.closers.pop(0)()


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
        with gr.Tabs(elem_id="idglow-tabs") as tabs:
            build_generate_tab(generate, services.generation.model_versions, tiny=services.tiny)
            annotate_tab = build_annotate_tab(AnnotateHandlers(services.annotation, services.auth), token)
            research_tab = build_research_tab(
                ResearchHandlers(services.research, services.auth, services.downloads,
                                 download_ttl_s=services.export_ttl_s), token)
        _wire_sign_in(sign_in, signin, token, annotate_tab, research_tab, tabs)
        demo.load(None, js=shortcuts_js())
        demo.unload(generate.page_closed)  # a visitor who leaves stops their generation and frees its place
    demo.queue(max_size=max(64, 4 * (services.concurrency + services.max_queue)), default_concurrency_limit=4)
    return demo


def _selected_tab(evt: gr.SelectData) -> str:
    index = evt.index if isinstance(evt.index, int) else 0
    return TAB_IDS[index] if 0 <= index < len(TAB_IDS) else TAB_IDS[0]


def _tab_on_screen(tabs: gr.Tabs) -> gr.State:
    """A per-page state holding the id of the tab on screen (``generate`` until another is opened)."""
    on_tab = gr.State(TAB_IDS[0])
    tabs.select(_selected_tab, None, on_tab, queue=False, api_visibility="private", show_progress="hidden")
    return on_tab


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
    notice: gr.HTML


def _sign_in_panel() -> SignInPanel:
    with gr.Accordion("Sign in (annotators and researchers)", open=False, elem_id="signin") as form:
        with gr.Row():
            username = gr.Textbox(label="User name", elem_id="signin-user")
            password = gr.Textbox(label="Password", type="password", elem_id="signin-password")
        run = gr.Button("Sign in", variant="primary", elem_id="signin-run")
        notice = gr.HTML(elem_id="signin-notice", padding=False)  # what went wrong, in words, under the form
    with gr.Row(visible=False, elem_id="signin-bar") as bar:
        status = gr.Markdown(elem_id="signin-status")
        sign_out = gr.Button("Sign out", size="sm", scale=0, min_width=100, elem_id="signin-out")
    return SignInPanel(username, password, run, form, bar, status, sign_out, notice)


def _wire_sign_in(handlers: SignInHandlers, panel: SignInPanel, token: gr.State, annotate_tab: AnnotateTab,
                  research_tab: ResearchTab, tabs: gr.Tabs) -> None:
    """Sign-in collapses the panel to the signed-in bar, takes the person from Generate to their tab and fills
    the Annotate and Research tabs; sign-out reverses it. Gradio's progress and error state stay off the page: a
    refusal is the page's message plus a line under the form."""
    # Gradio's state (a spinner, or an "Error" badge on a refusal) goes on the token, which has nothing to show:
    # nothing on the page is covered ("hidden" would still put the badge on the password box)
    opts = dict(concurrency_id="signin", concurrency_limit=4, show_progress_on=[token])
    on_tab = _tab_on_screen(tabs)
    toggled = [panel.form, panel.bar, annotate_tab.content, annotate_tab.intro, research_tab.content]
    signed_in = [token, panel.status, panel.password, *toggled, tabs]
    inputs = [panel.username, panel.password, on_tab]
    by_button = panel.run.click(handlers.sign_in, inputs, signed_in, api_name="sign_in", **opts)
    by_enter = panel.password.submit(handlers.sign_in, inputs, signed_in, api_visibility="private", **opts)
    for event in (by_button, by_enter):
        for after in (event.success, event.failure):  # (a .then() is not run after a refusal)
            after(handlers.after_attempt, [token], [panel.notice], api_visibility="private", **opts)
        event.success(None, js=CLEAR_TOASTS_JS)  # no "wrong password" message left from an earlier attempt
        annotate_tab.load_after(event)
        research_tab.load_after(event)
    panel.sign_out.click(handlers.sign_out, [token], [token, panel.status, panel.password, *toggled, tabs],
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
