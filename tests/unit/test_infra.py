"""infra/: the Prefect deployment names the real flow with parameters it accepts on a valid schedule; the compose
stack keeps every secret in the environment and every port on the loopback, runs MLflow and Prefect behind basic
auth with only medtune's promotion identity allowed to move an alias (issue 19), builds the worker on CPU torch by
default with its workspace on a named volume, and validates with ``docker compose config`` where Compose v2 is
installed; the production profile reads a hospital's DICOM source only."""

from __future__ import annotations

import configparser
import inspect
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from components.config import load_config
from components.data.sources.dicom import DicomSourceConfig

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SECRET = re.compile(r"(password|secret|access_key|token|deid_key|auth_string)", re.IGNORECASE)
REQUIRED = re.compile(r"\$\{(\w+):\?")  # ${VAR:?message}: compose refuses to start without VAR


def _required() -> set[str]:
    """The variables compose refuses to start without (comments left out)."""
    lines = (INFRA / "compose.yaml").read_text().splitlines()
    return {name for line in lines if not line.lstrip().startswith("#") for name in REQUIRED.findall(line)}


def _yaml(name: str) -> Any:
    return yaml.safe_load((INFRA / name).read_text())


def test_prefect_yaml_deploys_retrain_with_its_parameters_on_a_valid_cron() -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    spec = _yaml("prefect.yaml")
    (deployment,) = spec["deployments"]
    path, _, name = deployment["entrypoint"].partition(":")
    flow: Any = load_flow_from_entrypoint(f"{REPO / path}:{name}")
    assert flow.name == "retrain"
    signature = inspect.signature(flow.fn)
    params = deployment["parameters"]
    assert set(params) <= set(signature.parameters)
    required = {p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty}
    assert required <= set(params)
    assert params["skip_unchanged"] is True
    assert [CronSchedule(cron=s["cron"], timezone=s["timezone"]).cron for s in deployment["schedules"]] == ["0 2 * * *"]
    # the config is the workspace's copy of the repository's profile (`medtune init` copies configs/)
    config = Path(params["config"])
    assert config.is_relative_to(params["workspace"])
    load_config(REPO / config.relative_to(params["workspace"]))  # the profile it runs validates
    (step,) = spec["pull"]  # Prefect runs the entrypoint from the code in the image
    code = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert f"WORKDIR {code}" in (INFRA / "medtune.Dockerfile").read_text() and (REPO / path).is_file()
    assert deployment["work_pool"]["name"] == "medtune"
    worker = _yaml("compose.yaml")["services"]["prefect-worker"]
    assert worker["command"][worker["command"].index("--pool") + 1] == deployment["work_pool"]["name"]
    assert worker["environment"]["MEDTUNE_WORKSPACE"] == params["workspace"]


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


def test_production_profile_reads_a_hospitals_dicom_source_and_no_samples() -> None:
    prod = load_config(REPO / "configs" / "production.yaml")
    default = load_config(REPO / "configs" / "default.yaml")
    assert prod.data.sources, "the production profile names no source"
    assert not set(prod.data.sources) & set(default.data.sources)  # phantom, pydicom_samples
    for name, source in prod.data.sources.items():
        # a site's source is data/raw/<site>, which the ingest fills from the intake area data/intake/<site>
        assert isinstance(source, DicomSourceConfig), f"{name} is a {type(source).__name__}"
        path = cast(DicomSourceConfig, source).path
        assert path == f"{prod.data.raw}/{name}" and not Path(path).is_relative_to(prod.data.intake)
    assert prod.data.intake == "data/intake" and prod.data.deid.key_env == "MEDTUNE_DEID_KEY"
    assert not re.search(r"^\s*extends:", (REPO / "configs" / "production.yaml").read_text(), re.MULTILINE)


def test_worker_image_installs_cpu_torch_by_default_and_a_build_argument_selects_cuda() -> None:
    dockerfile = (INFRA / "medtune.Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", dockerfile, re.MULTILINE)
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/\$\{TORCH_VARIANT\}$", dockerfile, re.M)
    # torch from that index at the lock's pin (read from constraints.txt), before the lock is installed
    assert '--index-url "$TORCH_INDEX" "$(grep -m1 \'^torch==\' constraints.txt)"' in dockerfile
    assert dockerfile.index('--index-url "$TORCH_INDEX"') < dockerfile.index("RUN make setup")
    pins = {line for line in (REPO / "constraints.txt").read_text().splitlines() if line.startswith("torch==")}
    assert pins == {"torch==2.13.0"} and "torch==2.13.0" in (REPO / "requirements-lock.txt").read_text().split()
    assert "endswith('+$TORCH_VARIANT')" in dockerfile  # the build fails if torch was swapped for another build
    build = _yaml("compose.yaml")["services"]["prefect-worker"]["build"]
    assert build["dockerfile"] == "infra/medtune.Dockerfile"
    assert build["args"]["TORCH_VARIANT"] == "${TORCH_VARIANT:-cpu}"
    entrypoint = INFRA / "worker-entrypoint.sh"
    assert '["/opt/medtune/infra/worker-entrypoint.sh"]' in dockerfile and os.access(entrypoint, os.X_OK)
    # the workspace is made on the first start, with data/raw: no embedded samples are placed in its intake
    assert "medtune init" in entrypoint.read_text() and 'mkdir -p "$ws/data/raw"' in entrypoint.read_text()


def test_worker_workspace_and_state_live_on_named_volumes() -> None:
    stack = _yaml("compose.yaml")
    worker = stack["services"]["prefect-worker"]
    mounts = dict(str(v).split(":", 1) for v in worker["volumes"])
    assert mounts["workspace"] == worker["environment"]["MEDTUNE_WORKSPACE"] == "/workspace"
    assert mounts["state"] == worker["environment"]["MEDTUNE_HOME"]
    assert {"workspace", "state"} <= set(stack["volumes"])  # named volumes, not bind mounts


def _ini() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(INFRA / "mlflow" / "basic_auth.ini")
    return parser["mlflow"]


def test_mlflow_runs_basic_auth_where_only_the_promotion_identity_may_move_aliases() -> None:
    services = _yaml("compose.yaml")["services"]
    mlflow, bootstrap, worker = services["mlflow"], services["mlflow-auth"], services["prefect-worker"]
    assert "mlflow server --app-name basic-auth " in " ".join(mlflow["command"])
    ini = _ini()
    # READ for everyone without a grant: SetRegisteredModelAlias needs can_update, so the UI's users get a 403
    assert ini["default_permission"] == "READ"
    assert "admin_password" not in ini  # the admin's password comes from the environment
    auth_db = urllib.parse.urlsplit(ini["database_uri"])
    assert auth_db.scheme == "postgresql" and auth_db.password is None and auth_db.hostname in services
    assert f"CREATE DATABASE {auth_db.path.lstrip('/')} " in (INFRA / "postgres-init.sql").read_text()
    env = mlflow["environment"]
    image = (INFRA / "mlflow.Dockerfile").read_text()
    assert '"mlflow[auth]==3.17.2"' in image and "COPY infra/mlflow/basic_auth.ini" in image  # Flask-WTF for the app
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert env["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SERVER_SECRET_KEY:?")
    # the bootstrap sets up the model and experiment the production profile uses, as the admin
    cmd = bootstrap["command"]
    cfg = load_config(REPO / "configs" / "production.yaml")
    assert cmd[:2] == ["python", "/etc/mlflow/bootstrap_auth.py"]
    assert cmd[cmd.index("--model") + 1] == cfg.registry.name
    assert cmd[cmd.index("--experiment") + 1] == cfg.tracking.experiment
    assert bootstrap["environment"]["MLFLOW_TRACKING_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert bootstrap["depends_on"]["mlflow"]["condition"] == "service_healthy"
    # the worker runs as the identity the bootstrap made, once it is made
    for key in ("USERNAME", "PASSWORD"):
        assert worker["environment"][f"MLFLOW_TRACKING_{key}"] == bootstrap["environment"][f"MEDTUNE_MLFLOW_{key}"]
    assert worker["depends_on"]["mlflow-auth"]["condition"] == "service_completed_successfully"


def test_bootstrap_grants_what_alias_moves_need_in_mlflow_317() -> None:
    """MANAGE, because MLflow 3.17 asks can_update for SetRegisteredModelAlias and can_delete for
    DeleteRegisteredModelAlias (``set_alias(..., None)`` removes champion on a rollback); READ has neither. Read from
    the auth app's source: importing it needs Flask-WTF, which only the server needs."""
    import importlib.util

    import mlflow

    auth = Path(mlflow.__file__).parent / "server" / "auth"
    spec = importlib.util.spec_from_file_location("mlflow_auth_permissions", auth / "permissions.py")
    assert spec is not None and spec.loader is not None
    permissions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(permissions)
    MANAGE, READ = permissions.MANAGE, permissions.READ
    source = (auth / "__init__.py").read_text()
    wired = dict(re.findall(r"^    (\w+RegisteredModelAlias): (\w+),$", source, re.MULTILINE))
    assert wired == {"SetRegisteredModelAlias": "validate_can_set_model_or_prompt_version_alias",
                     "DeleteRegisteredModelAlias": "validate_can_delete_model_or_prompt_version_alias"}  # fmt: skip
    for check, needs in (("set", "update"), ("delete", "delete")):
        body = source.split(f"def validate_can_{check}_model_or_prompt_version_alias() -> bool:\n", 1)[1]
        assert body.split("\n", 1)[0] == (
            f"    return _validate_can_{needs}_registered_model_or_prompt() and _alias_version_requirement_met()"
        )
    assert MANAGE.can_update and MANAGE.can_delete and not READ.can_update and not READ.can_delete
    script = (INFRA / "mlflow" / "bootstrap_auth.py").read_text()
    assert 'ensure_grant(auth, who, "registered_model", model, "MANAGE")' in script


def test_prefect_server_and_its_clients_share_basic_auth() -> None:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_SERVER_API_AUTH_STRING

    services = _yaml("compose.yaml")["services"]
    server = services["prefect-server"]["environment"][PREFECT_SERVER_API_AUTH_STRING.name]
    client = services["prefect-worker"]["environment"][PREFECT_API_AUTH_STRING.name]
    assert server == client and server.startswith("${PREFECT_API_AUTH_STRING:?")


def test_stack_env_example_lists_every_required_variable_and_holds_no_secret() -> None:
    example: dict[str, str] = {}
    for line in (INFRA / "stack.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    required = _required()
    assert required <= set(example), f"not in stack.env.example: {sorted(required - set(example))}"
    for key, value in example.items():
        if SECRET.search(key):
            assert value == "", f"stack.env.example holds a value for {key}"


def _compose() -> list[str] | None:
    """Compose v2: the docker CLI plugin, else the standalone binary; None when neither is installed."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2."):
            return cmd
    return None


def test_compose_file_validates_with_docker_compose_config(tmp_path: Path) -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("Docker Compose v2 is not installed (neither `docker compose` nor `docker-compose` v2)")
    required = sorted(_required())
    env_file = tmp_path / "stack.env"
    env_file.write_text("".join(f"{key}=dummy-{key.lower()}\n" for key in required))
    # `config` only parses and interpolates: no Docker daemon is needed
    env = {k: v for k, v in os.environ.items() if k not in required and not k.startswith("COMPOSE_")}
    cmd = [*compose, "-f", str(INFRA / "compose.yaml"), "--env-file", str(env_file), "config", "--format", "json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    services = resolved["services"]
    assert "--app-name" in " ".join(services["mlflow"]["command"])
    assert services["prefect-worker"]["environment"]["PREFECT_API_AUTH_STRING"] == "dummy-prefect_api_auth_string"
    assert services["mlflow-auth"]["environment"]["MLFLOW_READER_USERNAME"] == ""  # optional, empty by default
    # and a missing secret stops it, naming the variable
    env_file.write_text("".join(f"{key}=x\n" for key in required if key != "MLFLOW_ADMIN_PASSWORD"))
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode != 0 and "MLFLOW_ADMIN_PASSWORD" in missing.stderr
