"""The docker-compose deployment: schema-valid, complete, and consistent with rtrec's settings.

No Docker daemon is needed: the compose file is validated against the official Compose
Specification JSON schema (vendored, see ``COMPOSE_SPEC_SOURCE.md``) and cross-checked with the
Prometheus and Grafana configuration, the Dockerfile and ``rtrec.settings.Settings``. When a
``docker compose`` (or ``docker-compose``) CLI is on PATH, it also checks the file with
``config --quiet``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import pytest
import yaml

from rtrec.errors import ImproperlyConfigured
from rtrec.settings import Settings, refuse_unauthenticated_bind

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = HERE / "compose-spec.json"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"

REQUIRED_SERVICES = {"kafka", "redis", "prometheus", "grafana", "param-server-0", "param-server-1",
                     "worker", "serving"}
RTREC_COMMANDS = {"param-server", "worker", "serve", "simulate"}
COMMON_ENV = {
    "RTREC_KAFKA": "kafka:9092",
    "RTREC_REDIS_URL": "redis://redis:6379/0",
    "RTREC_PARAM_SERVERS": "param-server-0:7070,param-server-1:7070",
    "RTREC_METRICS_PORT": "9100",
}
ENV_NAME = re.compile(r"\bRTREC_[A-Z0-9_]+\b")
# Compose interpolation: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}.
INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
PUBLISHED = {"kafka": 29092, "serving": 8080, "prometheus": 9090, "grafana": 3000}


def load_make_secrets() -> Any:
    """deploy/make_secrets.py as a module (deploy/ is no package)."""
    spec = importlib.util.spec_from_file_location("make_secrets", ROOT / "deploy" / "make_secrets.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


SECRETS_ENV = {name: f"test-{name.lower()}" for name in load_make_secrets().SECRETS}


# ---------------------------------------------------------------------------------------------
# helpers


def load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_schema() -> dict[str, Any]:
    with SCHEMA_FILE.open(encoding="utf-8") as fh:
        return json.load(fh)


def compose_validator() -> jsonschema.protocols.Validator:
    """The validator class the schema's ``$schema`` names (draft-07 for compose-spec)."""
    schema = load_schema()
    dialect = schema.get("$schema", "")
    classes = {"draft-04": jsonschema.Draft4Validator, "draft-06": jsonschema.Draft6Validator,
               "draft-07": jsonschema.Draft7Validator, "2019-09": jsonschema.Draft201909Validator,
               "2020-12": jsonschema.Draft202012Validator}
    matches = [cls for key, cls in classes.items() if key in dialect]
    assert len(matches) == 1, f"unknown $schema {dialect!r}"
    return matches[0](schema)


def schema_errors(document: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in compose_validator().iter_errors(document)]


class MissingVariable(Exception):
    """A ``${NAME:?error}`` whose variable is unset or empty: ``docker compose up`` stops with it."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """One value as Compose interpolates it from ``env`` (.env plus the shell's environment)."""
    def one(match: re.Match[str]) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        value = env.get(name or bare)
        missing = not value if operator and operator.startswith(":") else value is None
        if operator and operator.endswith("?") and missing:
            raise MissingVariable(f"required variable {name} is missing a value: {argument}")
        if operator and operator.endswith("-") and missing:
            return argument
        return value or ""
    return INTERPOLATION.sub(one, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    """The whole (merged) document with every string value interpolated, as ``docker compose`` sees it."""
    if isinstance(node, dict):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def required_variables(compose_text: str) -> dict[str, str]:
    """``{name: error message}`` of every ``${NAME:?error}`` (or ``${NAME?error}``) in the file."""
    return {m.group(2): m.group(4) for m in INTERPOLATION.finditer(compose_text) if m.group(3) in (":?", "?")}


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """``(host address, published port)`` of a service's ports; "" for every interface."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), int(port["published"])))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)  # [host:]published:target, or a bare target
        if len(parts) == 1:
            out.append(("", int(parts[0])))
        else:
            out.append((parts[0] if len(parts) == 3 else "", int(parts[-2])))
    return out


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict of strings (compose allows a map or a KEY=VAL list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def rtrec_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from this repository's Dockerfile (whose entrypoint is ``rtrec``)."""
    return {name: svc for name, svc in compose["services"].items() if svc.get("build") is not None}


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host, int(port)


def scrape_targets(prometheus: dict[str, Any]) -> list[tuple[str, str, int]]:
    """``(job, host, port)`` for every static target and every DNS-discovered name."""
    out = []
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            out += [(job["job_name"], *host_port(t)) for t in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            out += [(job["job_name"], name, int(dns["port"])) for name in dns["names"]]
    return out


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """``{host path: container path}`` of a service's short-syntax bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[source] = target
    return out


# ---------------------------------------------------------------------------------------------
# the schema and validation


def test_vendored_schema_is_the_compose_spec_and_a_valid_draft7_schema():
    schema = load_schema()
    assert schema["title"] == "Compose Specification"
    assert schema["$id"] == "compose_spec.json"
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    assert (HERE / "COMPOSE_SPEC_SOURCE.md").is_file()
    source = (HERE / "COMPOSE_SPEC_SOURCE.md").read_text(encoding="utf-8")
    assert "compose-spec/compose-spec" in source and "schema/compose-spec.json" in source
    assert "Apache" in source


def test_compose_file_is_valid_against_compose_spec():
    errors = schema_errors(load_compose())
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("breakage", [
    "unknown top-level key",
    "unknown service key",
    "bad depends_on condition",
    "ports is not a list",
    "healthcheck test is a number",
    "invalid service name",
])
def test_broken_compose_files_fail_validation(breakage):
    """The validation is not vacuous: typical mistakes are caught."""
    broken = copy.deepcopy(load_compose())
    services = broken["services"]
    if breakage == "unknown top-level key":
        broken["service"] = {}
    elif breakage == "unknown service key":
        services["worker"]["replica"] = 3
    elif breakage == "bad depends_on condition":
        services["worker"]["depends_on"]["kafka"]["condition"] = "service_ready"
    elif breakage == "ports is not a list":
        services["serving"]["ports"] = {"8080": 8080}
    elif breakage == "healthcheck test is a number":
        services["redis"]["healthcheck"]["test"] = 42
    elif breakage == "invalid service name":
        services["param server 2"] = {"image": "x"}
    assert schema_errors(broken), f"{breakage!r} was accepted by the schema"


def test_docker_compose_cli_accepts_the_file_when_available():
    """Only where a compose CLI is installed (it needs no daemon for ``config``)."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cli[0]) is None:
            continue
        probe = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            continue
        result = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "--profile", "simulate", "config", "--quiet"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env={**os.environ, **SECRETS_ENV})  # as `make secrets` would set them
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("no docker compose CLI on PATH")


# ---------------------------------------------------------------------------------------------
# services


def test_required_services_are_there():
    services = set(load_compose()["services"])
    assert REQUIRED_SERVICES <= services, f"missing: {sorted(REQUIRED_SERVICES - services)}"


def test_kafka_is_apache_kafka_in_kraft_mode():
    kafka = load_compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = env_of(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in json.dumps(load_compose()).lower()
    assert "kafka-topics.sh" in " ".join(kafka["healthcheck"]["test"])
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_redis_persists_with_appendonly_on_a_volume():
    compose = load_compose()
    redis = compose["services"]["redis"]
    command = command_of(redis)
    assert command[command.index("--appendonly") + 1] == "yes"
    volumes = [v.split(":") for v in redis["volumes"]]
    assert any(source in compose["volumes"] and target == "/data" for source, target, *_ in volumes)
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_rtrec_services_share_the_image_and_common_environment():
    compose = load_compose()
    services = rtrec_services(compose)
    assert {"param-server-0", "param-server-1", "worker", "serving", "simulator"} <= set(services)
    assert compose["x-rtrec"]["build"] == "."
    for name, svc in compose["services"].items():
        command = command_of(svc)
        if command and command[0] in RTREC_COMMANDS:
            assert name in services, f"{name} runs `rtrec {command[0]}` but is not built from the Dockerfile"
    for name, svc in services.items():
        assert svc["build"] == ".", name
        assert command_of(svc)[0] in RTREC_COMMANDS, name
        env = env_of(svc)
        for key, value in COMMON_ENV.items():
            assert env.get(key) == value, f"{name}: {key}={env.get(key)!r}, want {value!r}"


def test_every_rtrec_variable_is_a_real_setting():
    """A typo in an RTREC_* name would be silently ignored by pydantic-settings (extra='ignore')."""
    fields = set(Settings.model_fields)
    names = set(ENV_NAME.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    for svc in load_compose()["services"].values():
        names |= {k for k in env_of(svc) if k.startswith("RTREC_")}
    assert names, "no RTREC_* variable found"
    unknown = sorted(n for n in names if n.removeprefix("RTREC_").lower() not in fields)
    assert unknown == [], f"not fields of rtrec.settings.Settings: {unknown}"


def test_rtrec_variable_values_are_accepted_by_settings():
    """Each rtrec service's environment, interpolated with the secrets set, parses into Settings
    (types and bounds) and passes the start-up refusal of unauthenticated non-loopback binds."""
    for name, svc in rtrec_services(interpolated(load_compose(), SECRETS_ENV)).items():
        env = env_of(svc)
        kwargs = {k.removeprefix("RTREC_").lower(): v for k, v in env.items() if k.startswith("RTREC_")}
        settings = Settings(**kwargs)
        assert settings.metrics_port == 9100, name
        assert not settings.allow_unauthenticated, name
        assert settings.ps_token == SECRETS_ENV["RTREC_PS_TOKEN"], name
        if command_of(svc) == ["param-server"]:
            refuse_unauthenticated_bind(settings.ps_host, settings.ps_token, "RTREC_PS_HOST", "RTREC_PS_TOKEN", False)
        if command_of(svc) == ["serve"]:
            assert settings.api_key == SECRETS_ENV["RTREC_API_KEY"]
            refuse_unauthenticated_bind(settings.http_host, settings.api_key, "RTREC_HTTP_HOST", "RTREC_API_KEY", False)
            with pytest.raises(ImproperlyConfigured, match="RTREC_API_KEY"):  # what the requirement prevents
                refuse_unauthenticated_bind(settings.http_host, "", "RTREC_HTTP_HOST", "RTREC_API_KEY", False)


def test_param_server_shards_are_consistent():
    compose = load_compose()
    services = compose["services"]
    shards = sorted((n for n in services if re.fullmatch(r"param-server-\d+", n)),
                    key=lambda n: int(n.rsplit("-", 1)[1]))
    assert shards == [f"param-server-{k}" for k in range(len(shards))]
    addresses = []
    for k, name in enumerate(shards):
        env = env_of(services[name])
        assert command_of(services[name]) == ["param-server"]
        assert env["RTREC_PS_SHARD"] == str(k)
        assert env["RTREC_PS_NUM_SHARDS"] == str(len(shards))
        assert env["RTREC_PS_HOST"] == "0.0.0.0"
        assert env["RTREC_SNAPSHOT_DIR"] == "/snapshots"
        volumes = [v.split(":") for v in services[name]["volumes"]]
        assert any(src in compose["volumes"] and dst == "/snapshots" for src, dst, *_ in volumes), name
        addresses.append(f"{name}:{env['RTREC_PS_PORT']}")
    for name, svc in rtrec_services(compose).items():
        assert env_of(svc)["RTREC_PARAM_SERVERS"] == ",".join(addresses), name


def test_worker_scales():
    worker = load_compose()["services"]["worker"]
    assert command_of(worker) == ["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports"), "a published port would clash with --scale"


def test_serving_listens_on_all_interfaces_and_is_published():
    serving = load_compose()["services"]["serving"]
    env = env_of(serving)
    assert command_of(serving) == ["serve"]
    assert env["RTREC_HTTP_HOST"] == "0.0.0.0"
    assert any(str(p).endswith(f":{env['RTREC_HTTP_PORT']}") for p in serving["ports"])
    probe = " ".join(serving["healthcheck"]["test"])
    assert "urllib" in probe and f"{env['RTREC_HTTP_PORT']}/healthz" in probe


def test_simulator_runs_only_with_the_simulate_profile():
    simulator = load_compose()["services"]["simulator"]
    assert simulator["profiles"] == ["simulate"]
    assert command_of(simulator) == ["simulate", "--rate", "200", "--duration", "86400"]
    profiled = {n for n, s in load_compose()["services"].items() if s.get("profiles")}
    assert profiled == {"simulator"}, "core services must start without a profile"


def test_topics_match_settings():
    """kafka-init creates rtrec's topics with the partition count the workers are told."""
    compose = load_compose()
    script = " ".join(command_of(compose["services"]["kafka-init"]))
    for field in ("actions_topic", "dlq_topic"):  # defaults, whatever this process's environment says
        topic = re.escape(Settings.model_fields[field].default)
        assert re.search(rf"(?<![\w.-]){topic}(?![\w.-])", script), field
    partitions = re.search(r"--partitions\s+(\d+)", script).group(1)
    for name, svc in rtrec_services(compose).items():
        assert env_of(svc)["RTREC_TOPIC_PARTITIONS"] == partitions, name


def test_long_running_services_restart_unless_stopped():
    for name, svc in load_compose()["services"].items():
        if name in {"kafka-init", "simulator"}:  # one-shot / finite by design
            assert svc["restart"] in {"no", "on-failure"}, name
        else:
            assert svc.get("restart") == "unless-stopped", name


def test_dependencies_exist_and_healthy_conditions_have_healthchecks():
    services = load_compose()["services"]
    for name, svc in services.items():
        for dep, spec in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            assert not services[dep].get("profiles"), f"{name} depends on profiled {dep}"
    for name in ("worker", "serving"):
        deps = depends_on(services[name])
        for dep in ("kafka", "redis", "param-server-0", "param-server-1"):
            assert deps[dep]["condition"] == "service_healthy", (name, dep)
    for name in ("kafka", "redis", "serving"):
        assert "healthcheck" in services[name], name


def test_bind_mounted_paths_exist():
    for name, svc in load_compose()["services"].items():
        for source in bind_mounts(svc):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana


def test_prometheus_scrapes_every_rtrec_service_and_only_compose_services():
    compose = load_compose()
    services = compose["services"]
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = scrape_targets(prometheus)
    assert targets
    for job, host, _port in targets:
        assert host in services, f"job {job} scrapes {host}, which is no compose service"
    scraped = {(host, port) for _job, host, port in targets}
    for name, svc in rtrec_services(compose).items():
        port = int(env_of(svc)["RTREC_METRICS_PORT"])
        assert (name, port) in scraped, f"{name}'s metrics port {port} is not scraped"
    mounts = bind_mounts(services["prometheus"])
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def test_prometheus_loads_the_alert_rules_from_beside_its_config():
    """prometheus.yml names its rule files relative to itself: each must be mounted beside it."""
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    assert prometheus["rule_files"], "no alert rules loaded"
    mounts = bind_mounts(load_compose()["services"]["prometheus"])
    for name in prometheus["rule_files"]:
        assert (PROMETHEUS_FILE.parent / name).is_file(), name
        assert mounts[f"./deploy/prometheus/{name}"] == f"/etc/prometheus/{name}", f"{name} is not mounted"


def test_redis_has_a_memory_limit_that_refuses_writes_rather_than_evicting_features():
    """Without maxmemory the RtrecRedisMemoryNearLimit alert can never fire; eviction would drop
    features and idempotency keys silently, a refused write is retried by the worker instead."""
    command = load_compose()["services"]["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2]))
    assert flags["--maxmemory"] and flags["--maxmemory-policy"] == "noeviction"


def test_every_rtrec_service_serves_metrics_on_all_interfaces():
    """Prometheus scrapes from its own container: a metrics endpoint on 127.0.0.1 would be unreachable."""
    for name, svc in rtrec_services(load_compose()).items():
        assert env_of(svc).get("RTREC_METRICS_HOST") == "0.0.0.0", name


def test_the_stack_runs_two_parameter_server_shards():
    services = load_compose()["services"]
    assert sorted(n for n in services if re.fullmatch(r"param-server-\d+", n)) == ["param-server-0", "param-server-1"]


def test_grafana_provisioning_parses_and_points_at_prometheus_and_the_dashboards_folder():
    compose = load_compose()
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    files = sorted((GRAFANA_DIR / "provisioning").rglob("*.y*ml"))
    parsed = {f.relative_to(GRAFANA_DIR / "provisioning").as_posix(): yaml.safe_load(f.read_text("utf-8"))
              for f in files}
    assert all(isinstance(doc, dict) and doc.get("apiVersion") == 1 for doc in parsed.values()), parsed

    datasources = parsed["datasources/prometheus.yml"]["datasources"]
    (prom,) = [d for d in datasources if d["type"] == "prometheus"]
    url_host, url_port = host_port(prom["url"].removeprefix("http://"))
    assert url_host in compose["services"] and url_port == 9090

    providers = [p for name, doc in parsed.items() if name.startswith("dashboards/")
                 for p in doc.get("providers", [])]
    assert providers, "no dashboards provider"
    dashboards_target = mounts["./deploy/grafana/dashboards"]
    assert {p["options"]["path"] for p in providers} == {dashboards_target}
    assert (GRAFANA_DIR / "dashboards" / "README.md").is_file()
    for dashboard in (GRAFANA_DIR / "dashboards").glob("*.json"):
        json.loads(dashboard.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    pinned = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["dependencies"]
              if re.match(r"torch\b", d)]
    assert pinned and pinned[0].startswith("torch==")
    torch_install = next(line for line in lines if "download.pytorch.org/whl/cpu" in line)
    assert pinned[0] in torch_install.split(), "Dockerfile's torch differs from pyproject's pin"
    project_install = next(i for i, line in enumerate(lines) if re.search(r"pip install \.(\s|$)", line))
    assert lines.index(torch_install) < project_install, "CPU torch must be installed before the project"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert lines[[i for i, line in enumerate(lines) if line.startswith("ENTRYPOINT")][-1]] == 'ENTRYPOINT ["rtrec"]'


def test_dockerignore_keeps_junk_out_and_the_package_in():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".venv", ".git", "snapshots"):
        assert needed in patterns, needed
    assert any("__pycache__" in p for p in patterns)
    for kept in ("pyproject.toml", "README.md", "rtrec", "param_server", "serving", "stream_workers",
                 "features", "producers"):
        assert kept not in patterns, f"{kept} is needed by `pip install .`"


# ---------------------------------------------------------------------------------------------
# closed by default: loopback ports, required secrets (`make secrets`)


def test_interpolation_helper_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$x ${SET} $SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:?e}", env) == "$x v v d d  v"
    for text in ("${UNSET:?run it}", "${EMPTY:?run it}", "${UNSET?run it}"):
        with pytest.raises(MissingVariable, match="run it"):
            interpolate(text, env)


def test_every_published_port_is_bound_to_loopback_by_default():
    services = interpolated(load_compose(), SECRETS_ENV)["services"]
    ports = {name: published_ports(svc) for name, svc in services.items() if svc.get("ports")}
    assert {name: [port for _, port in found] for name, found in ports.items()} == \
        {name: [port] for name, port in PUBLISHED.items()}
    for name, found in ports.items():
        assert all(host == "127.0.0.1" for host, _ in found), f"{name} publishes {found}"


def test_publish_host_opts_serving_prometheus_and_grafana_in_to_other_interfaces():
    services = interpolated(load_compose(), {**SECRETS_ENV, "PUBLISH_HOST": "0.0.0.0"})["services"]
    hosts = {name: {host for host, _ in published_ports(services[name])} for name in PUBLISHED}
    # Kafka's host listener advertises localhost:29092: it is for tools on this machine only.
    assert hosts == {"kafka": {"127.0.0.1"}, "serving": {"0.0.0.0"}, "prometheus": {"0.0.0.0"},
                     "grafana": {"0.0.0.0"}}


def test_up_requires_exactly_the_secrets_make_secrets_writes():
    required = required_variables(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert set(required) == set(SECRETS_ENV)
    for name, message in required.items():
        assert "make secrets" in message, name
    compose = load_compose()
    schema_clean = interpolated(compose, SECRETS_ENV)
    assert schema_errors(schema_clean) == []
    for name in SECRETS_ENV:
        for missing in ({k: v for k, v in SECRETS_ENV.items() if k != name}, {**SECRETS_ENV, name: ""}):
            with pytest.raises(MissingVariable, match=f"{name} .*make secrets"):
                interpolated(compose, missing)


def required(name: str) -> re.Pattern[str]:
    return re.compile(rf"\$\{{{name}:\?[^}}]*make secrets[^}}]*\}}")


def test_serving_requires_the_api_key_and_every_rtrec_process_shares_the_ps_token():
    compose = load_compose()
    assert required("RTREC_PS_TOKEN").fullmatch(compose["x-rtrec"]["environment"]["RTREC_PS_TOKEN"])
    for name, svc in rtrec_services(compose).items():
        assert required("RTREC_PS_TOKEN").fullmatch(env_of(svc).get("RTREC_PS_TOKEN", "")), name
    serving = env_of(compose["services"]["serving"])
    assert required("RTREC_API_KEY").fullmatch(serving["RTREC_API_KEY"])
    assert serving["RTREC_OPEN_ENDPOINTS"] == "${RTREC_OPEN_ENDPOINTS:-}"  # closed unless .env opens some
    assert Settings(open_endpoints=interpolate(serving["RTREC_OPEN_ENDPOINTS"], {})).open_endpoint_names == set()


def test_grafana_admin_password_is_required_with_no_default():
    env = env_of(load_compose()["services"]["grafana"])
    assert required("GRAFANA_ADMIN_PASSWORD").fullmatch(env["GF_SECURITY_ADMIN_PASSWORD"])
    assert interpolated(env, SECRETS_ENV)["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS_ENV["GRAFANA_ADMIN_PASSWORD"]


def test_prometheus_has_no_lifecycle_or_admin_api():
    """With --web.enable-lifecycle anyone who reaches 9090 could POST /-/quit or /-/reload."""
    command = command_of(load_compose()["services"]["prometheus"])
    assert command and command[0].startswith("--config.file=")
    assert not [flag for flag in command if flag.startswith(("--web.enable-lifecycle", "--web.enable-admin-api"))]
