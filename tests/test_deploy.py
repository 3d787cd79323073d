"""The image, compose.yaml and every Kustomize overlay, against their schemas and the app itself.

Static: nothing is built or started here (``make image-test`` runs the image). The schemas come
from pinned dev dependencies (check-jsonschema's copy of the Compose specification,
kubernetes-validate's Kubernetes schemas), never from the network.
"""

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from app.main import app
from app.testing import routes

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "fastapi-di-sqlalchemy"
OVERLAYS = sorted(path.name for path in (ROOT / "deploy/k8s/overlays").iterdir())
KUBERNETES_VERSION = kubernetes_validate.latest_version()
SETTINGS = set(Settings.model_fields)
SECRET_SETTINGS = {"SECRET_KEY", "DATABASE_URL", "ASYNC_DATABASE_URL", "DATABASE_REPLICA_URLS"}
SECRET_SETTINGS |= {"WEBHOOK_SECRET", "WEBHOOK_URLS"}  # a webhook URL may carry a token
"""Settings that may hold a password: never a literal value in a manifest."""

Object = dict[str, Any]


def get_paths() -> set[str]:
    return {str(r.path) for r in routes.api_routes(app) if "GET" in (r.methods or ())}


def default(name: str) -> Any:
    return Settings.model_fields[name].default


# The image


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def image_uid() -> int:
    (user,) = [args for name, args in final_stage() if name == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: numeric, so that runAsNonRoot can check it"
    return int(uid)


def test_image_runs_app_serve_as_a_non_root_user_that_gets_sigterm() -> None:
    stage = dict(final_stage())
    assert image_uid() != 0
    assert json.loads(stage["ENTRYPOINT"]) == ["app"]  # exec form: app is PID 1
    assert json.loads(stage["CMD"])[:1] == ["serve"]
    assert "--port" not in stage["CMD"]  # PORT decides
    assert stage["STOPSIGNAL"] == "SIGTERM"
    assert "/health/live" in stage["HEALTHCHECK"]
    assert "/health/live" in get_paths()
    assert "PORT=8000" in stage["ENV"]
    assert default("PORT") == 8000


def test_image_database_is_in_the_volume_the_user_owns() -> None:
    stage = final_stage()
    env = dict(stage)["ENV"]
    volume = dict(stage)["VOLUME"]
    (url,) = re.findall(r"DATABASE_URL=(\S+)", env)
    assert url.startswith(f"sqlite:///{volume}/")
    assert any(name == "RUN" and f"chown {image_uid()}:" in args for name, args in stage)


def test_image_base_defaults_to_the_official_slim_python() -> None:
    (base,) = [args for name, args in dockerfile() if name == "ARG" and "BASE_IMAGE" in args]
    assert re.fullmatch(r"BASE_IMAGE=(docker\.io/library/)?python:3\.\d+-slim\S*", base)


def test_build_context_holds_no_secret_database_or_venv() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # only what is listed after it with "!" is sent
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert not {".env", "app.db", ".venv", ".git"} & set(allowed)
    assert "**/*.db" in ignore


# Compose


@cache
def compose() -> Object:
    document: Object = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def app_services() -> dict[str, Object]:
    return {n: s for n, s in compose()["services"].items() if s.get("image") == IMAGE}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def compose_schema() -> Object:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: Object = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def schema_errors(schema: Object, document: Object) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return sorted(f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document))


def test_compose_follows_the_compose_specification() -> None:
    assert schema_errors(compose_schema(), compose()) == []
    broken = {**compose(), "services": {"app": {"image": IMAGE, "ports": 8000}}}
    assert schema_errors(compose_schema(), broken) != []


def test_compose_app_environment_names_settings_only() -> None:
    assert set(app_services()) == {"app", "migrate", "worker"}
    for name, service in app_services().items():
        assert set(service["environment"]) <= SETTINGS, name


def test_compose_app_port_healthcheck_and_grace_period_match_the_app() -> None:
    service = compose()["services"]["app"]
    environment = service["environment"]
    port = environment["PORT"]
    assert [mapping.rsplit(":", 1)[1] for mapping in service["ports"]] == [port]
    check = " ".join(service["healthcheck"]["test"])
    (url,) = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", check)
    assert url == (port, "/health")
    assert url[1] in get_paths()
    drain = int(environment.get("TIMEOUT_GRACEFUL_SHUTDOWN", default("TIMEOUT_GRACEFUL_SHUTDOWN")))
    assert seconds(service["stop_grace_period"]) > drain
    assert service["read_only"] is True
    assert "user" not in service  # the image's non-root USER


def test_compose_migrates_before_the_app_starts() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["db", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"
    depends = services["app"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["pgbouncer"]["condition"] == "service_healthy"
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in str(services["pgbouncer"]["healthcheck"]["test"])
    # Straight to the server: migrations do not go through the transaction pool.
    assert "@postgres:" in services["migrate"]["environment"]["DATABASE_URL"]
    assert "@pgbouncer:" in services["app"]["environment"]["DATABASE_URL"]
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["depends_on"] == depends
    assert "@pgbouncer:" in services["worker"]["environment"]["DATABASE_URL"]


def check_pgbouncer(pgbouncer: dict[str, str], app_settings: dict[str, str]) -> None:
    """docs/postgresql.md: transaction pooling; prepared statements either handled by
    PgBouncer (1.22+, max_prepared_statements > 0) or off in psycopg; a queue timeout that
    answers an outage as fast as the app's own."""
    assert pgbouncer["POOL_MODE"] == "transaction"
    prepares = app_settings.get("DB_PREPARE_THRESHOLD", "5").lower() not in ("none", "null")
    assert not prepares or int(pgbouncer["MAX_PREPARED_STATEMENTS"]) > 0
    queue = float(app_settings.get("DB_QUEUE_TIMEOUT", default("DB_QUEUE_TIMEOUT")))
    assert abs(float(pgbouncer["QUERY_WAIT_TIMEOUT"]) - queue) <= 1


def test_compose_pgbouncer_settings_are_the_documented_ones() -> None:
    services = compose()["services"]
    check_pgbouncer(services["pgbouncer"]["environment"], services["app"]["environment"])
    tag = services["pgbouncer"]["image"].rsplit(":v", 1)[1]
    assert tuple(map(int, tag.split("-")[0].split(".")[:2])) >= (1, 22)


def test_env_example_names_every_variable_and_holds_no_secret() -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "compose.yaml").read_text()))
    assert used <= set(example)
    assert example["POSTGRES_PASSWORD"] == ""
    assert example["SECRET_KEY"] == ""
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0


# Kubernetes


@cache
def rendered(overlay: str) -> tuple[Object, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to render deploy/k8s")
        pytest.skip("kubectl is not installed")
    output = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy/k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return tuple(yaml.safe_load_all(output))


def kinds(overlay: str, kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}


def pod_specs(overlay: str) -> Iterator[Object]:
    for kind in ("Deployment", "Job"):
        for workload in kinds(overlay, kind).values():
            yield workload["spec"]["template"]["spec"]


def app_containers(pod: Object) -> list[Object]:
    every = [*pod.get("initContainers", []), *pod["containers"]]
    return [c for c in every if c["image"].split(":")[0] == IMAGE]


def api_container(overlay: str) -> Object:
    pod = kinds(overlay, "Deployment")["api"]["spec"]["template"]["spec"]
    api: list[Object] = [c for c in pod["containers"] if c["name"] == "api"]
    assert len(api) == 1
    return api[0]


def config_maps(overlay: str) -> dict[str, dict[str, str]]:
    return {name: o.get("data", {}) for name, o in kinds(overlay, "ConfigMap").items()}


def environment(overlay: str, container: Object) -> dict[str, Object]:
    """Every variable the container gets: from its config maps, then its own env."""
    variables: dict[str, Object] = {}
    for source in container.get("envFrom", []):
        assert "secretRef" not in source, "name each secret variable: the test checks names"
        data = config_maps(overlay)[source["configMapRef"]["name"]]
        variables.update({name: {"name": name, "value": value} for name, value in data.items()})
    variables.update({variable["name"]: variable for variable in container.get("env", [])})
    return variables


def setting(overlay: str, container: Object, name: str) -> Any:
    value = environment(overlay, container).get(name, {}).get("value")
    return default(name) if value is None else value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    for document in rendered(overlay):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    bad = {**kinds(overlay, "Service")["api"], "spek": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_env_names_settings_and_takes_secrets_from_a_secret(overlay: str) -> None:
    assert kinds(overlay, "Secret") == {}  # made outside git
    containers = [c for pod in pod_specs(overlay) for c in app_containers(pod)]
    assert containers
    for container in containers:
        variables = environment(overlay, container)
        assert set(variables) <= SETTINGS, container["name"]
        for name in SECRET_SETTINGS & set(variables):
            assert "secretKeyRef" in variables[name].get("valueFrom", {}), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_probes_are_routes_of_the_app(overlay: str) -> None:
    api = api_container(overlay)
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    assert ports == {"http": int(setting(overlay, api, "PORT"))}
    probes = {
        kind: api[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/health"
    assert probes["livenessProbe"]["path"] == "/health/live"
    for probe in probes.values():
        assert probe["path"] in get_paths()
        assert probe["port"] in ports
    service = kinds(overlay, "Service")["api"]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_grace_period_exceeds_the_drain(overlay: str) -> None:
    pod = kinds(overlay, "Deployment")["api"]["spec"]["template"]["spec"]
    api = api_container(overlay)
    pre_stop = api["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = int(setting(overlay, api, "TIMEOUT_GRACEFUL_SHUTDOWN"))
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_pods_are_non_root_read_only_and_unprivileged(overlay: str) -> None:
    for pod in pod_specs(overlay):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        if app_containers(pod):
            assert context["runAsUser"] == image_uid()
        assert pod["automountServiceAccountToken"] is False
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            own = container["securityContext"]
            assert own["allowPrivilegeEscalation"] is False
            assert own["readOnlyRootFilesystem"] is True
            assert own["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]["memory"]


def test_postgres_overlay_scales_out_behind_pgbouncer_and_migrates_in_a_job() -> None:
    deployment = kinds("postgres", "Deployment")["api"]
    assert deployment["spec"]["replicas"] > 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    api = api_container("postgres")
    assert {"DATABASE_URL", "DATABASE_REPLICA_URLS"} <= set(environment("postgres", api))
    hpa = kinds("postgres", "HorizontalPodAutoscaler")["api"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "api",
    }
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = kinds("postgres", "PodDisruptionBudget")["api"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (migrate,) = app_containers(kinds("postgres", "Job")["api-migrate"]["spec"]["template"]["spec"])
    assert migrate["args"] == ["db", "upgrade", "head"]
    assert environment("postgres", migrate)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    (pgbouncer,) = kinds("postgres", "Deployment")["pgbouncer"]["spec"]["template"]["spec"][
        "containers"
    ]
    (settings_name,) = [s["configMapRef"]["name"] for s in pgbouncer["envFrom"]]
    app_settings = {n: v.get("value", "") for n, v in environment("postgres", api).items()}
    check_pgbouncer(config_maps("postgres")[settings_name], app_settings)


def test_sqlite_single_overlay_is_one_pod_on_a_volume_migrated_before_it_serves() -> None:
    deployment = kinds("sqlite-single", "Deployment")["api"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert kinds("sqlite-single", "HorizontalPodAutoscaler") == {}
    assert kinds("sqlite-single", "Job") == {}
    pod = deployment["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    assert migrate["args"] == ["db", "upgrade", "head"]
    (claim,) = kinds("sqlite-single", "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in app_containers(pod):
        (data,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
        assert volumes[data["name"]]["persistentVolumeClaim"]["claimName"] == claim
        assert "DATABASE_URL" not in environment("sqlite-single", container)  # the image's
