"""The files under deploy/: compose, Kubernetes, systemd, Prometheus and Grafana.

No Docker engine, cluster or Grafana runs on our machines, so these files are checked for
everything that can be checked without them: the compose files against the Compose
specification's JSON schema (bundled with check-jsonschema) and for pinned images,
existing local files and consistent dependencies; every beiflow command in them with
beiflow's own argument parser; the Kubernetes manifests for probes, resources and the
shared subscription; the systemd units with `systemd-analyze verify`; the Prometheus
configuration and alert rules with promtool (`check config`, `check rules`, `test rules`);
every PromQL expression for metric names that ingest/metrics.py defines; every dashboard
SQL query for relations the migrations create, and by running it against a freshly
migrated database.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from beiflow.ingest.cli import build_parser
from beiflow.ingest.config import ENV_KEYS
from beiflow.ingest.db import migrate
from beiflow.ingest.geofences import import_fences, read_geojson
from beiflow.ingest.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
COMPOSE_FILES = sorted(COMPOSE.glob("compose*.yaml"))
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
INGEST_JOB = 'job="beiflow-ingest"'
SHUTDOWN_TIMEOUT_S = 10.0   # Collector.run's bound on the final write at shutdown


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- metric names

_METRIC_CLASSES = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram",
                   "Summary": "summary", "BulkHistogram": "histogram"}


def defined_metrics(path: Path = ROOT / "ingest" / "metrics.py") -> dict[str, str]:
    """Metric family name -> class name, parsed from the source (never imported)."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        first = node.args[0]
        if name in _METRIC_CLASSES and isinstance(first, ast.Constant) \
                and isinstance(first.value, str):
            found[first.value] = name
    return found


def exposed_series(defs: dict[str, str]) -> set[str]:
    """The sample names Prometheus sees for these families."""
    names: set[str] = set()
    for family, cls in defs.items():
        base = family.removesuffix("_total")
        kind = _METRIC_CLASSES[cls]
        if kind == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif kind == "gauge":
            names.add(base)
        else:
            names |= {f"{base}_bucket", f"{base}_count", f"{base}_sum"}
            if cls != "BulkHistogram":
                names.add(f"{base}_created")
    return names


#: Series Prometheus itself adds to every scrape or rule evaluation.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS",
                     "ALERTS_FOR_STATE"}
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                 "bool", "and", "or", "unless", "inf", "nan", "atan2"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords removed)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)                       # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)                      # ranges, subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)                      # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        if m.start() and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue                                        # 1e3, 0.5x
        if s[m.end():].lstrip().startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


@pytest.fixture(scope="module")
def known_series() -> set[str]:
    return exposed_series(defined_metrics()) | PROMETHEUS_SERIES


def test_metric_parser_agrees_with_the_live_registry() -> None:
    defs = defined_metrics()
    live = {family.name: family.type for family in Metrics().registry.collect()}
    assert {name.removesuffix("_total"): _METRIC_CLASSES[cls] for name, cls in defs.items()} \
        == live


def test_promql_checker_catches_unknown_metrics(known_series: set[str]) -> None:
    expr = ('sum by (job, instance) (rate(beiflow_messages_received_total{job="x"}[10m]))'
            ' / on (instance) beiflow_no_such_metric offset 1d > 0.5 and up == 1')
    assert promql_metric_names(expr) == {"beiflow_messages_received_total",
                                         "beiflow_no_such_metric", "up"}
    assert promql_metric_names(expr) - known_series == {"beiflow_no_such_metric"}
    # a family name without its exposition suffix is not a series either
    assert "beiflow_messages_received" not in known_series


# ---------------------------------------------------------------- relations in SQL

def migration_relations() -> set[str]:
    """Tables and views created by schemas/migrations/*.sql."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "schemas" / "migrations")
                                                   .glob("*.sql")))
    return {m.lower() for m in re.findall(
        r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW|MATERIALIZED\s+VIEW)\s+"
        r"(?:IF\s+NOT\s+EXISTS\s+)?([\w.]+)", text, re.I)}


def sql_relations(query: str) -> set[str]:
    """Relations named after FROM / JOIN (function calls and subqueries excluded)."""
    q = re.sub(r"--[^\n]*", " ", query)
    q = re.sub(r"'(?:[^']|'')*'", "''", q)
    found = set()
    for m in re.finditer(r"\b(?:FROM|JOIN)\s+(?:LATERAL\s+)?([A-Za-z_][\w.]*)\s*(\()?", q,
                         re.I):
        if not m.group(2):
            found.add(m.group(1).lower())
    return found


def test_migrations_create_the_contract_relations() -> None:
    assert {"positions", "devices", "geofences", "geofence_events", "anomalies",
            "sensor_readings", "rfid_reads", "dead_letters", "latest_positions",
            "sensor_1m"} <= migration_relations()


def test_sql_checker_catches_unknown_relations() -> None:
    q = ("SELECT p.lat FROM latest_positions p JOIN devicez d USING (device_id) "
         "CROSS JOIN LATERAL jsonb_array_elements(x) AS v WHERE p.time > now() -- FROM nope")
    assert sql_relations(q) == {"latest_positions", "devicez"}
    assert sql_relations(q) - migration_relations() == {"devicez"}


# ---------------------------------------------------------------- compose

_IMAGE = re.compile(r"^(?:[\w.-]+(?::\d+)?/)?[a-z0-9][\w./-]*:(?P<tag>[\w][\w.-]{0,127})$")


def image_pin_problem(image: str, *, built: bool = False) -> str | None:
    """Why an image reference is not pinned to an exact version (None when it is)."""
    if "@sha256:" in image:
        return None
    m = _IMAGE.match(image)
    if not m:
        return f"{image}: no tag"
    tag = m.group("tag")
    if tag == "latest":
        return f"{image}: latest"
    if built:
        return None
    if not re.search(r"\d+\.\d+", tag):
        return f"{image}: tag {tag!r} is not a version"
    return None


def test_image_pin_check() -> None:
    assert image_pin_problem("eclipse-mosquitto:2.0.22") is None
    assert image_pin_problem("timescale/timescaledb:2.19.3-pg16") is None
    assert image_pin_problem("prom/prometheus:v2.53.4") is None
    assert image_pin_problem("beiflow:local", built=True) is None
    assert image_pin_problem("eclipse-mosquitto")
    assert image_pin_problem("grafana/grafana:latest")
    assert image_pin_problem("emqx/emqx:5")
    assert image_pin_problem("timescale/timescaledb:latest-pg16")
    assert image_pin_problem("registry.local:5000/beiflow")


@pytest.fixture(scope="module", params=COMPOSE_FILES, ids=lambda p: p.name)
def compose(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    return request.param, load_yaml(request.param)


def test_there_are_two_compose_files() -> None:
    assert [p.name for p in COMPOSE_FILES] == ["compose.emqx.yaml", "compose.yaml"]


def test_compose_files_match_the_compose_specification() -> None:
    proc = run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                "vendor.compose-spec", *map(str, COMPOSE_FILES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_images_are_pinned(compose: tuple[Path, dict[str, Any]]) -> None:
    _, doc = compose
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, name
        if "image" in svc:
            problem = image_pin_problem(svc["image"], built="build" in svc)
            assert problem is None, f"{name}: {problem}"


def _bind_source(volume: str | dict[str, Any]) -> tuple[str, str, str]:
    """(kind, source, target) of a service volume in short or long syntax."""
    if isinstance(volume, dict):
        return volume["type"], volume.get("source", ""), volume["target"]
    parts = volume.split(":")
    assert 2 <= len(parts) <= 3, volume
    if len(parts) == 3:
        assert parts[2] in ("ro", "rw", "z", "Z", "ro,z", "ro,Z"), volume
    src, dst = parts[0], parts[1]
    assert dst.startswith("/"), volume
    kind = "bind" if src.startswith((".", "/", "~")) else "volume"
    return kind, src, dst


def test_compose_local_files_exist(compose: tuple[Path, dict[str, Any]]) -> None:
    path, doc = compose
    declared = set(doc.get("volumes") or {})
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            kind, src, _ = _bind_source(vol)
            if kind == "bind":
                assert (path.parent / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in declared, f"{name}: volume {src} not declared"
        if "build" in svc:
            ctx = path.parent / svc["build"]["context"]
            assert ctx.is_dir(), name
            assert (ctx / svc["build"]["dockerfile"]).is_file(), name


_PORT = re.compile(r"^(?:(?:\d{1,3}\.){3}\d{1,3}:)?(?:(\d{1,5}):)?(\d{1,5})(?:/(?:tcp|udp))?$")


def test_compose_ports_are_well_formed_and_unique(
        compose: tuple[Path, dict[str, Any]]) -> None:
    _, doc = compose
    published: list[str] = []
    for name, svc in doc["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str), f"{name}: quote ports ({port!r})"
            m = _PORT.match(port)
            assert m, f"{name}: {port}"
            for n in m.groups():
                assert n is None or 0 < int(n) < 65536, f"{name}: {port}"
            if m.group(1):
                published.append(m.group(1))
    assert len(published) == len(set(published)), published


def test_compose_dependencies(compose: tuple[Path, dict[str, Any]]) -> None:
    _, doc = compose
    services = doc["services"]
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            target = services[dep]
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep}, which has none"
            elif cond == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is a one-shot"
            else:
                assert cond == "service_started", cond
            # a service outside any profile cannot need one that only runs in a profile
            if not svc.get("profiles"):
                assert not target.get("profiles"), f"{name} needs {dep} of a profile"


def test_compose_long_running_services_have_healthchecks(
        compose: tuple[Path, dict[str, Any]]) -> None:
    _, doc = compose
    for name, svc in doc["services"].items():
        if svc.get("restart") == "no" or "simulate" in (svc.get("command") or []):
            continue
        assert "healthcheck" in svc, name
        assert svc.get("restart") == "unless-stopped", name


def _beiflow_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if "build" in s}


def test_compose_beiflow_commands_parse(compose: tuple[Path, dict[str, Any]]) -> None:
    """Every command of the beiflow image is accepted by beiflow's own CLI."""
    _, doc = compose
    parser = build_parser()
    commands = set()
    for name, svc in _beiflow_services(doc).items():
        cmd = svc["command"]
        args = parser.parse_args(cmd)
        commands.add(args.command)
        for var in svc.get("environment", {}):
            if var.startswith("BEIFLOW_"):
                assert var in ENV_KEYS, f"{name}: unknown setting {var}"
        if args.command == "geofence":
            # the Dockerfile keeps the source at /src
            assert cmd[-1].startswith("/src/")
            assert (ROOT / cmd[-1].removeprefix("/src/")).is_file(), cmd[-1]
        if args.command == "simulate":
            assert "sim" in svc.get("profiles", []), name
            assert args.devices == 50
            assert args.duration >= 86400, "a simulator that stops soon"
    assert {"db", "ingest", "geofence", "simulate"} <= commands


def test_compose_collectors(compose: tuple[Path, dict[str, Any]]) -> None:
    path, doc = compose
    ingest = {n: s for n, s in _beiflow_services(doc).items() if s["command"] == ["ingest"]}
    assert ingest
    ids = []
    for name, svc in ingest.items():
        env = svc["environment"]
        # inside a container the metrics must bind beyond loopback
        assert env["BEIFLOW_METRICS_ADDR"] == "0.0.0.0:9464", name
        assert env["BEIFLOW_MQTT_URL"].startswith("mqtt://"), name
        assert env["BEIFLOW_DB_DSN"].startswith("postgresql://"), name
        ids.append(env["BEIFLOW_CLIENT_ID"])
        deps = svc["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert "readyz" in " ".join(svc["healthcheck"]["test"]), name
        grace = re.fullmatch(r"(\d+)s", svc["stop_grace_period"])
        assert grace and int(grace.group(1)) > SHUTDOWN_TIMEOUT_S, name
    assert len(ids) == len(set(ids)), "collectors must not share a client id"
    if len(ingest) > 1:
        groups = {s["environment"].get("BEIFLOW_SHARED_GROUP") for s in ingest.values()}
        assert len(groups) == 1 and None not in groups and "" not in groups
    # Prometheus scrapes every collector, with the job the alert rules select
    prom = doc["services"]["prometheus"]
    config = next(src for kind, src, dst in map(_bind_source, prom["volumes"])
                  if dst == "/etc/prometheus/prometheus.yml")
    scrape = load_yaml(path.parent / config)
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "beiflow-ingest")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:9464" for name in ingest}


def test_compose_mosquitto_uses_the_shipped_config() -> None:
    doc = load_yaml(COMPOSE / "compose.yaml")
    mounts = {dst: src for _, src, dst in map(_bind_source,
                                               doc["services"]["mosquitto"]["volumes"])}
    conf = (COMPOSE / mounts["/mosquitto/config/mosquitto.conf"]).resolve()
    assert conf == DEPLOY / "mosquitto" / "mosquitto.conf"
    settings = dict(line.split(None, 1) for line in conf.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    data = settings["persistence_location"].strip().rstrip("/")
    assert mounts[data] in doc["volumes"], "the broker's persistence is not on a volume"
    assert doc["services"]["ingest"]["environment"]["BEIFLOW_MQTT_URL"] \
        == "mqtt://mosquitto:1883"


def test_compose_emqx_cluster_dispatches_by_client_id() -> None:
    doc = load_yaml(COMPOSE / "compose.emqx.yaml")
    nodes = {n: s for n, s in doc["services"].items() if s.get("image", "").startswith("emqx/")}
    assert len(nodes) == 2
    names = set()
    for name, svc in nodes.items():
        assert re.fullmatch(r"emqx/emqx:5\.\d+\.\d+", svc["image"]), name
        env = svc["environment"]
        assert env["EMQX_MQTT__SHARED_SUBSCRIPTION_STRATEGY"] == "hash_clientid"
        assert env["EMQX_CLUSTER__DISCOVERY_STRATEGY"] == "static"
        node = env["EMQX_NODE__NAME"]
        assert node == f"emqx@{svc['hostname']}"
        assert svc["hostname"] in svc["networks"]["default"]["aliases"]
        names.add(node)
        seeds = {s.strip() for s in env["EMQX_CLUSTER__STATIC__SEEDS"].strip("[]").split(",")}
        assert seeds == {f"emqx@{s['hostname']}" for s in nodes.values()}
    # deploy/emqx/base.hocon says the same as the environment
    hocon = (DEPLOY / "emqx" / "base.hocon").read_text()
    settings = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S+)\s*$", hocon, re.M))
    env = next(iter(nodes.values()))["environment"]
    from_env = {k.removeprefix("EMQX_MQTT__").lower(): str(v) for k, v in env.items()
                if k.startswith("EMQX_MQTT__")}
    assert from_env == settings


def test_dockerfile() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    base = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(base) == 1 and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base[0]), base
    sources = [s for line in re.findall(r"^COPY\s+(.+)$", text, re.M)
               for s in line.split()[:-1]]
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text().splitlines()
    for src in sources:
        assert (ROOT / src).exists(), src
        assert f"!{src}" in ignore, f"{src} is excluded from the build context"
    # every package directory pyproject.toml maps is in the image
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for directory in pyproject["tool"]["setuptools"]["package-dir"].values():
        assert directory in sources, directory
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].isdigit() and user[-1] != "0"
    assert re.search(r'^ENTRYPOINT \["beiflow"\]', text, re.M)


def test_grafana_reader_init_script_is_valid_shell() -> None:
    script = COMPOSE / "timescaledb-init" / "10-grafana-reader.sh"
    assert os.access(script, os.X_OK)
    proc = run(["sh", "-n", str(script)])
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- Kubernetes

def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file"] = path.name
                docs.append(doc)
    return docs


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (cpu cores or bytes) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert m, value
    return float(m.group(1)) * units.get(m.group(2), 1)


def test_k8s_manifests_are_well_formed() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Service", "Job",
            "PodDisruptionBudget", "PodMonitor", "Kustomization"} <= kinds
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), d["__file"]
        if d["kind"] != "Kustomization":
            assert d["metadata"]["name"], d["__file"]
        if d["kind"] not in ("Namespace", "Kustomization"):
            assert d["metadata"]["namespace"] == "beiflow", d["__file"]
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    for res in kustomization["resources"]:
        assert (K8S / res).is_file(), res
    assert "secret.example.yaml" not in kustomization["resources"]


def test_k8s_configmap_is_the_example_config() -> None:
    data = k8s("ConfigMap", "beiflow-config")["data"]["beiflow.toml"]
    assert data == (DEPLOY / "beiflow.example.toml").read_text()


def _container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    return container


def test_k8s_collectors_share_a_subscription_with_stable_client_ids() -> None:
    sts = k8s("StatefulSet", "beiflow-ingest")
    assert sts["spec"]["replicas"] >= 2
    pod = sts["spec"]["template"]["spec"]
    c = _container(pod)
    env = {e["name"]: e for e in c["env"]}
    for name in env:
        assert name == "POD_NAME" or name in ENV_KEYS, name
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["BEIFLOW_CLIENT_ID"]["value"] == "$(POD_NAME)"
    assert env["BEIFLOW_SHARED_GROUP"]["value"]
    assert env["BEIFLOW_METRICS_ADDR"]["value"] == "0.0.0.0:9464"
    secret = k8s("Secret", "beiflow-connections")
    assert [s["secretRef"]["name"] for s in c["envFrom"]] == ["beiflow-connections"]
    assert set(secret["stringData"]) == {"BEIFLOW_MQTT_URL", "BEIFLOW_DB_DSN"}
    args = build_parser().parse_args(c["args"])
    assert args.command == "ingest"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert str(args.config).startswith(mounts["config"] + "/")
    assert image_pin_problem(c["image"]) is None
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_TIMEOUT_S


def test_k8s_probes_and_resources() -> None:
    pod = k8s("StatefulSet", "beiflow-ingest")["spec"]["template"]["spec"]
    c = _container(pod)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == 9464
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == 9464, probe
    res = c["resources"]
    for key in ("cpu", "memory"):
        assert quantity(res["requests"][key]) <= quantity(res["limits"][key]), key
    # one collector: about one core and 300-500 MiB at 65k messages in flight
    assert quantity(res["requests"]["cpu"]) >= 1
    assert quantity(res["requests"]["memory"]) >= 500 * 2**20
    assert quantity(res["limits"]["memory"]) >= 2 * 500 * 2**20
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_migrate_job_and_metrics_endpoints() -> None:
    job = k8s("Job", "beiflow-migrate")
    c = _container(job["spec"]["template"]["spec"])
    assert build_parser().parse_args(c["args"]).db_command == "migrate"
    assert image_pin_problem(c["image"]) is None
    labels = k8s("StatefulSet", "beiflow-ingest")["spec"]["template"]["metadata"]["labels"]
    svc = k8s("Service", "beiflow-ingest")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert [p["port"] for p in svc["spec"]["ports"]] == [9464]
    monitor = k8s("PodMonitor", "beiflow-ingest")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # the job label the alert rules select on
    assert labels[monitor["spec"]["jobLabel"]] == "beiflow-ingest"
    annotations = k8s("StatefulSet", "beiflow-ingest")["spec"]["template"]["metadata"][
        "annotations"]
    assert annotations["prometheus.io/port"] == "9464"


# ---------------------------------------------------------------- systemd

def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys may repeat in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), raw
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, raw
        key, value = (s.strip() for s in line.split("=", 1))
        current.setdefault(key, []).append(value)
    return sections


def seconds(value: str) -> float:
    total = 0.0
    for num, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s|m|h)?", value):
        total += float(num) * {"ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600}.get(
            suffix or "s", 1)
    return total


def test_systemd_ingest_unit() -> None:
    u = unit(SYSTEMD / "beiflow-ingest.service")
    svc = u["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["KillSignal"] == "SIGTERM"
    assert seconds(one["TimeoutStopSec"]) > SHUTDOWN_TIMEOUT_S
    assert one["Restart"] == "on-failure"
    assert one.get("DynamicUser") == "yes" or one.get("User") not in (None, "root")
    assert one["ProtectSystem"] == "strict"
    assert one["NoNewPrivileges"] == "yes"
    assert one["EnvironmentFile"].startswith("/etc/")
    exe, *args = one["ExecStart"].split()
    assert exe.endswith("/beiflow")
    assert build_parser().parse_args(args).command == "ingest"
    assert "beiflow-migrate.service" in u["Unit"]["Requires"][0].split()
    assert "beiflow-migrate.service" in u["Unit"]["After"][0].split()
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_migrate_unit_and_environment_example() -> None:
    u = unit(SYSTEMD / "beiflow-migrate.service")
    one = {k: v[-1] for k, v in u["Service"].items()}
    assert one["Type"] == "oneshot"
    _exe, *args = one["ExecStart"].split()
    assert build_parser().parse_args(args).db_command == "migrate"
    names = re.findall(r"^#?(BEIFLOW_\w+)=", (SYSTEMD / "beiflow.env.example").read_text(),
                       re.M)
    assert {"BEIFLOW_MQTT_URL", "BEIFLOW_DB_DSN"} <= set(names)
    assert set(names) <= set(ENV_KEYS)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the units are still parsed above)")
    beiflow = Path(sys.executable).parent / "beiflow"
    assert beiflow.exists(), beiflow
    for path in SYSTEMD.glob("*.service"):
        text = path.read_text().replace("/opt/beiflow/venv/bin/beiflow", str(beiflow))
        (tmp_path / path.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    assert len(units) == 2
    proc = run([analyze, "verify", *units], cwd=tmp_path)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not out, out


# ---------------------------------------------------------------- Prometheus

@pytest.fixture(scope="module")
def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: run scripts/setup.sh (installs Debian's prometheus)")
    return tool


def test_promtool_check_config(promtool: str) -> None:
    proc = run([promtool, "check", "config", "prometheus.yml", "prometheus.emqx.yml"],
               cwd=PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules(promtool: str) -> None:
    proc = run([promtool, "check", "rules", "alerts.yml"], cwd=PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules(promtool: str) -> None:
    proc = run([promtool, "test", "rules", "alerts_test.yml"], cwd=PROM)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules_can_fail(promtool: str, tmp_path: Path) -> None:
    """The unit tests pin the thresholds: loosening the lag bound breaks them."""
    rules = (PROM / "alerts.yml").read_text()
    assert rules.count(") > 30\n") == 1
    (tmp_path / "alerts.yml").write_text(rules.replace(") > 30\n", ") > 300\n"))
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    proc = run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "BeiflowIngestLagHigh" in proc.stdout + proc.stderr


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]]


def test_alerts_cover_the_failure_modes() -> None:
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}
    def uses(metric: str) -> list[str]:
        return [a for a, e in exprs.items() if metric in promql_metric_names(e)]
    assert uses("beiflow_messages_received_total")                        # no data
    assert uses("beiflow_end_to_end_lag_seconds_bucket")                  # lag
    assert uses("beiflow_messages_rejected_total")                        # dead letters
    assert uses("beiflow_db_errors_total") and uses("beiflow_db_up")      # database
    assert uses("up") and uses("beiflow_mqtt_connected")                  # not ready
    assert uses("beiflow_geofence_events_total") and uses("beiflow_anomalies_total")
    for r in alert_rules():
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]


def test_alert_rules_name_existing_metrics_of_the_ingest_job(
        known_series: set[str]) -> None:
    for r in alert_rules():
        names = promql_metric_names(r["expr"])
        assert names, r["alert"]
        assert names <= known_series, (r["alert"], names - known_series)
        assert r["expr"].count("{") == r["expr"].count(INGEST_JOB), r["alert"]


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests() -> None:
    cases: dict[str, set[bool]] = {}
    for test in load_yaml(PROM / "alerts_test.yml")["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    for r in alert_rules():
        assert cases.get(r["alert"]) == {True, False}, r["alert"]


# ---------------------------------------------------------------- Grafana

def dashboards() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in DASHBOARDS:
        yield path, json.loads(path.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def provisioned_datasources() -> dict[str, str]:
    doc = load_yaml(GRAFANA / "provisioning" / "datasources" / "datasources.yaml")
    return {d["uid"]: d["type"] for d in doc["datasources"]}


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    sources = provisioned_datasources()
    assert sorted(sources.values()) == ["grafana-postgresql-datasource", "prometheus"]
    dash = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml")
    (provider,) = dash["providers"]
    for path in COMPOSE_FILES:
        grafana = load_yaml(path)["services"]["grafana"]
        mounts = {dst: (path.parent / src).resolve()
                  for _, src, dst in map(_bind_source, grafana["volumes"])}
        assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
        assert mounts["/etc/grafana/provisioning/datasources"] \
            == GRAFANA / "provisioning" / "datasources"
        env = grafana["environment"]
        home = Path(env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
        assert (GRAFANA / "dashboards" / home.name).is_file()
        for var in re.findall(r"\$\{(\w+)\}", (GRAFANA / "provisioning" / "datasources" /
                                                "datasources.yaml").read_text()):
            assert var in env, var


def test_dashboards_are_valid_with_unique_panel_ids() -> None:
    sources = provisioned_datasources()
    titles, uids = set(), set()
    for path, dash in dashboards():
        assert dash["uid"] not in uids and dash["title"] not in titles, path.name
        uids.add(dash["uid"])
        titles.add(dash["title"])
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in panels(dash):
            assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
            for t in p.get("targets", []):
                ds = t["datasource"]
                assert sources.get(ds["uid"]) == ds["type"], (p["title"], ds)
                assert t["refId"]
    assert titles == {"beiflow pipeline", "beiflow fleet"}


def test_dashboard_promql_names_existing_metrics(known_series: set[str]) -> None:
    exprs = []
    for _, dash in dashboards():
        exprs += [t["expr"] for p in panels(dash) for t in p.get("targets", []) if "expr" in t]
        for var in dash["templating"]["list"]:
            if var["datasource"]["type"] == "prometheus":
                m = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
                assert m, var["definition"]
                exprs.append(m.group(1))
    assert len(exprs) > 20
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names and names <= known_series, (expr, names - known_series)
        assert INGEST_JOB in expr, expr


def test_pipeline_dashboard_shows_what_operators_need() -> None:
    dash = json.loads((GRAFANA / "dashboards" / "beiflow-pipeline.json").read_text())
    used = set().union(*(promql_metric_names(t["expr"]) for p in panels(dash)
                         for t in p.get("targets", [])))
    assert {"beiflow_messages_received_total", "beiflow_messages_rejected_total",
            "beiflow_rows_written_total", "beiflow_batch_duration_seconds_bucket",
            "beiflow_db_write_duration_seconds_bucket", "beiflow_end_to_end_lag_seconds_bucket",
            "beiflow_queue_depth", "beiflow_messages_acked_total", "beiflow_db_up",
            "beiflow_mqtt_connected"} <= used


def fleet_queries() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(panel title, panel, target) of every SQL query of the dashboards."""
    out = []
    for _, dash in dashboards():
        for p in panels(dash):
            out += [(p["title"], p, t) for t in p.get("targets", []) if "rawSql" in t]
    return out


def sql_variables() -> dict[str, str]:
    """Template variables of the SQL dashboards and the value each query is tried with."""
    values = {"site": "__all", "metric": "temp_c"}
    for _, dash in dashboards():
        for var in dash["templating"]["list"]:
            if var["datasource"]["type"] != "prometheus":
                assert var["name"] in values, var["name"]
    return values


def expand(query: str) -> str:
    """Grafana's macros and variables as the data source would expand them."""
    q = re.sub(r"\$__timeFilter\(([^)]+)\)",
               r"\1 BETWEEN now() - interval '6 hours' AND now()", query)
    for name, value in sql_variables().items():
        q = q.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in q, f"unexpanded macro or variable in {query}"
    return q


def test_dashboard_sql_names_existing_relations() -> None:
    known = migration_relations()
    queries = [t["rawSql"] for _, _, t in fleet_queries()]
    queries += [v["query"] for _, d in dashboards() for v in d["templating"]["list"]
                if v["datasource"]["type"] != "prometheus"]
    assert len(queries) >= 10
    used: set[str] = set()
    for q in queries:
        rels = sql_relations(q)
        assert rels and rels <= known, (q, rels - known)
        used |= rels
    assert {"latest_positions", "geofences", "geofence_events", "anomalies",
            "sensor_1m"} <= used


@pytest.fixture(scope="module")
def fleet_db(admin_dsn: str) -> Iterator[str]:
    """A migrated database of its own, with the Yantai port fences imported."""
    name = f"beiflow_dash_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    try:
        migrate(dsn)
        fences = read_geojson(ROOT / "devices" / "simulators" / "data" / "yantai_port.geojson")
        import_fences(dsn, fences)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.mark.integration
def test_dashboard_sql_runs_against_a_migrated_database(fleet_db: str) -> None:
    columns: dict[tuple[int, str], list[str]] = {}
    with psycopg.connect(fleet_db) as conn:
        conn.execute("SET statement_timeout = '10s'")
        for title, panel, target in fleet_queries():
            cur = conn.execute(expand(target["rawSql"]).encode())
            assert cur.description, title
            columns[(panel["id"], target["refId"])] = [c.name for c in cur.description]
            if target["format"] == "time_series":
                assert {"time", "value"} <= set(columns[(panel["id"], target["refId"])])
        for _, dash in dashboards():
            for var in dash["templating"]["list"]:
                if var["datasource"]["type"] != "prometheus":
                    conn.execute(var["query"].encode())
        # the map: every layer's coordinates are columns of its query
        geomaps = {p["id"]: p for _, p, _ in fleet_queries() if p["type"] == "geomap"}
        assert geomaps
        for p in geomaps.values():
            for layer in p["options"]["layers"]:
                cols = columns[(p["id"], layer["filterData"]["options"])]
                loc = layer["location"]
                assert {loc["latitude"], loc["longitude"]} <= set(cols), layer["name"]
        # one fence marker per fence, inside the port
        fence_sql = next(t["rawSql"] for _, p, t in fleet_queries()
                         if p["type"] == "geomap" and "FROM geofences" in t["rawSql"])
        rows = conn.execute(expand(fence_sql).encode()).fetchall()
        count = conn.execute("SELECT count(*) FROM geofences").fetchone()
    assert count and len(rows) == count[0] > 0
    for row in rows:
        lat, lon = row[3], row[4]
        assert 37.4 < lat < 37.7 and 121.2 < lon < 121.6, row
