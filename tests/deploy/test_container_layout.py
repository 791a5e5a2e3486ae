"""The shipped container layouts start and serve, checked without Docker or a cluster.

The schema tests (test_deploy_files.py) cannot see that a layout is wrong at run time: a gateway
whose job state lands in the read-only model volume passes every schema and dies at start-up. Here
the gateways of docker-compose.yml (its gpu and cpu profiles) and the one of deploy/k8s (the
Deployment powerserve-gateway) run as laid out, each on this machine in a private mount namespace
(``unshare``):

- mounts: each volume mount of the gateway (its target path, read-only or not) is a temporary
  directory bind-mounted at that target, remounted read-only where the file says so. The ``models``
  volume holds what model-init (compose) or the prepare-model init container (k8s) would put there,
  the model directory POWERSERVE_MODEL names under it, with the tiny model of the test suite in place
  of SmolLM2; every other volume (compose's named volumes, k8s emptyDirs) starts empty.
- environment: the ENV lines of the Dockerfile's final stage, overlaid by the compose service's
  ``environment``, or by the ConfigMaps of the container's ``envFrom`` and then its ``env``; then
  the adaptations to this machine (``adapted``), each said where it is made.
- command: the image's ``powerserve serve``, as ``python -m service serve`` of this project's
  virtual environment, in a working directory of its own (the image's WORKDIR: no ``.env`` of the
  repository is read).

Workers: the compose gpu profile and k8s point POWERSERVE_WORKERS at worker host names. Here one
``powerserve worker`` on loopback serves the tiny model under the name the layouts give
(POWERSERVE_MODEL_NAME), and both gateways drive it, so that each runs in remote mode as deployed
(the gateway loads no engine itself). The compose cpu profile's gateway has no workers: its engine
runs in process, sized for the tiny model.

Each layout's gateway must become healthy and answer a chat completion, a power completion and a
file upload, and the job state must land on the writable state mount, nothing on a read-only one.
The negative control runs the same layout without POWERSERVE_STATE_DIR (the layout before the fix):
the gateway must die on the read-only model volume.

The process runs as root here (the image's USER 10001 is not emulated): root writes through file
permissions, but not through a read-only mount, which is what the layout is about. The image's
ownership of the state directory is checked from the Dockerfile instead (the test
test_writable_mounts_are_owned_by_the_service_user).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest
import redis

from loadtests.bench_power import UNCACHED  # answers from the worker, not a cache
from loadtests.harness import (
    LOOPBACK,
    RedisProcess,
    ServiceProcess,
    free_port,
    stop_process_group,
    wait_for_http,
)
from tests.conftest import tiny_engine_args
from tests.deploy.test_deploy_files import (
    COMPOSE_FILE,
    ROOT,
    k8s_resource,
    load_yaml,
    pod_specs,
    with_defaults,
)

DOCKERFILE = ROOT / "Dockerfile"
# In docker-compose.yml: the gpu profile's gateway (in front of workers), the cpu profile's (alone).
COMPOSE_GATEWAYS = {"compose": "gateway", "compose-cpu": "gateway-cpu"}
GATEWAY_DEPLOYMENT = "powerserve-gateway"  # in deploy/k8s/gateway.yaml
GATEWAY_CONTAINER = "gateway"
MODELS_VOLUME = "models"  # the volume model-init (or the init container) prepares the model into
STATE_ENV = "POWERSERVE_STATE_DIR"
LAYOUTS = ["compose", "compose-cpu", "k8s"]

# The tiny model's worker loads in about 30 s on two cores and a remote-mode gateway answers /health
# a few seconds after it starts (tests/stack's logs); the limits leave room for a loaded machine.
WORKER_START_TIMEOUT_S = 120
GATEWAY_START_TIMEOUT_S = 120
# The old layout dies while the app is built, before any engine: the imports take a few seconds.
GATEWAY_DEATH_TIMEOUT_S = 90
# Without an answer, a client gives up after this long.
REQUEST_TIMEOUT_S = 60

# The settings of the machine running the tests must not leak into the gateway (as in
# tests/conftest.py's clean_settings_environment).
SETTINGS_VARIABLES = re.compile(r"POWERSERVE_.*|HOST|PORT|REDIS_URL", re.IGNORECASE)


# --- the layouts, as the files describe them ----------------------------------------------------


@dataclass(frozen=True)
class Mount:
    volume: str  # the volume's name; for a compose bind mount, the host path ("./deploy/...")
    target: str
    read_only: bool
    kind: str  # "volume" (starts empty, or holds the model), "bind" (a path of the repository)


@dataclass(frozen=True)
class Layout:
    name: str
    mounts: tuple[Mount, ...]
    environment: dict[str, str]  # the image's ENV overlaid by the file's

    def mount_of(self, path: str) -> Mount:
        """The mount that holds ``path`` (the deepest one when mounts nest)."""
        holding = [m for m in self.mounts if PurePosixPath(path).is_relative_to(m.target)]
        assert holding, f"{self.name}: {path} lies on no mount of the gateway"
        return max(holding, key=lambda m: len(PurePosixPath(m.target).parts))


def _final_stage(dockerfile: Path) -> str:
    return re.split(r"^FROM ", dockerfile.read_text(), flags=re.MULTILINE)[-1]


def _instructions(stage: str) -> Iterator[str]:
    """The stage's instructions, continuation lines joined and comment lines dropped."""
    current = ""
    for line in stage.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            yield current.strip()
        current = ""
    if current.strip():
        yield current.strip()


def _expand(value: str, environment: dict[str, str]) -> str:
    """Docker's substitution in ENV values: ``$NAME`` and ``${NAME}`` (empty when unset)."""
    return re.sub(
        r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))",
        lambda match: environment.get(match.group(1) or match.group(2), ""),
        value,
    )


def dockerfile_environment(dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    """The ENV of the image's final stage. The base image's own PATH is this machine's: ``$PATH``
    expands to it."""
    environment: dict[str, str] = {}
    before = {"PATH": os.environ.get("PATH", os.defpath)}
    for instruction in _instructions(_final_stage(dockerfile)):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() != "ENV":
            continue
        words = shlex.split(rest)
        if "=" not in words[0]:  # the legacy form, ENV NAME value
            pairs = [(words[0], " ".join(words[1:]))]
        else:
            pairs = [(word.partition("=")[0], word.partition("=")[2]) for word in words]
        # Every pair of one ENV instruction sees the values from before it.
        seen = before | environment
        for name, value in pairs:
            environment[name] = _expand(value, seen)
    return environment


def _compose_environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {name: with_defaults(str(value)) for name, value in raw.items() if value is not None}


def _compose_mounts(service: dict[str, Any]) -> tuple[Mount, ...]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *options = volume.split(":")
            read_only = "ro" in ",".join(options).split(",")
        else:
            source, target = volume.get("source", ""), volume["target"]
            read_only = bool(volume.get("read_only", False))
        kind = "bind" if source.startswith((".", "/")) else "volume"
        mounts.append(Mount(source, target, read_only, kind))
    return tuple(mounts)


def compose_layout(name: str = "compose") -> Layout:
    service = load_yaml(COMPOSE_FILE)["services"][COMPOSE_GATEWAYS[name]]
    environment = dockerfile_environment() | _compose_environment(service)
    return Layout(name, _compose_mounts(service), environment)


def _k8s_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's envFrom (ConfigMaps, in order), then its env, which wins."""
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) <= {"configMapRef", "prefix"}, f"envFrom {source} is not emulated"
        data = k8s_resource("ConfigMap", source["configMapRef"]["name"]).get("data", {})
        environment |= {source.get("prefix", "") + name: str(value) for name, value in data.items()}
    for variable in container.get("env", []):
        assert "value" in variable, f"env {variable['name']}: only plain values are emulated"
        environment[variable["name"]] = str(variable["value"])
    return environment


def k8s_layout() -> Layout:
    pod = dict(pod_specs())[GATEWAY_DEPLOYMENT]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == GATEWAY_CONTAINER)
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = []
    for mount in container.get("volumeMounts", []):
        assert "subPath" not in mount, f"{mount['name']}: subPath is not emulated"
        volume = volumes[mount["name"]]
        assert {"emptyDir", "persistentVolumeClaim"} & set(volume), (
            f"volume {mount['name']}: only emptyDir and persistentVolumeClaim are emulated"
        )
        mounts.append(
            Mount(mount["name"], mount["mountPath"], bool(mount.get("readOnly", False)), "volume")
        )
    environment = dockerfile_environment() | _k8s_environment(container)
    return Layout("k8s", tuple(mounts), environment)


def layout(name: str) -> Layout:
    return k8s_layout() if name == "k8s" else compose_layout(name)


def served_model_name() -> str:
    """The model name the layouts serve, which the test's worker serves too."""
    names = {layout(name).environment.get("POWERSERVE_MODEL_NAME") for name in LAYOUTS}
    assert len(names) == 1 and None not in names, f"the layouts serve different models: {names}"
    return str(names.pop())


# --- checks of the files alone -------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYOUTS)
def test_state_dir_lies_on_a_writable_mount(name: str) -> None:
    """POWERSERVE_STATE_DIR is set and lies on a mount of its own that is not read-only; the model
    volume, which it must not be on, is read-only in the gateway."""
    gateway = layout(name)
    assert STATE_ENV in gateway.environment, f"{name}: no {STATE_ENV}"
    state_mount = gateway.mount_of(gateway.environment[STATE_ENV])
    assert not state_mount.read_only, f"{name}: the state lies on the read-only {state_mount}"
    assert state_mount.volume != MODELS_VOLUME
    models = next(m for m in gateway.mounts if m.volume == MODELS_VOLUME)
    assert models.read_only, f"{name}: the models volume is writable in the gateway"


def test_dockerfile_environment_is_parsed() -> None:
    """The parser of ENV lines this test relies on: continuation lines, ``$PATH`` expanded."""
    environment = dockerfile_environment()
    assert environment["POWERSERVE_CACHE_DIR"] == "/var/cache/powerserve"
    assert environment["PATH"].startswith("/opt/venv/bin:")
    assert environment["PATH"].endswith(os.environ.get("PATH", os.defpath))


def test_writable_mounts_are_owned_by_the_service_user() -> None:
    """A fresh compose named volume takes the ownership of the image's directory at its target: the
    image must create each writable volume target of the gateway owned by the service user, or the
    gateway (USER 10001) cannot write there. (k8s's emptyDirs are made writable by fsGroup.)"""
    stage = _final_stage(DOCKERFILE)
    owned = {
        path
        for instruction in _instructions(stage)
        for command in re.findall(r"install -d -o powerserve -g powerserve ([^&]+)", instruction)
        for path in command.split()
    }
    for name in COMPOSE_GATEWAYS:
        for mount in compose_layout(name).mounts:
            if mount.kind == "volume" and not mount.read_only:
                assert mount.target in owned, f"the Dockerfile does not create {mount.target}"
    user = re.findall(r"^USER (\S+)", stage, flags=re.MULTILINE)[-1]
    assert user == "10001:10001"
    pod = dict(pod_specs())[GATEWAY_DEPLOYMENT]["spec"]
    assert pod["securityContext"]["fsGroup"] == 10001


# --- the mount namespace --------------------------------------------------------------------------

# Tried in order: as root, a mount namespace alone; otherwise a user namespace that maps this user to
# root in it, which may mount there.
UNSHARE_FORMS = (
    ("--mount", "--propagation", "private"),
    ("--user", "--map-root-user", "--mount", "--propagation", "private"),
)

_PROBE = """set -eu
mkdir -p "$1/target"
mount --bind "$1/source" "$1/target"
mount -o remount,bind,ro "$1/target"
test -f "$1/target/seen"
if touch "$1/target/written" 2>/dev/null; then echo "the read-only bind mount took a write"; exit 1; fi
"""


@pytest.fixture(scope="module")
def unshare(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The ``unshare`` command line that gives a private mount namespace where bind mounts can be
    made read-only; the test fails (it does not skip) when this machine allows none."""
    program = shutil.which("unshare")
    if program is None:
        pytest.fail("unshare (util-linux) is not installed: the container layouts cannot be emulated")
    errors = []
    for form in UNSHARE_FORMS:
        work = tmp_path_factory.mktemp("unshare-probe")
        (work / "source").mkdir()
        (work / "source" / "seen").write_text("")
        command = [program, *form, "/bin/sh", "-c", _PROBE, "probe", str(work)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode == 0:
            return [program, *form]
        errors.append(f"unshare {' '.join(form)}: exit {result.returncode}: {result.stderr.strip()}")
    pytest.fail(
        "cannot emulate the container layouts: no private mount namespace with read-only bind "
        "mounts is allowed here (run as root, or allow unprivileged user namespaces)\n"
        + "\n".join(errors)
    )


def mount_script(mounts: list[tuple[Path, Mount]], argv: list[str]) -> str:
    """A shell script for the namespace: each source bind-mounted at its target (parents first),
    remounted read-only where the layout says so, then ``argv`` in place of the shell."""
    lines = ["set -eu"]
    for source, mount in sorted(mounts, key=lambda item: len(PurePosixPath(item[1].target).parts)):
        target = shlex.quote(mount.target)
        lines += [f"mkdir -p {target}", f"mount --bind {shlex.quote(str(source))} {target}"]
        if mount.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def missing_directories(targets: list[str]) -> list[Path]:
    """The directories ``mkdir -p`` of the targets will create on this machine, deepest first (the
    mounts live in the namespace, the directories they need do not)."""
    missing: set[Path] = set()
    for target in targets:
        path = Path(target)
        while not path.exists():
            missing.add(path)
            path = path.parent
    return sorted(missing, key=lambda path: len(path.parts), reverse=True)


# --- the gateway in its layout --------------------------------------------------------------------


@dataclass
class Volumes:
    """The host directories standing in for the layout's volumes."""

    sources: dict[str, Path]  # volume name -> host directory

    def host_path(self, gateway: Layout, path: str) -> Path:
        """Where ``path`` of the gateway's filesystem lies on this machine."""
        mount = gateway.mount_of(path)
        return self.sources[mount.volume] / PurePosixPath(path).relative_to(mount.target)


def make_volumes(gateway: Layout, root: Path, tiny_model_dir: Path) -> Volumes:
    """An empty directory per volume; the models volume holds what its init step prepares: the model
    directory POWERSERVE_MODEL names under it (the tiny model in place of SmolLM2)."""
    sources: dict[str, Path] = {}
    for mount in gateway.mounts:
        if mount.kind == "bind":
            sources[mount.volume] = (ROOT / mount.volume).resolve()
        else:
            sources.setdefault(mount.volume, root / "volumes" / mount.volume)
            sources[mount.volume].mkdir(parents=True, exist_ok=True)
    volumes = Volumes(sources)
    model = gateway.environment.get("POWERSERVE_MODEL")
    assert model, f"{gateway.name}: POWERSERVE_MODEL is not set; the test serves the tiny model there"
    assert gateway.mount_of(model).volume == MODELS_VOLUME, f"{model} is not in the models volume"
    shutil.copytree(tiny_model_dir, volumes.host_path(gateway, model))
    return volumes


def _loopback(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the loopback server's (scheme and path kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{LOOPBACK}:{port}"))


def adapted(
    gateway: Layout, *, port: int, worker_url: str, redis_server: RedisProcess
) -> dict[str, str]:
    """The process's environment: this machine's (for what its tools need: HOME, library paths),
    without any setting of the service; the layout's over it; and these adaptations to the test."""
    environment = {k: v for k, v in os.environ.items() if not SETTINGS_VARIABLES.fullmatch(k)}
    environment |= gateway.environment
    # The image's virtual environment, /opt/venv, is this project's here.
    environment["PATH"] = environment["PATH"].replace("/opt/venv/bin", str(Path(sys.executable).parent))
    # Listen on loopback, on a free port, not on 0.0.0.0:8000.
    environment["HOST"], environment["PORT"] = LOOPBACK, str(port)
    # The worker host names (worker-0:8001, powerserve-worker-0.powerserve-worker:8001...) become the
    # one loopback worker of the test.
    if "POWERSERVE_WORKERS" in environment:
        environment["POWERSERVE_WORKERS"] = worker_url
    else:  # the engine in process (the cpu profile): sized for the tiny model, as the worker is
        environment |= {"POWERSERVE_MAX_MODEL_LEN": "64", "POWERSERVE_KV_CACHE_GIB": "1"}
    # The response cache's Redis and the jobs Redis (k8s) become the test session's Redis (each URL
    # keeps its database number).
    for name in ("REDIS_URL", "POWERSERVE_JOBS_REDIS_URL"):
        if name in environment:
            environment[name] = _loopback(environment[name], redis_server.port)
    return environment


class GatewayInNamespace:
    """``python -m service serve`` in a private mount namespace with the layout's mounts."""

    def __init__(
        self,
        gateway: Layout,
        volumes: Volumes,
        environment: dict[str, str],
        unshare: list[str],
        work: Path,
    ):
        self.port = int(environment["PORT"])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = work / "gateway.log"
        home = work / "home"  # the image's WORKDIR, /home/powerserve
        home.mkdir()
        mounts = [(volumes.sources[m.volume], m) for m in gateway.mounts]
        self.created = missing_directories([m.target for m in gateway.mounts])
        argv = [sys.executable, "-m", "service", "serve"]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [*unshare, "/bin/sh", "-c", mount_script(mounts, argv)],
                cwd=home,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches every child
            )

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self, timeout: float) -> None:
        try:
            wait_for_http(f"{self.url}/health", timeout=timeout, alive=self.process)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}:\n{self.log_tail()}")

    def wait_exit(self, timeout: float) -> tuple[int | None, bool]:
        """The exit status (None if it still runs after ``timeout``) and whether /health ever
        answered 200 meanwhile."""
        deadline = time.monotonic() + timeout
        healthy = False
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                healthy = healthy or httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            time.sleep(0.5)
        return self.process.poll(), healthy

    def stop(self) -> None:
        stop_process_group(self.process)
        for directory in self.created:  # the empty mount points mkdir -p made on this machine
            with contextlib.suppress(OSError):
                directory.rmdir()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ServiceProcess]:
    """One ``powerserve worker`` on loopback: the tiny model, served under the layouts' model name."""
    args = [*tiny_engine_args(tiny_model_dir), "--model-name", served_model_name()]
    log = tmp_path_factory.mktemp("layout-worker") / "worker.log"
    process = ServiceProcess(args, log, command="worker").wait_ready(timeout=WORKER_START_TIMEOUT_S)
    yield process
    process.stop()


@contextlib.contextmanager
def gateway_in(
    gateway: Layout,
    work: Path,
    tiny_model_dir: Path,
    unshare: list[str],
    worker: ServiceProcess,
    redis_server: RedisProcess,
    *,
    without: tuple[str, ...] = (),
) -> Iterator[tuple[GatewayInNamespace, Volumes, dict[str, str]]]:
    """The layout's gateway started (not yet healthy), with ``without`` removed from its environment;
    stopped on leaving."""
    volumes = make_volumes(gateway, work, tiny_model_dir)
    environment = adapted(gateway, port=free_port(), worker_url=worker.url, redis_server=redis_server)
    for name in without:
        environment.pop(name, None)
    process = GatewayInNamespace(gateway, volumes, environment, unshare, work)
    try:
        yield process, volumes, environment
    finally:
        process.stop()


def tree(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


@pytest.mark.parametrize("name", LAYOUTS)
def test_gateway_serves_in_its_container_layout(
    name: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    unshare: list[str],
    worker: ServiceProcess,
    redis_server: RedisProcess,
) -> None:
    gateway = layout(name)
    model = gateway.environment["POWERSERVE_MODEL_NAME"]
    with gateway_in(gateway, tmp_path, tiny_model_dir, unshare, worker, redis_server) as started:
        process, volumes, environment = started
        read_only = {m.volume: tree(volumes.sources[m.volume]) for m in gateway.mounts if m.read_only}
        process.wait_healthy(GATEWAY_START_TIMEOUT_S)
        client = openai.OpenAI(
            base_url=f"{process.url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S
        )
        messages: Any = [{"role": "user", "content": "a b"}]

        chat = client.chat.completions.create(
            model=model, messages=messages, max_tokens=2, extra_body=UNCACHED
        )
        assert chat.choices[0].message.role == "assistant"
        assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 2

        power = client.chat.completions.create(
            model=f"{model}-power",
            messages=messages,
            max_tokens=2,
            extra_body={"power_particles": 2, **UNCACHED},
        )
        assert power.choices[0].message.role == "assistant"
        report = (power.model_extra or {})["power"]
        assert (report["method"], report["particles"]) == ("smc", 2)

        line = {
            "custom_id": "layout-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": messages, "max_tokens": 2},
        }
        content = (json.dumps(line) + "\n").encode()
        uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
        assert (uploaded.bytes, uploaded.purpose) == (len(content), "batch")
        assert client.files.content(uploaded.id).content == content

        # The job state is on the writable state mount, as the layout says.
        state_dir = environment[STATE_ENV]
        assert not gateway.mount_of(state_dir).read_only
        state = volumes.host_path(gateway, state_dir)
        assert (state / "state.sqlite3").is_file(), f"no job store under {state}: {tree(state.parent)}"
        jobs_redis = environment.get("POWERSERVE_JOBS_REDIS_URL")
        if jobs_redis:
            # Files live in the jobs Redis: the state mount holds only this gateway's own store.
            assert not (state / "files" / uploaded.id).exists()
            stored = redis.Redis.from_url(jobs_redis)
            keys = list(stored.scan_iter(match=f"*{uploaded.id}:content"))
            assert [stored.get(key) for key in keys] == [content]
        else:
            assert (state / "files" / uploaded.id).read_bytes() == content

        # Nothing was written to a read-only volume.
        for volume, before in read_only.items():
            assert tree(volumes.sources[volume]) == before, f"the gateway wrote to {volume}"


@pytest.mark.parametrize("name", LAYOUTS)
def test_without_a_state_dir_the_gateway_dies_on_the_read_only_model_volume(
    name: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    unshare: list[str],
    worker: ServiceProcess,
    redis_server: RedisProcess,
) -> None:
    """The negative control, the layout before the fix: without POWERSERVE_STATE_DIR (in the file
    or the image) the state goes to <POWERSERVE_CACHE_DIR>/state, in the read-only models volume, and
    the gateway must die there. It shows that the test above can fail, and fails for this."""
    gateway = layout(name)
    started = gateway_in(
        gateway, tmp_path, tiny_model_dir, unshare, worker, redis_server, without=(STATE_ENV,)
    )
    with started as (process, _, environment):
        cache_dir = environment["POWERSERVE_CACHE_DIR"]
        assert gateway.mount_of(f"{cache_dir}/state").read_only, "the control needs the old layout"
        status, healthy = process.wait_exit(GATEWAY_DEATH_TIMEOUT_S)
        log = process.log_tail()
        assert not healthy, f"the gateway became healthy without {STATE_ENV}:\n{log}"
        assert status is not None, f"the gateway still runs after {GATEWAY_DEATH_TIMEOUT_S} s:\n{log}"
        assert status != 0, log
        assert "Read-only file system" in log, log
