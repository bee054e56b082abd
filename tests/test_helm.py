"""The Helm chart in helm/moderation, checked without a helm binary.

A small stand-in renderer expands the chart's own `define`s, substitutes scalar `.Values` paths with their
values and every other expression with a placeholder, and drops control actions (`if`, `range`, `with`,
`end`, `fail`, ...), keeping every branch. That is enough to check that each template is well-formed YAML
with the resources, labels, probes and environment the worker needs; it does not evaluate conditions, so
what `helm template` actually emits for a given values file is NOT checked here.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from consumers.metrics import WorkerMetrics
from moderation.settings import environment_variables

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "moderation"
TEMPLATES = CHART / "templates"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
MANIFESTS = sorted(TEMPLATES.glob("*.yaml"))
PLACEHOLDER = "placeholder"

# --------------------------------------------------------------------------------------------- renderer

_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_CONTROL = re.compile(r"^(if|else|end|range|with|define|block|template|fail)\b")
_ASSIGN = re.compile(r"^\$[A-Za-z0-9_]*\s*:?=")
_INDENT = re.compile(r"\|\s*(n?indent)\s+(\d+)\s*$")
_SIMPLE = re.compile(r"^\$?\.Values\.([A-Za-z0-9_.]+)((?:\s*\|\s*(?:quote|int|toString))*)$")
_INCLUDE = re.compile(r'^include\s+"([^"]+)"\s+(?:\.|\$)((?:\s*\|\s*[a-z]+(?:\s+\d+)?)*)$')


def _tokens(text: str) -> list[tuple[str, str]]:
    """Split a template into ("text", s) and ("action", s) tokens, applying the {{- and -}} trim markers."""
    tokens: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(text):
        chunk = text[position : match.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if match.group(1):
            chunk = chunk.rstrip()
        tokens.append(("text", chunk))
        tokens.append(("action", match.group(2).strip()))
        trim_next = bool(match.group(3))
        position = match.end()
    tail = text[position:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    return tokens


def _defines(text: str) -> dict[str, list[tuple[str, str]]]:
    defines: dict[str, list[tuple[str, str]]] = {}
    tokens = _tokens(text)
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        match = re.match(r'^define\s+"([^"]+)"$', value) if kind == "action" else None
        if not match:
            i += 1
            continue
        depth, body, i = 1, [], i + 1
        while True:
            kind, value = tokens[i]
            if kind == "action" and re.match(r"^(if|range|with|define|block)\b", value):
                depth += 1
            elif kind == "action" and re.match(r"^end\b", value):
                depth -= 1
                if depth == 0:
                    break
            body.append(tokens[i])
            i += 1
        defines[match.group(1)] = body
        i += 1
    return defines


DEFINES = _defines((TEMPLATES / "_helpers.tpl").read_text())


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _scalar(value: Any, quote: bool) -> str:
    text = str(value).lower() if isinstance(value, bool) else "" if value is None else str(value)
    return json.dumps(text) if quote else text


def _indent(body: str, width: int, newline: bool) -> str:
    lines = [(" " * width + line) if line else line for line in body.split("\n")]
    return ("\n" if newline else "") + "\n".join(lines)


def _structure_placeholder(output: str, width: int) -> str:
    """What `toYaml x | nindent N` stands for: a list item if the sibling lines at that indent are items."""
    for line in reversed(output.split("\n")):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent < width:
            break
        if indent == width:
            return "- _toyaml: " + PLACEHOLDER if line.lstrip().startswith("- ") else "_toyaml: " + PLACEHOLDER
    return "_toyaml: " + PLACEHOLDER


def _render_tokens(tokens: list[tuple[str, str]], values: dict[str, Any]) -> str:
    out = ""
    for kind, value in tokens:
        if kind == "text":
            out += value
        elif value.startswith("/*") or _CONTROL.match(value) or _ASSIGN.match(value):
            continue
        else:
            out += _expression(value, values, out)
    return out


def _expression(expr: str, values: dict[str, Any], output: str) -> str:
    indent = _INDENT.search(expr)
    core = expr[: indent.start()].strip() if indent else expr
    include = _INCLUDE.match(core)
    if include and include.group(1) in DEFINES:
        body = _render_tokens(DEFINES[include.group(1)], values)
        if "quote" in include.group(2):
            body = json.dumps(body)
    elif core.startswith("toYaml"):
        column = int(indent.group(2)) if indent else len(output) - (output.rfind("\n") + 1)
        body = _structure_placeholder(output, column)
    elif simple := _SIMPLE.match(core):
        try:
            value = _lookup(values, simple.group(1))
        except KeyError:
            value = None
        quote = "quote" in simple.group(2)
        body = _scalar(value, quote) if not isinstance(value, dict | list) else PLACEHOLDER
    else:
        body = json.dumps(PLACEHOLDER) if re.search(r"\|\s*quote\s*$", core) else PLACEHOLDER
    if indent:
        return _indent(body, int(indent.group(2)), indent.group(1) == "nindent")
    return body


def render(template: Path, values: dict[str, Any]) -> str:
    return _render_tokens(_tokens(template.read_text()), values)


def documents(template: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render(template, values)) if doc is not None]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


VALUE_SETS = {"values.yaml": VALUES} | {
    f"ci/{path.name}": _merge(VALUES, yaml.safe_load(path.read_text())) for path in CI_FILES
}


def _by_kind(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resources = {}
    for template in MANIFESTS:
        for doc in documents(template, values):
            resources[doc["kind"]] = doc
    return resources


# ------------------------------------------------------------------------------------------------ chart


def test_chart_metadata_and_files() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert (chart["name"], chart["version"], str(chart["appVersion"])) == ("moderation", "0.1.0", "0.1.0")
    for name in (
        "_helpers.tpl",
        "NOTES.txt",
        "deployment.yaml",
        "configmap-policies.yaml",
        "secret.yaml",
        "job-migrate.yaml",
        "pdb.yaml",
        "serviceaccount.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "scaledobject.yaml",
        "configmap-dashboard.yaml",
    ):
        assert (TEMPLATES / name).is_file(), name
    assert set(DEFINES) >= {
        "moderation.name",
        "moderation.fullname",
        "moderation.labels",
        "moderation.selectorLabels",
        "moderation.serviceAccountName",
    }
    assert CI_FILES, "helm/moderation/ci/ should hold values files for chart-testing"


# ----------------------------------------------------------------------------------------------- schema


def test_schema_is_valid_draft7() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_schema_accepts_values(name: str) -> None:
    # Helm validates the merged values (defaults + -f file), so that is what is checked.
    jsonschema.Draft7Validator(SCHEMA).validate(VALUE_SETS[name])


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ("terminationGracePeriodSeconds", 100),
        ("model.device", "tpu"),
        ("kafka.securityProtocol", "TLS"),
        ("kafka.inputTopicPartitions", 0),
        ("batching.maxSize", 0),
        ("ops.port", 70000),
        ("model.cache.type", "nfs"),
        ("log.format", "xml"),
        ("kafka.bootstarpServers", "typo:9092"),
    ],
)
def test_schema_rejects_bad_values(path: str, bad: Any) -> None:
    values = copy.deepcopy(VALUES)
    *parents, leaf = path.split(".")
    node = values
    for part in parents:
        node = node[part]
    node[leaf] = bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(values)


# -------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
@pytest.mark.parametrize("template", MANIFESTS, ids=lambda p: p.name)
def test_template_renders_to_labelled_resources(template: Path, values_name: str) -> None:
    docs = documents(template, VALUE_SETS[values_name])
    assert len(docs) == 1, f"{template.name}: expected one resource, got {len(docs)}"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), template.name
        assert doc["metadata"]["name"], template.name
        labels = doc["metadata"]["labels"]
        assert "app.kubernetes.io/name" in labels and "app.kubernetes.io/instance" in labels, template.name


def test_every_values_path_in_templates_exists() -> None:
    sources = sorted(TEMPLATES.iterdir())
    missing = []
    for source in sources:
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]*[A-Za-z0-9_])", source.read_text()):
            try:
                _lookup(VALUES, path)
            except KeyError:
                missing.append(f"{source.name}: .Values.{path}")
    assert not missing


def test_deployment_runs_the_worker_with_probes_on_the_ops_port() -> None:
    deployment = _by_kind(VALUES)["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["moderation", "run"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": VALUES["ops"]["port"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {item["name"]: item for item in container["env"] if "name" in item}
    assert env["MODERATION_OPS__PORT"]["value"] == str(VALUES["ops"]["port"])
    assert env["MODERATION_LOG__FORMAT"]["value"] == "json"
    assert env["MODERATION_POLICY__PATH"]["value"] == f"/etc/moderation/policies/{VALUES['policies']['active']}"
    assert "secretKeyRef" in env["MODERATION_DATABASE__URL"]["valueFrom"]
    assert "secretKeyRef" in env["MODERATION_KAFKA__SASL_PASSWORD"]["valueFrom"]
    assert env["HF_HOME"]["value"].startswith(VALUES["model"]["cache"]["mountPath"])
    # The worker drains in-flight batches for up to 120 s after SIGTERM.
    assert pod["spec"]["terminationGracePeriodSeconds"] == VALUES["terminationGracePeriodSeconds"] > 120
    # Security contexts come from values through toYaml (a placeholder here): check the values and the wiring.
    assert VALUES["podSecurityContext"]["runAsNonRoot"] is True
    assert VALUES["securityContext"]["readOnlyRootFilesystem"] is True
    assert VALUES["securityContext"]["allowPrivilegeEscalation"] is False
    text = (TEMPLATES / "deployment.yaml").read_text()
    assert "toYaml .Values.podSecurityContext" in text and "toYaml .Values.securityContext" in text
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and mounts["/etc/moderation/policies"] == "policies"
    assert mounts[VALUES["model"]["cache"]["mountPath"]] == "model-cache"
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert {"persistentVolumeClaim", "hostPath", "emptyDir"} <= set(volumes["model-cache"])  # all branches
    assert "checksum/policies" in pod["metadata"]["annotations"]
    assert 'include (print $.Template.BasePath "/configmap-policies.yaml") . | sha256sum' in text


def test_gpu_values_request_the_device() -> None:
    values = VALUE_SETS["ci/gpu-keda-values.yaml"]
    (container,) = _by_kind(values)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_service_and_servicemonitor_use_the_metrics_port() -> None:
    resources = _by_kind(VALUES)
    (port,) = resources["Service"]["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    assert resources["ServiceMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"
    assert resources["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"


def test_migration_job_is_a_hook_after_the_secret() -> None:
    resources = _by_kind(VALUES)
    job, secret = resources["Job"], resources["Secret"]
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hooks["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(hooks["helm.sh/hook-weight"])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["moderation", "migrate"]
    assert "secretKeyRef" in {e.get("name"): e for e in container["env"]}["MODERATION_DATABASE__URL"]["valueFrom"]


def test_keda_scaledobject_and_partition_cap() -> None:
    scaled = _by_kind(VALUES)["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert set(trigger["metadata"]) >= {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}
    text = (TEMPLATES / "scaledobject.yaml").read_text()
    assert "gt (int .Values.keda.maxReplicas) (int .Values.kafka.inputTopicPartitions)" in text
    assert "{{- fail" in text
    for name, values in VALUE_SETS.items():  # what the chart's fail enforces, for the shipped values
        assert values["keda"]["maxReplicas"] <= values["kafka"]["inputTopicPartitions"], name


def test_env_names_are_real_settings() -> None:
    settings = set(environment_variables())
    used = set()
    for source in list(TEMPLATES.iterdir()) + CI_FILES:
        used |= set(re.findall(r"\bMODERATION_[A-Z0-9_]*[A-Z0-9]", source.read_text()))
    assert len(used) > 20
    assert not used - settings


def test_policies_default_matches_the_repository_policy() -> None:
    policies = VALUES["policies"]
    assert policies["active"] in policies["files"]
    shipped = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    assert yaml.safe_load(policies["files"]["default.yaml"]) == shipped


def test_policy_configmap_is_mounted_data() -> None:
    configmap = next(
        doc for doc in documents(TEMPLATES / "configmap-policies.yaml", VALUES) if doc["kind"] == "ConfigMap"
    )
    assert configmap["data"]


# -------------------------------------------------------------------------------------------- dashboard

EXTERNAL_METRICS: set[str] = set()  # metrics the dashboard may query that the worker does not export


def _worker_metric_names() -> set[str]:
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for family in WorkerMetrics().registry.collect():
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_dashboard_queries_only_worker_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "moderation.json").read_text())
    known = _worker_metric_names()
    assert "moderation_end_to_end_seconds_bucket" in known and "moderation_verdicts_total" in known
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable.get("definition", "") for variable in dashboard["templating"]["list"]]
    text = "\n".join(queries)
    used = set(re.findall(r"\bmoderation_[a-z0-9_]+", text))
    assert used and not used - known
    selected = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)[ \t]*\{", text))
    assert not selected - known - EXTERNAL_METRICS
    for expected in (
        "rate(moderation_events_consumed_total",
        "rate(moderation_images_scored_total",
        "by (status) (rate(moderation_verdicts_total",
        "by (category) (rate(moderation_flagged_total",
        "by (reason) (rate(moderation_dead_letters_total",
        "by (type) (rate(moderation_errors_total",
        "rate(moderation_back_pressure_pauses_total",
        "moderation_batches_in_flight",
        "moderation_assigned_partitions",
    ):
        assert expected in text, expected
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(moderation_end_to_end_seconds_bucket" in text
    assert "histogram_quantile(0.95, sum by (le, stage) (rate(moderation_stage_seconds_bucket" in text
    lag = [panel for panel in dashboard["panels"] if "consumer lag" in panel["title"].lower()]
    assert lag and "moderation_consumer_lag" in json.dumps(lag[0]["targets"]) and "KEDA" in lag[0]["description"]


def test_dashboard_configmap_carries_the_sidecar_label() -> None:
    assert VALUES["dashboard"]["labels"] == {"grafana_dashboard": "1"}
    assert '.Files.Get "dashboards/moderation.json"' in (TEMPLATES / "configmap-dashboard.yaml").read_text()


def test_renderer_catches_a_misindented_template(tmp_path: Path) -> None:
    # The stand-in renderer must not hide structure mistakes: an include with the wrong nindent breaks YAML.
    broken = (TEMPLATES / "service.yaml").read_text().replace("| nindent 4 }}", "| nindent 1 }}", 1)
    template = tmp_path / "service.yaml"
    template.write_text(broken)
    with pytest.raises(yaml.YAMLError):
        documents(template, VALUES)
