"""The deployment files are valid before anyone deploys them: linted, schema-checked and consistent.

Nothing here needs a Docker engine, a cluster, Prometheus or Grafana, or the network. Each file goes
through the validator of its format (hadolint; the Compose Specification's JSON schema and the
compose_spec parser; the Kubernetes API schemas bundled in kubernetes-validate; promtool, from the
prometheus package `make system-deps` installs), then through the checks that tie the files together:
service names, ports, worker URLs, and the metric names the dashboard queries.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyOptions

from service.metrics.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "powerserve.json"
K8S = DEPLOY / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
DOCKERFILES = [ROOT / "Dockerfile", *sorted((DEPLOY / "docker").glob("*.Dockerfile"))]

# The oldest Kubernetes release still in common support, and the newest the package knows.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
ROUTES = ("plain", "power", "distilled")


# --- helpers ---------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """A command-line tool installed with the test dependencies: beside this interpreter first (the
    virtual environment's bin/ is not always on PATH), then on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; it comes with the project's dev dependencies")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def with_defaults(value: str) -> str:
    """Compose interpolation as with an empty environment: ``${NAME:-default}`` becomes ``default``."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


@cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def worker_services() -> list[str]:
    return sorted(name for name in services() if name.startswith("worker-"))


def one_shot(service: dict[str, Any]) -> bool:
    """A job that runs to completion (model-init), not a server."""
    return service.get("restart") == "no"


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Repository path -> container path, for the service's bind mounts of repository files."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[source[2:]] = target
    return mounts


@cache
def kustomization() -> dict[str, Any]:
    found: dict[str, Any] = load_yaml(KUSTOMIZATION)
    return found


def k8s_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in kustomization()["resources"]:
        for doc in load_yaml_documents(K8S / name):
            yield name, doc


def k8s_resource(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_resources():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {KUSTOMIZATION}")


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in k8s_resources():
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]


@cache
def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return found


def graph_panels() -> list[dict[str, Any]]:
    """Every panel that draws something: rows only group them."""
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in graph_panels() for target in panel["targets"]]


# PromQL keywords and constants, which look like metric names to the tokeniser below.
_NOT_METRICS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
    | {"offset", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are neither functions nor
    aggregations (followed by a parenthesis), keywords, label names nor label values."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range windows
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _NOT_METRICS:
            continue
        names.add(match.group())
    return names


_SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series(family_name: str, family_type: str) -> set[str]:
    """The series names Prometheus scrapes for one metric family (prometheus_client reports a
    counter's family name without its ``_total``)."""
    return {family_name + suffix for suffix in _SERIES_SUFFIXES.get(family_type, ("",))}


def gateway_series() -> dict[str, set[str]]:
    """Each metric family of service/metrics/registry.py -> the series names it exports."""
    return {family.name: exported_series(family.name, family.type) for family in REGISTRY.collect()}


# --- Dockerfiles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    """Every finding, down to `style`, fails (.hadolint.yaml names the rules that are off, and why)."""
    result = run(tool("hadolint"), "--config", ".hadolint.yaml", "--no-color", str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_runs_unprivileged_with_a_healthcheck(dockerfile: Path) -> None:
    """The final stage sets a numeric non-root user (Kubernetes' runAsNonRoot can only verify a
    number), a HEALTHCHECK on /health and a command; hadolint checks none of these."""
    final_stage = re.split(r"^FROM ", dockerfile.read_text(), flags=re.MULTILINE)[-1]
    users = re.findall(r"^USER (\S+)", final_stage, flags=re.MULTILINE)
    assert users, "no USER in the final stage"
    assert re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]), users[-1]
    assert re.search(r"^HEALTHCHECK .*/health", final_stage, flags=re.MULTILINE | re.DOTALL)
    assert re.search(r'^CMD \["powerserve", "(serve|worker)"', final_stage, flags=re.MULTILINE)


def test_build_context_is_an_allowlist() -> None:
    """The virtual environment, git history and .env secrets never reach the build context."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!service/", "!constraints/"} <= set(patterns)


# --- docker-compose.yml ----------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    """The Compose Specification's own JSON schema (vendored in check-jsonschema): the check
    `docker compose config` makes, without Docker."""
    schema = "vendor.compose-spec"
    result = run(tool("check-jsonschema"), "--builtin-schema", schema, str(COMPOSE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_parses_into_typed_compose_models() -> None:
    """A second, typed reading (the compose_spec Rust crate): durations, byte sizes, enum values and
    references to top-level volumes and networks, which the JSON schema takes as plain strings."""
    parsed = PyOptions(apply_merge=True).from_yaml(COMPOSE_FILE.read_text())
    parsed.validate()
    assert set(parsed.service_names()) == set(services())


def test_dependencies_exist_and_wait_for_health_or_completion() -> None:
    """Services start in order: on servers once healthy, on one-shot jobs once they succeeded."""
    for name, service in services().items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services(), f"{name} depends on unknown service {target}"
            job = one_shot(services()[target])
            expected = "service_completed_successfully" if job else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {target}"


def test_every_server_has_a_healthcheck() -> None:
    for name, service in services().items():
        if not one_shot(service):
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_gateway_waits_for_the_model_the_cache_and_every_worker() -> None:
    depends_on = set(services()["gateway"]["depends_on"])
    assert {"model-init", "redis", *worker_services()} <= depends_on


def test_the_cpu_profile_serves_alone_and_the_gpu_profile_with_workers() -> None:
    """`docker compose --profile cpu up` starts the gateway with its engine in process (the image's
    CPU build) and nothing that reserves a GPU; `--profile gpu` the gateway in front of the workers.
    Both gateways have the same settings but the workers, and Prometheus finds either as gateway."""
    cpu, gpu = services()["gateway-cpu"], services()["gateway"]
    assert (cpu["profiles"], gpu["profiles"]) == (["cpu"], ["gpu"])
    assert all(services()[name]["profiles"] == ["gpu"] for name in worker_services())
    gpu_settings = {k: v for k, v in gpu["environment"].items() if k != "POWERSERVE_WORKERS"}
    assert cpu["environment"] == gpu_settings
    assert set(cpu["depends_on"]) == {"model-init", "redis"}
    assert "gateway" in cpu["networks"]["default"]["aliases"]
    assert (cpu["volumes"], cpu["ports"], cpu["image"]) == (gpu["volumes"], gpu["ports"], gpu["image"])


def test_each_worker_reserves_its_own_gpu() -> None:
    """One NVIDIA GPU per worker, and with no GPU variables set, two workers never share one."""
    assigned: list[str] = []
    for name in worker_services():
        devices = services()[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        device = devices[0]
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
        assert device.get("count") == 1 or len(device.get("device_ids", [])) == 1, name
        assigned += [with_defaults(gpu) for gpu in device.get("device_ids", [])]
    assert len(assigned) == len(set(assigned)), assigned


def test_published_ports_listen_on_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_gateway_drives_every_worker_service() -> None:
    urls = services()["gateway"]["environment"]["POWERSERVE_WORKERS"].split(",")
    assert urls == [f"http://{name}:8001" for name in worker_services()]


def test_prometheus_scrapes_the_gateway_and_every_worker() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "5s"
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {"gateway:8000", *(f"{name}:8001" for name in worker_services())} <= targets


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool comes with the prometheus package (make system-deps)")
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_what_pages_and_stay_silent_otherwise() -> None:
    """deploy/prometheus/alerts.test.yml: each alert on synthetic series (promtool's rule tests)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool comes with the prometheus package (make system-deps)")
    result = run(promtool, "test", "rules", str(PROMETHEUS_CONFIG.with_name("alerts.test.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mounted_files_exist_where_their_configs_expect_them() -> None:
    """Each bind-mounted repository path exists, and Grafana's dashboard provider reads the folder
    that compose mounts the dashboards at."""
    for name, service in services().items():
        for source in bind_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    mounts = bind_mounts(services()["grafana"])
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "powerserve.yml")["providers"][0]
    assert provider["options"]["path"] == mounts["deploy/grafana/dashboards"]
    assert bind_mounts(services()["prometheus"])["deploy/prometheus"] == "/etc/prometheus"


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")
    ]
    assert "prometheus" in services()


# --- Kubernetes ------------------------------------------------------------------------------------


def test_kustomization_lists_exactly_the_manifests() -> None:
    """A manifest added to deploy/k8s but not to the kustomization would silently not be deployed."""
    present = {path.name for path in K8S.glob("*.y*ml")} - {KUSTOMIZATION.name}
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == present


def test_kustomization_retags_images_the_manifests_use() -> None:
    """kustomize ignores an `images` entry whose name matches no container: a typo there would deploy
    the untagged placeholder instead of the operator's registry image."""
    used = {
        container["image"].rsplit(":", 1)[0]
        for _, template in pod_specs()
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", [])
    }
    assert {image["name"] for image in kustomization()["images"]} <= used


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_api_schemas(version: str) -> None:
    """Strict: an unknown or misspelt field fails, as `kubectl apply --validate=strict` would."""
    for name, doc in k8s_resources():
        where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{where}: {error.message}")


def test_worker_requests_one_gpu() -> None:
    template = dict(pod_specs())["powerserve-worker"]
    container = template["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1


def test_gateway_lists_every_worker_by_its_stable_name() -> None:
    """POWERSERVE_WORKERS names each StatefulSet pod through the headless Service: the two must change
    together."""
    workers = k8s_resource("StatefulSet", "powerserve-worker")
    headless = k8s_resource("Service", workers["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    port = headless["spec"]["ports"][0]["port"]
    urls = k8s_resource("ConfigMap", "powerserve-gateway")["data"]["POWERSERVE_WORKERS"].split(",")
    assert urls == [
        f"http://powerserve-worker-{i}.{headless['metadata']['name']}:{port}"
        for i in range(workers["spec"]["replicas"])
    ]


def test_containers_have_probes_and_resources() -> None:
    for pod_name, template in pod_specs():
        for container in template["spec"]["containers"]:
            where = f"{pod_name}/{container['name']}"
            assert {"readinessProbe", "livenessProbe"} <= set(container), where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where


def test_model_servers_probe_health_and_allow_a_slow_start() -> None:
    """vLLM takes minutes to load on a fresh GPU node: without a startup probe the liveness probe
    would restart it in a loop. The gateway's liveness is /live: its /health is 503 while no worker is
    healthy, which a restart of the gateway would not cure."""
    liveness = {"powerserve-gateway": "/live", "powerserve-worker": "/health"}
    for pod_name in ("powerserve-gateway", "powerserve-worker"):
        template = dict(pod_specs())[pod_name]
        container = template["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == "/health", f"{pod_name} {probe}"
        assert container["livenessProbe"]["httpGet"]["path"] == liveness[pod_name]
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, pod_name


def test_model_servers_carry_prometheus_scrape_annotations() -> None:
    for pod_name in ("powerserve-gateway", "powerserve-worker"):
        template = dict(pod_specs())[pod_name]
        annotations = template["metadata"]["annotations"]
        container_port = template["spec"]["containers"][0]["ports"][0]["containerPort"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(container_port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_autoscaler_targets_the_gateway() -> None:
    target = k8s_resource("HorizontalPodAutoscaler", "powerserve-gateway")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "powerserve-gateway")


# --- Grafana dashboard -----------------------------------------------------------------------------


def test_dashboard_is_provisionable() -> None:
    """A fixed uid (links survive re-provisioning) and unique panel ids."""
    board = dashboard()
    assert board["uid"] == "powerserve"
    assert 36 <= board["schemaVersion"] <= 41
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


# The dashboard's variables: the Prometheus to read (any, not only the compose one's uid), and
# which models and instances to show (regex label matchers; "All" is ".*").
VARIABLES = {"datasource", "model", "instance"}


def test_every_panel_queries_the_chosen_prometheus() -> None:
    assert graph_panels()
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert set(variables) == VARIABLES
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    for name in ("model", "instance"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
    for panel in graph_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}"


def test_queries_use_only_the_dashboards_variables_as_regex_matchers() -> None:
    """Each expression runs in Prometheus once its variables are replaced (no $__rate_interval or
    other Grafana-only syntax), and filters every series by instance."""
    for expr in dashboard_exprs():
        used = set(re.findall(r"\$(\w+)", expr))
        assert used <= VARIABLES - {"datasource"}, expr
        assert re.sub(r'=~"\$(model|instance)"', "", expr).count("$") == 0, expr
        assert all('instance=~"$instance"' in m for m in re.findall(r"\{[^}]*\}", expr)), expr


def test_dashboard_reads_only_metrics_that_exist() -> None:
    """A renamed metric would leave a panel empty with no error anywhere: every name must be declared
    in service/metrics/registry.py or be one of vLLM's own (vllm:*)."""
    exported = set().union(*gateway_series().values())
    for expr in dashboard_exprs():
        unknown = {name for name in metric_names(expr) if not name.startswith("vllm:")} - exported
        assert not unknown, f"{expr}: {sorted(unknown)}"


def test_every_gateway_metric_is_on_the_dashboard() -> None:
    """A metric nobody graphs is a metric nobody watches."""
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    missing = [family for family, series in gateway_series().items() if not series & used]
    assert not missing, missing


def test_dashboard_compares_the_routes() -> None:
    """The dashboard's point: each route side by side (grouped by route), and the vLLM workers."""
    exprs = dashboard_exprs()
    assert sum("by (route" in expr for expr in exprs) >= 8
    assert any("vllm:prefix_cache_hits_total" in expr for expr in exprs)
    assert any("vllm:num_requests_running" in expr for expr in exprs)
    assert all(route in json.dumps(dashboard()) for route in ROUTES)


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule: a syntax error fails here, not on a
    blank panel."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool comes with the prometheus package (make system-deps)")
    exprs = dashboard_exprs()
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
