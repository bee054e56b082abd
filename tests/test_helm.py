"""The Helm chart in helm/moderation, checked without a helm binary.

A small stand-in renderer expands the chart's own `define`s, substitutes scalar `.Values` paths with their
values (numbers printed as Helm prints them: float64, so 1000000 becomes 1e+06 unless piped through int64)
and every other expression with a placeholder, and drops control actions (`if`, `range`, `with`, `end`,
`fail`, ...), keeping every branch. That is enough to check that each template is well-formed YAML
with the resources, labels, probes and environment the worker needs; it does not evaluate conditions, so
what `helm template` actually emits for a given values file is NOT checked here.
"""

from __future__ import annotations

import copy
import json
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from consumers.metrics import WorkerMetrics
from moderation.policy import parse_policy
from moderation.settings import Settings, environment_variables

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "moderation"
TEMPLATES = CHART / "templates"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
MANIFESTS = sorted(TEMPLATES.glob("*.yaml"))
PLACEHOLDER = "placeholder"
POLICY_DIR = "/etc/moderation/policies"  # where the workers mount the policies ConfigMap

# --------------------------------------------------------------------------------------------- renderer

_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_CONTROL = re.compile(r"^(if|else|end|range|with|define|block|template|fail)\b")
_ASSIGN = re.compile(r"^\$[A-Za-z0-9_]*\s*:?=")
_INDENT = re.compile(r"\|\s*(n?indent)\s+(\d+)\s*$")
_SIMPLE = re.compile(r"^\$?\.Values\.([A-Za-z0-9_.]+)((?:\s*\|\s*(?:quote|int64|int|toString))*)$")
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


def go_number(value: float) -> str:
    """A number as Helm prints a value from values.yaml: a float64 through fmt's %v (shortest digits, an
    exponent from 1e+06 up), e.g. 20971520 -> "2.097152e+07" and 5.0 -> "5"."""
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # where the decimal point sits among the digits
    if point - 1 < -4 or point - 1 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        body = f"{mantissa}e{point - 1:+03d}"
    elif point <= 0:
        body = "0." + "0" * -point + text
    else:
        body = text.ljust(point, "0") if point >= len(text) else f"{text[:point]}.{text[point:]}"
    return ("-" if sign else "") + body


def _scalar(value: Any, quote: bool, integer: bool = False) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int | float):
        text = str(int(value)) if integer else go_number(value)
    else:
        text = "" if value is None else str(value)
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
        pipes = re.findall(r"[a-z0-9]+", simple.group(2).lower())
        integer = "int" in pipes or "int64" in pipes
        body = _scalar(value, "quote" in pipes, integer) if not isinstance(value, dict | list) else PLACEHOLDER
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


def _by_template(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each manifest template's one resource (all branches kept), by file name."""
    return {template.name: doc for template in MANIFESTS for doc in documents(template, values)}


def _by_kind(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The resources of each kind the chart makes one of; the workers' Deployment for "Deployment"."""
    resources = _by_template(values)
    kinds = {doc["kind"]: doc for name, doc in resources.items() if name != "deployment-outcomes.yaml"}
    assert kinds["Deployment"] is resources["deployment.yaml"]
    return kinds


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
        "cronjob-embeddings-prune.yaml",
        "deployment-outcomes.yaml",
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
        ("batching.drainTimeoutS", 0),
        ("ops.port", 70000),
        ("model.cache.type", "nfs"),
        ("log.format", "xml"),
        ("kafka.bootstarpServers", "typo:9092"),
        ("kafka.reviewOutcomesTopic", ""),
        ("policies.shadow", "candidate.yaml"),
        ("policies.shadow", ["candidate.yaml", "candidate.yaml"]),
        ("policies.sources", {"kids-app": "/etc/moderation/policies/strict.yaml"}),
        ("policies.sources", ["strict.yaml"]),
        ("policies.reloadIntervalS", -1),
        ("policies.rollOnChange", "no"),
        ("embeddings.retentionDays", -1),
        ("embeddings.cacheSize", 1.5),
        ("embeddings.prune.schedule", "daily"),
        ("embeddings.prune.concurrencyPolicy", "Allow"),
        ("outcomes.replicas", -1),
        ("outcomes.port", 9108),
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


def test_schema_wants_reloading_when_policy_changes_do_not_roll_the_pods() -> None:
    values = copy.deepcopy(VALUES)
    values["policies"] |= {"rollOnChange": False, "reloadIntervalS": 0}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(values)
    values["policies"]["reloadIntervalS"] = 2.5
    jsonschema.Draft7Validator(SCHEMA).validate(values)
    values["policies"] |= {"rollOnChange": True, "reloadIntervalS": 0}  # rolling alone is fine
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
    # The worker drains in-flight batches for up to batching.drainTimeoutS after SIGTERM; the chart fails
    # unless the grace period is longer.
    assert pod["spec"]["terminationGracePeriodSeconds"] == VALUES["terminationGracePeriodSeconds"] > 120
    assert env["MODERATION_BATCHING__DRAIN_TIMEOUT_S"]["value"] == go_number(VALUES["batching"]["drainTimeoutS"])
    check = "ge (float64 .Values.batching.drainTimeoutS) (float64 .Values.terminationGracePeriodSeconds)"
    preamble = (TEMPLATES / "deployment.yaml").read_text().split("apiVersion")[0]
    assert check in preamble and preamble.count("{{- fail") == 2
    for name, values in VALUE_SETS.items():
        assert values["batching"]["drainTimeoutS"] < values["terminationGracePeriodSeconds"], name
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
    # The roll on a policy change is switchable (hot reload instead), on by default.
    assert VALUES["policies"]["rollOnChange"] is True
    guarded = re.search(r"\{\{-? if \.Values\.policies\.rollOnChange -?\}\}\s*checksum/policies:", text)
    assert guarded, "checksum/policies should sit inside `if .Values.policies.rollOnChange`"


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


# ------------------------------------------------------------------------------------- env -> settings

HELPERS = (TEMPLATES / "_helpers.tpl").read_text()
# `- name: MODERATION_X` / `value: {{ .Values.a.b | ... }}` pairs of the shared environment.
ENV_FROM_VALUES = {
    name: (path, pipes)
    for name, path, pipes in re.findall(
        r"- name: (MODERATION_[A-Z0-9_]+)\n  value: \{\{ \.Values\.([A-Za-z0-9_.]+)((?:\s*\|\s*[a-z0-9]+)*) \}\}",
        HELPERS,
    )
}


def policy_env(values: dict[str, Any]) -> dict[str, str]:
    """What the `range`/`toJson` blocks of moderation.env render (the stand-in renderer leaves placeholders):
    keys of policies.files as paths under the mount, in JSON, sources in key order as Go ranges a map."""
    policies = values["policies"]
    sources = {source: f"{POLICY_DIR}/{file}" for source, file in sorted(policies["sources"].items())}
    shadow = [f"{POLICY_DIR}/{file}" for file in policies["shadow"]]
    return {
        "MODERATION_POLICY__SOURCES": json.dumps(sources, separators=(",", ":")),
        "MODERATION_POLICY__SHADOW": json.dumps(shadow, separators=(",", ":")),
    }


def _container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"] if "name" in item}


def _setting(settings: Settings, name: str) -> Any:
    group, _, field = name.removeprefix("MODERATION_").lower().partition("__")
    return getattr(getattr(settings, group), field) if field else getattr(settings, group)


def test_policy_sources_and_shadow_are_rendered_as_json_paths() -> None:
    for expected in (
        "range $source, $file := .Values.policies.sources",
        f'set $sources $source (printf "{POLICY_DIR}/%s" $file)',
        "value: {{ toJson $sources | quote }}",
        "range .Values.policies.shadow",
        f'$shadow = append $shadow (printf "{POLICY_DIR}/%s" .)',
        "value: {{ toJson $shadow | quote }}",
    ):
        assert expected in HELPERS, expected
    (container,) = _by_kind(VALUES)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}[POLICY_DIR] == "policies"
    assert policy_env(VALUES) == {"MODERATION_POLICY__SOURCES": "{}", "MODERATION_POLICY__SHADOW": "[]"}
    # Every file named by active, sources or shadow must be in the ConfigMap: the chart fails otherwise.
    configmap = (TEMPLATES / "configmap-policies.yaml").read_text()
    assert "hasKey $.Values.policies.files $file" in configmap and "hasKey $.Values.policies.files ." in configmap
    assert configmap.count("{{- fail") == 3
    for name, values in VALUE_SETS.items():  # what those checks enforce, for the shipped values
        policies = values["policies"]
        named = {policies["active"], *policies["sources"].values(), *policies["shadow"]}
        assert named <= set(policies["files"]), name


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_policy_files_in_values_are_valid_policies(name: str) -> None:
    for file, content in VALUE_SETS[name]["policies"]["files"].items():
        parse_policy(content, file)  # raises PolicyError naming the field and problem


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_env_is_accepted_by_the_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Numbers come out as Helm prints them (20971520 would be "2.097152e+07" without int64): the worker's
    # settings must accept every value the chart renders, and each must land in the setting its values key
    # says.
    values = VALUE_SETS[name]
    (container,) = _by_kind(values)["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {key: item["value"] for key, item in _container_env(container).items() if "value" in item}
    # The stand-in renderer keeps both branches of an `if`: drop what the chart's conditions leave out.
    for guard in (
        "{{- if .Values.kafka.saslMechanism }}\n- name: MODERATION_KAFKA__SASL_MECHANISM",
        "{{- if .Values.kafka.tls.caSecretName }}\n- name: MODERATION_KAFKA__SSL_CAFILE",
    ):
        assert guard in HELPERS, guard
    if not values["kafka"]["saslMechanism"]:
        env = {key: value for key, value in env.items() if not key.startswith("MODERATION_KAFKA__SASL_")}
    if not values["kafka"]["tls"]["caSecretName"]:
        env.pop("MODERATION_KAFKA__SSL_CAFILE")
    assert {env[key] for key in policy_env(values)} == {PLACEHOLDER}
    env |= policy_env(values)
    for key in [key for key in os.environ if key.startswith("MODERATION_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    assert len(ENV_FROM_VALUES) > 25
    for variable, (path, _) in ENV_FROM_VALUES.items():
        if variable not in env:
            continue
        expected, actual = _lookup(values, path), _setting(settings, variable)
        actual = str(actual) if isinstance(actual, Path) else actual
        if variable == "MODERATION_POLICY__PATH":
            expected = f"{POLICY_DIR}/{expected}"
        assert actual == expected, (variable, actual, expected)
    policies = values["policies"]
    assert settings.policy.sources == {s: Path(POLICY_DIR, f) for s, f in policies["sources"].items()}
    assert settings.policy.shadow == [Path(POLICY_DIR, f) for f in policies["shadow"]]
    assert settings.kafka.review_outcomes_topic == values["kafka"]["reviewOutcomesTopic"]
    assert settings.ops.enabled and settings.log.format == values["log"]["format"]


def test_integer_settings_are_printed_whole() -> None:
    # Helm holds numbers from values as float64 and prints 1000000 as 1e+06; an int setting refuses that.
    assert go_number(20971520) == "2.097152e+07" and go_number(999999) == "999999" and go_number(5.0) == "5"
    integers = []
    for variable, (path, pipes) in ENV_FROM_VALUES.items():
        group, _, field = variable.removeprefix("MODERATION_").lower().partition("__")
        annotation = Settings.model_fields[group].annotation.model_fields[field].annotation  # type: ignore[union-attr]
        if annotation is int:
            integers.append(variable)
            assert "int64" in pipes, f"{variable}: pipe .Values.{path} through int64"
    assert "MODERATION_IMAGES__MAX_BYTES" in integers and "MODERATION_EMBEDDINGS__CACHE_SIZE" in integers


def test_every_setting_the_chart_sets_is_commented_in_values() -> None:
    values_text = (CHART / "values.yaml").read_text()
    set_by_chart = set(re.findall(r"- name: (MODERATION_[A-Z0-9_]+)", HELPERS))
    fixed = {"MODERATION_DATA_DIR", "MODERATION_OPS__ENABLED", "MODERATION_KAFKA__SASL_PASSWORD"}  # not values
    missing = sorted(name for name in set_by_chart - fixed if name not in values_text)
    assert not missing


# --------------------------------------------------------------------------------- prune and outcomes


def test_embeddings_prune_cronjob_runs_like_the_migration_job() -> None:
    resources = _by_template(VALUES)
    cronjob, job = resources["cronjob-embeddings-prune.yaml"], resources["job-migrate.yaml"]
    assert (cronjob["apiVersion"], cronjob["kind"]) == ("batch/v1", "CronJob")
    assert VALUES["embeddings"]["prune"]["enabled"] is True
    spec = cronjob["spec"]
    assert spec["schedule"] == VALUES["embeddings"]["prune"]["schedule"] == "17 3 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert "helm.sh/hook" not in cronjob["metadata"].get("annotations", {})
    pod = spec["jobTemplate"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "embeddings-prune"
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["moderation", "embeddings", "prune"]
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert _container_env(container) == _container_env(migrate)  # same settings, same Secret references
    assert "MODERATION_EMBEDDINGS__RETENTION_DAYS" in _container_env(container)
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}
    text = (TEMPLATES / "cronjob-embeddings-prune.yaml").read_text()
    for wiring in (
        "toYaml .Values.podSecurityContext",
        "toYaml .Values.securityContext",
        "toYaml .Values.embeddings.prune.resources",
        "{{- if .Values.embeddings.prune.enabled }}",
    ):
        assert wiring in text, wiring
    # Its Jobs append an 11-character suffix: the name is kept within 52 characters.
    assert 'trunc 35 | trimSuffix "-") }}' in text and 35 + len("-embeddings-prune") <= 52


def test_outcomes_deployment_is_optional_and_probe_free() -> None:
    assert VALUES["outcomes"]["enabled"] is False and VALUES["outcomes"]["replicas"] == 1
    assert any(values["outcomes"]["enabled"] for values in VALUE_SETS.values()), "a CI file should enable it"
    resources = _by_template(VALUES)
    deployment, workers = resources["deployment-outcomes.yaml"], resources["deployment.yaml"]
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 1
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "outcomes"
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The workers' Deployment, Service, PDB and ServiceMonitor select component=worker: never these pods.
    component = "app.kubernetes.io/component"
    assert workers["spec"]["selector"]["matchLabels"][component] == "worker"
    assert resources["service.yaml"]["spec"]["selector"][component] == "worker"
    assert resources["pdb.yaml"]["spec"]["selector"]["matchLabels"][component] == "worker"
    assert resources["servicemonitor.yaml"]["spec"]["selector"]["matchLabels"][component] == "worker"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["moderation", "outcomes", "run"]
    (worker,) = workers["spec"]["template"]["spec"]["containers"]
    assert _container_env(container) == _container_env(worker)
    # `moderation outcomes run` serves no HTTP endpoint, so the pod has no port and no HTTP probes. If the
    # command ever starts the ops server, add them (and this check will say so).
    assert not {"ports", "livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    for module in ("consumers/outcomes.py", "consumers/outcome_commands.py"):
        source = (REPO / module).read_text()
        assert "consumers.ops" not in source and "OpsServer" not in source, module
    assert pod["terminationGracePeriodSeconds"] == VALUES["outcomes"]["terminationGracePeriodSeconds"]
    text = (TEMPLATES / "deployment-outcomes.yaml").read_text()
    assert "{{- if .Values.outcomes.enabled }}" in text and "toYaml .Values.outcomes.resources" in text
    assert "toYaml .Values.podSecurityContext" in text and "toYaml .Values.securityContext" in text


def test_ci_values_exercise_policies_outcomes_and_prune() -> None:
    ci = {name: values for name, values in VALUE_SETS.items() if name.startswith("ci/")}
    assert any(values["policies"]["sources"] and values["policies"]["shadow"] for values in ci.values())
    assert any(values["outcomes"]["enabled"] for values in ci.values())
    assert any(not values["policies"]["rollOnChange"] for values in ci.values())
    assert any(not values["embeddings"]["prune"]["enabled"] for values in ci.values())
    # A number over a million somewhere, so the int64 printing is exercised end to end.
    assert any(values["kafka"]["maxPollIntervalMs"] >= 1_000_000 for values in ci.values())


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
        # Policy reloads (applied / refused edits), shadow policies, duplicate reuse, the uncertain band.
        "sum by (result) (increase(moderation_policy_reloads_total",
        "sum by (policy_version) (rate(moderation_shadow_disagreements_total",
        "sum by (policy_version) (rate(moderation_shadow_verdicts_total",
        "sum(rate(moderation_embeddings_reused_total",
        "sum by (category) (rate(moderation_uncertain_total",
    ):
        assert expected in text, expected
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(moderation_end_to_end_seconds_bucket" in text
    assert "histogram_quantile(0.95, sum by (le, stage) (rate(moderation_stage_seconds_bucket" in text
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    places = [tuple(panel["gridPos"][key] for key in ("x", "y")) for panel in dashboard["panels"]]
    assert len(places) == len(set(places)), "two panels in one place"
    reloads = next(panel for panel in dashboard["panels"] if "reload" in panel["title"].lower())
    assert "refused" in reloads["description"] and "applied" in reloads["description"]
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
