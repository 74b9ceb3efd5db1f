"""infra/: the Prefect deployment names the real flow with parameters it accepts on a valid schedule, and the
compose stack keeps every secret in the environment and every port on the loopback."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import load_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SECRET = re.compile(r"(password|secret|access_key|token|deid_key)", re.IGNORECASE)


def _yaml(name: str) -> Any:
    return yaml.safe_load((INFRA / name).read_text())


def test_prefect_yaml_deploys_retrain_with_its_parameters_on_a_valid_cron() -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    spec = _yaml("prefect.yaml")
    (deployment,) = spec["deployments"]
    path, _, name = deployment["entrypoint"].partition(":")
    flow = load_flow_from_entrypoint(f"{REPO / path}:{name}")
    assert flow.name == "retrain"
    signature = inspect.signature(flow.fn)
    params = deployment["parameters"]
    assert set(params) <= set(signature.parameters)
    required = {p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty}
    assert required <= set(params)
    assert params["skip_unchanged"] is True
    assert [CronSchedule(cron=s["cron"], timezone=s["timezone"]).cron for s in deployment["schedules"]] == ["0 2 * * *"]
    load_config(REPO / params["config"])  # the profile it runs validates
    (step,) = spec["pull"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == params["workspace"]
    assert deployment["work_pool"]["name"] == "medtune"
    worker = _yaml("compose.yaml")["services"]["prefect-worker"]["command"]
    assert worker[worker.index("--pool") + 1] == deployment["work_pool"]["name"]


def test_compose_stack_has_the_services_and_no_secret_in_the_file() -> None:
    stack = _yaml("compose.yaml")
    services = stack["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker"} <= set(services)
    for name, service in services.items():
        env = service.get("environment", {})
        for key, value in env.items():
            if SECRET.search(key) or "@" in str(value):
                assert "${" in str(value), f"{name}.{key} holds a literal secret"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the loopback"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--artifacts-destination s3://mlflow-artifacts/" in mlflow and "$$MLFLOW_BACKEND_STORE_URI" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "CREATE DATABASE prefect" in (INFRA / "postgres-init.sql").read_text()


def test_production_profile_points_at_the_stack() -> None:
    cfg = load_config(REPO / "configs" / "production.yaml")
    services = _yaml("compose.yaml")["services"]
    assert cfg.tracking.uri == "http://mlflow:5000" and "mlflow" in services
    assert cfg.dvc.remote == "s3" and cfg.dvc.s3 is not None
    assert cfg.dvc.s3.endpoint_url == "http://minio:9000" and "minio" in services
    bucket_job = " ".join(services["buckets"]["command"])
    assert f"stack/{cfg.dvc.s3.bucket}" in bucket_job
    text = (REPO / "configs" / "production.yaml").read_text()
    assert not re.search(r"^\s*\w*(password|secret)\w*\s*:", text, re.IGNORECASE | re.MULTILINE)


def test_schedule_refuses_a_bad_cron_before_starting_anything() -> None:
    from pipelines.schedule import check_cron

    check_cron("* * * * *")
    with pytest.raises(ValueError, match='Invalid cron string: "61 2 \\* \\* \\*"'):
        check_cron("61 2 * * *")
