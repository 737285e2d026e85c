"""Domain errors become one-line ``gr.Error`` messages here, in the UI layer, and nowhere deeper."""

from __future__ import annotations

import functools
import html
import logging

import gradio as gr

from idglow.errors import IdGlowError

logger = logging.getLogger(__name__)


def ui_errors(fn):
    """Show domain errors (and input errors from the library) as one-line messages in the page."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (IdGlowError, ValueError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:
            logger.exception("%s failed", fn.__name__)
            raise gr.Error("something went wrong on the server; please try again", print_exception=False) from None

    return wrapper


def notice_html(text: str, *, problem: bool = False) -> str:
    """A line shown where the person acts: what just happened, or (``problem``) what to do first, in words.
    Escaped HTML; empty for no text. Mistakes in a form are said this way, never with Gradio's error state,
    which would cover the photos and the form."""
    if not text:
        return ""
    kind = "idglow-problem" if problem else "idglow-done"
    return f'<p class="{kind}" role="status">{html.escape(text)}</p>'
