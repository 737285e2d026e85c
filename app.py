"""IdGlow web app: ``python app.py [--model DIR --adapter DIR] [--public --safety-model DIR] ...``.

The composition root: read the settings, build the services, build the tabs, launch. No logic lives here.
With no configuration it serves the embedded tiny demo model with dlib faces and SQLite under ./data.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
logger = logging.getLogger("idglow.app")


def configure_logging() -> None:
    """Warnings and errors of every library, INFO of the app's own; without transformers' torchvision notice
    (the same filter as the ``idglow`` command's)."""
    from idglow.cli import quiet_torchvision_fallback

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("idglow", "annotation"):
        logging.getLogger(name).setLevel(logging.INFO)
    quiet_torchvision_fallback()


def main(argv: list[str] | None = None) -> int:
    """Start the app with ``argv`` (the command line when None); returns the exit code."""
    from annotation.ui.settings import parse_settings
    from idglow.errors import IdGlowError

    configure_logging()
    try:
        settings = parse_settings(argv)
        from annotation.ui.wiring import build_services

        services, sweeper = build_services(settings)
    except IdGlowError as err:
        print(f"idglow: error: {err}", file=sys.stderr)
        return 2
    from annotation.ui.blocks import build_app, launch_options

    demo = build_app(services)
    sweeper.start()
    logger.info("serving model versions: %s", ", ".join(services.generation.model_versions()))
    print(f"IdGlow on http://{settings.host}:{settings.port}", flush=True)
    try:
        demo.launch(**launch_options(settings.host, settings.port, settings.max_upload_mb, services,
                                     settings.max_per_visitor))
    finally:
        sweeper.stop()
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
