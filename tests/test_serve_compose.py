"""compose.yaml (app + Ray head + GPU worker + PostgreSQL) is checked by loading it: Compose keys, references
between services and volumes, variables, and the commands parsed by the real `idglow` and app parsers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "compose.yaml").read_text()
TOP_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {"image", "build", "environment", "volumes", "shm_size", "entrypoint", "command", "healthcheck",
                "restart", "depends_on", "deploy", "ports", "user", "working_dir", "networks", "env_file"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(TEXT)


def _head_address(compose) -> str:
    head = compose["services"]["ray-head"]["entrypoint"]
    port = next(a.split("=", 1)[1] for a in head if a.startswith("--port="))
    return f"ray-head:{port}"


def test_only_compose_keys_are_used(compose):
    assert set(compose) - TOP_KEYS == {"x-idglow"}
    for name, service in compose["services"].items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        assert "image" in service or "build" in service, name


def test_the_four_parts_and_the_deploy_job_are_there(compose):
    assert set(compose["services"]) == {"postgres", "ray-head", "gpu-worker", "serve", "app"}
    devices = compose["services"]["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "--num-gpus=0" in compose["services"]["ray-head"]["entrypoint"]


def test_references_between_services_and_volumes_resolve(compose):
    services, volumes = compose["services"], set(compose.get("volumes") or {})
    for name, service in services.items():
        for other, rule in (service.get("depends_on") or {}).items():
            assert other in services and rule["condition"] in CONDITIONS, (name, other)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[other], other
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in volumes, (name, source)


def test_every_variable_is_required_or_has_a_default():
    for match in re.finditer(r"\$\{([^}]*)\}", TEXT):
        assert re.fullmatch(r"[A-Z_]+(:\?.+|:-.*)", match.group(1)), match.group(0)


def test_the_image_has_ray_and_every_node_addresses_the_same_head(compose):
    assert "serve" in compose["x-idglow"]["build"]["args"]["IDGLOW_EXTRAS"].split(",")
    assert "ARG IDGLOW_EXTRAS" in (ROOT / "Dockerfile").read_text()
    address = _head_address(compose)
    assert f"--address={address}" in compose["services"]["gpu-worker"]["entrypoint"]
    assert compose["services"]["app"]["environment"]["IDGLOW_RAY_ADDRESS"] == address


def test_the_deploy_job_is_a_valid_idglow_serve_command(compose):
    from idglow.cli import build_parser
    from idglow.commands.serve import replica_plan

    entry = compose["services"]["serve"]["entrypoint"]
    assert entry[0] == "idglow"
    args = build_parser().parse_args(entry[1:])
    assert args.command == "serve" and args.ray_address == _head_address(compose)
    assert replica_plan(args, cluster_gpus=1).num_gpus == 1  # one replica per GPU of the worker


def test_the_app_service_parses_as_a_ray_front_end_on_postgresql(compose):
    from annotation.ui.settings import parse_settings

    app = compose["services"]["app"]
    environ = {k: str(v).replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "secret")
               for k, v in app["environment"].items()}
    settings = parse_settings(app["command"], environ)
    assert settings.generator == "ray" and settings.ray_address == _head_address(compose)
    assert settings.db_url.startswith("postgresql+psycopg://") and "@postgres:" in settings.db_url
    assert settings.data_dir == "/data" and settings.public


def test_the_ray_generator_needs_an_address_and_local_stays_the_default():
    from annotation.ui.settings import parse_settings

    assert parse_settings([], {}).generator == "local"
    with pytest.raises(ValueError, match="--ray-address"):
        parse_settings(["--generator", "ray"], {})
    with pytest.raises(ValueError, match="choose local or ray"):
        parse_settings([], {"IDGLOW_GENERATOR": "remote"})
