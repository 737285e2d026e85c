"""Settings of the web app, from command-line flags with environment-variable fallbacks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from idglow.errors import InputError

DEFAULT_PORT = 7860
GENERATORS = ("local", "ray")


@dataclass(frozen=True)
class AppSettings:
    """Every setting of the web app, from flags and environment variables (see README's table)."""

    model_dir: str | None = None
    adapter_dir: str | None = None
    model_name: str | None = None
    faces: str = "dlib"
    face_root: str | None = None
    face_pack: str = "antelopev2"
    device: str | None = None
    db_url: str | None = None
    data_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    public: bool = False
    safety_model: str | None = None
    safety_threshold: float = 0.5
    blocklist_file: str | None = None
    retention_hours: float = 24.0
    sweep_minutes: float = 10.0
    concurrency: int = 1
    max_queue: int = 8
    max_per_visitor: int = 2
    max_upload_mb: int = 20
    max_pixels: int = 40_000_000
    export_minutes: float = 60.0
    generator: str = "local"
    ray_address: str | None = None
    ray_app: str = "idglow"

    def __post_init__(self) -> None:
        if self.public and not self.safety_model:
            raise InputError(
                "--public needs a safety checker: pass --safety-model DIR (a transformers image classifier "
                "saved in a local folder) or set IDGLOW_SAFETY_MODEL"
            )
        if not 0 < self.port < 65536:
            raise InputError(f"port {self.port} must be between 1 and 65535")
        if self.retention_hours <= 0:
            raise InputError(f"retention {self.retention_hours} h must be positive")
        if self.concurrency < 1 or self.max_queue < 0:
            raise InputError(f"need --concurrency >= 1 and --max-queue >= 0, got {self.concurrency}, {self.max_queue}")
        if self.max_per_visitor < 1:
            raise InputError(f"--max-per-visitor {self.max_per_visitor} must be at least 1")
        if not 0 < self.export_minutes <= 60:
            raise InputError(f"--export-minutes {self.export_minutes} must be above 0 and at most 60 (the sweeper "
                             "removes every served copy of a file after an hour)")
        if self.generator not in GENERATORS:
            raise InputError(f"--generator {self.generator!r}: choose local or ray")
        if self.generator == "ray" and not self.ray_address:
            raise InputError("--generator ray needs --ray-address HOST:PORT (or IDGLOW_RAY_ADDRESS), the head of the "
                             "Ray cluster where `idglow serve` deployed the generator")
        if not 1 <= self.max_upload_mb <= 200:
            raise InputError(f"--max-upload-mb {self.max_upload_mb} must be between 1 and 200")

    @property
    def is_tiny(self) -> bool:
        return self.model_dir is None

    @property
    def version_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.is_tiny:
            return "tiny-demo"
        return os.path.basename(os.path.normpath(self.adapter_dir or self.model_dir))

    @property
    def retention(self) -> timedelta:
        return timedelta(hours=self.retention_hours)


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_arg_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python app.py``, each naming its environment variable."""
    p = argparse.ArgumentParser(prog="app.py", description="IdGlow web app: Generate, Annotate and Research tabs.")
    g = p.add_argument_group("model (default: the embedded tiny demo model with dlib faces)")
    g.add_argument("--model", dest="model_dir", metavar="DIR", help="FLUX checkpoint folder [IDGLOW_MODEL_DIR]")
    g.add_argument("--adapter", dest="adapter_dir", metavar="DIR", help="IdGlow adapter folder [IDGLOW_ADAPTER_DIR]")
    g.add_argument("--model-name", metavar="NAME", help="name of the served base version [IDGLOW_MODEL_NAME]")
    g.add_argument("--faces", choices=["dlib", "insightface"], help="face backend [IDGLOW_FACES] (default dlib)")
    g.add_argument("--face-root", metavar="DIR", help="insightface: folder with models/<pack>/ [IDGLOW_FACE_ROOT]")
    g.add_argument("--face-pack", metavar="NAME", help="insightface pack [IDGLOW_FACE_PACK] (default antelopev2)")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    r = p.add_argument_group("generator (default: local, in this process)")
    r.add_argument("--generator", choices=GENERATORS,
                   help="local, or ray: the Ray Serve deployment of `idglow serve` [IDGLOW_GENERATOR]")
    r.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray cluster's head [IDGLOW_RAY_ADDRESS]")
    r.add_argument("--ray-app", metavar="NAME", help="the deployment's name, `idglow serve --name` [IDGLOW_RAY_APP] "
                                                    "(idglow)")
    s = p.add_argument_group("storage")
    s.add_argument("--db", dest="db_url", metavar="URL", help="SQLAlchemy URL [IDGLOW_DB_URL] (default: SQLite in the data dir)")
    s.add_argument("--data-dir", metavar="DIR", help="images, database and exports [IDGLOW_DATA_DIR] (default ./data)")
    s.add_argument("--retention-hours", type=float, help="uploads and outputs expire after this [IDGLOW_RETENTION_HOURS] (24)")
    s.add_argument("--export-minutes", type=float,
                   help="a researcher's export download is deleted after this [IDGLOW_EXPORT_MINUTES] (60)")
    w = p.add_argument_group("server")
    w.add_argument("--host", help="bind address [GRADIO_SERVER_NAME] (default 127.0.0.1; 0.0.0.0 with --public)")
    w.add_argument("--port", type=int, help=f"port [GRADIO_SERVER_PORT] (default {DEFAULT_PORT})")
    w.add_argument("--public", action="store_true", default=None,
                   help="serve to the public: needs --safety-model [IDGLOW_PUBLIC=1]")
    w.add_argument("--concurrency", type=int, help="generations run at once [IDGLOW_CONCURRENCY] (1)")
    w.add_argument("--max-queue", type=int, help="generations allowed to wait [IDGLOW_MAX_QUEUE] (8)")
    w.add_argument("--max-per-visitor", type=int,
                   help="generations one visitor may have running or waiting [IDGLOW_MAX_PER_VISITOR] (2)")
    w.add_argument("--max-upload-mb", type=int, help="largest accepted upload [IDGLOW_MAX_UPLOAD_MB] (20)")
    f = p.add_argument_group("safety")
    f.add_argument("--safety-model", metavar="DIR", help="transformers image classifier folder [IDGLOW_SAFETY_MODEL]")
    f.add_argument("--safety-threshold", type=float, help="flag at this score [IDGLOW_SAFETY_THRESHOLD] (0.5)")
    f.add_argument("--blocklist", dest="blocklist_file", metavar="FILE",
                   help="extra blocked prompt terms, one per line [IDGLOW_BLOCKLIST]")
    return p


_ENV = {
    "model_dir": "IDGLOW_MODEL_DIR", "adapter_dir": "IDGLOW_ADAPTER_DIR", "model_name": "IDGLOW_MODEL_NAME",
    "faces": "IDGLOW_FACES", "face_root": "IDGLOW_FACE_ROOT", "face_pack": "IDGLOW_FACE_PACK",
    "device": "IDGLOW_DEVICE", "db_url": "IDGLOW_DB_URL", "data_dir": "IDGLOW_DATA_DIR",
    "retention_hours": "IDGLOW_RETENTION_HOURS", "host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT",
    "concurrency": "IDGLOW_CONCURRENCY", "max_queue": "IDGLOW_MAX_QUEUE", "max_per_visitor": "IDGLOW_MAX_PER_VISITOR",
    "max_upload_mb": "IDGLOW_MAX_UPLOAD_MB", "export_minutes": "IDGLOW_EXPORT_MINUTES",
    "safety_model": "IDGLOW_SAFETY_MODEL", "safety_threshold": "IDGLOW_SAFETY_THRESHOLD",
    "blocklist_file": "IDGLOW_BLOCKLIST", "generator": "IDGLOW_GENERATOR", "ray_address": "IDGLOW_RAY_ADDRESS",
    "ray_app": "IDGLOW_RAY_APP",
}
_TYPES = {"retention_hours": float, "port": int, "concurrency": int, "max_queue": int, "max_per_visitor": int, "max_upload_mb": int,
          "safety_threshold": float, "export_minutes": float}


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AppSettings:
    """Flags win over environment variables, which win over the defaults."""
    environ = os.environ if environ is None else environ
    args = build_arg_parser().parse_args(argv)
    values = {}
    for name, env in _ENV.items():
        value = getattr(args, name)
        if value is None and environ.get(env):
            try:
                value = _TYPES.get(name, str)(environ[env])
            except ValueError:
                raise InputError(f"{env}={environ[env]!r} is not a valid {_TYPES[name].__name__}") from None
        if value is not None:
            values[name] = value
    public = bool(args.public) or _env_flag(environ.get("IDGLOW_PUBLIC"))
    if public and "host" not in values:
        values["host"] = "0.0.0.0"
    return AppSettings(public=public, **values)
