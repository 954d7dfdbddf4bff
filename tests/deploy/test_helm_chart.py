"""The Helm chart, linted and rendered by Helm's own Go SDK (helm-python-sdk) for every value set in
helm/sparsecodes/ci/ and the defaults; each rendered object validated with kubernetes-validate --strict
against the Kubernetes versions the chart supports, and its behaviour checked object by object."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.deploy_contract import (
    CHART,
    SECRET_SETTINGS,
    SETTINGS,
    VALUE_SETS,
    Manifest,
    only,
)

Render = Callable[..., list[Manifest]]

# The oldest version Chart.yaml's kubeVersion admits, and the version Helm's SDK renders for
# (.Capabilities.KubeVersion); kubernetes-validate ships both schemas, so this runs offline.
KUBE_VERSIONS = ("1.25.0", "1.36.0")
# The value sets the deployment issue names; the ci/ folder may hold more, and all are tested.
REQUIRED_SETS = {"default", "gpu", "hpa", "servicemonitor", "redis-bundled", "redis-external"}
SERVICEMONITOR_SCHEMA = json.loads(
    (Path(__file__).parent / "schemas" / "servicemonitor-monitoring-v1.json").read_text()
)
FULLNAME = "demo-sparsecodes"  # release "demo" of chart "sparsecodes"


def values_of(name: str) -> dict[str, Any]:
    return VALUE_SETS[name]


def pod_spec(docs: list[Manifest]) -> dict[str, Any]:
    return only(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]


def api_container(docs: list[Manifest]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(docs)["containers"] if c["name"] == "api"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------- lint, render, validate: every value set ----------


def test_the_issue_s_value_sets_are_all_there() -> None:
    assert VALUE_SETS.keys() >= REQUIRED_SETS, f"missing value sets: {REQUIRED_SETS - VALUE_SETS.keys()}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_lints_clean_in_strict_mode(name: str) -> None:
    report = helm_python.lint(CHART, values_of(name), strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert report["errors"] == [] and problems == [], problems or report["errors"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_validates_strictly(name: str, render: Render) -> None:
    docs = render(values_of(name))
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            # A CRD: kubernetes-validate has no schema for it; checked against the CRD subset shipped here.
            jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validate_command_accepts_every_rendered_manifest(render: Render, tmp_path: Path) -> None:
    """The same check through the `kubernetes-validate --strict` command, over every value set at once."""
    files = []
    for name in sorted(VALUE_SETS):
        for i, doc in enumerate(render(values_of(name))):
            if doc["kind"] != "ServiceMonitor":  # no schema in kubernetes-validate (see above)
                path = tmp_path / f"{name}-{i}-{doc['kind'].lower()}.yaml"
                path.write_text(yaml.safe_dump(doc))
                files.append(str(path))
    command = [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet"]
    for version in KUBE_VERSIONS:
        result = subprocess.run(
            [*command, "-k", version, *files], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_catches_a_misspelt_field(render: Render) -> None:
    """The validation above is not vacuous: a field Kubernetes does not know is rejected."""
    deployment = only(render(), "Deployment", FULLNAME)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# ---------- the schema rejects bad values ----------

BAD_VALUES = [
    ({"config": {"logFormat": "yaml"}}, "logFormat"),
    ({"config": {"port": "8000"}}, "port"),
    ({"config": {"maxRows": 0}}, "maxRows"),
    ({"config": {"maxBatchSize": -1}}, "maxBatchSize"),
    ({"config": {"cacheTTL": 60}}, "cacheTTL"),
    ({"replicas": 3}, "replicas"),
    ({"redis": {"mode": "memcached"}}, "mode"),
    ({"models": {"source": "s3"}}, "source"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"auth": {"apiKeys": ["one,two"]}}, "apiKeys"),
    ({"gpu": {"enabled": "yes"}}, "enabled"),
    ({"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "targetCPUUtilizationPercentage"),
]


@pytest.mark.parametrize(("values", "named"), BAD_VALUES, ids=[v[1] for v in BAD_VALUES])
def test_schema_rejects_a_bad_value(chart: Any, values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=named):
        chart.validate_schema(values)
    with pytest.raises(helm_python.HelmValuesError, match=named):  # and an install/template would stop too
        chart.render(values, name="demo", namespace="ml")
    assert helm_python.lint(CHART, values)["errors"], "lint must report the bad value as well"


CONTRADICTIONS = [
    ({"redis": {"mode": "external"}}, "redis.external.url or redis.external.existingSecret"),
    (
        {"redis": {"mode": "external", "external": {"url": "redis://r:6379", "existingSecret": "s"}}},
        "not both",
    ),
    ({"models": {"source": "pvc"}}, "models.pvc.claimName"),
    ({"models": {"source": "initContainer"}}, "models.initContainer.image"),
    ({"auth": {"apiKeys": ["k"], "existingSecret": "s"}}, "auth.apiKeys or auth.existingSecret"),
    ({"shutdown": {"terminationGracePeriodSeconds": 10}}, "in-flight requests would be killed"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}, "minReplicas=5 is greater"),
    ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": 0}}, "at least one target"),
]


@pytest.mark.parametrize(("values", "message"), CONTRADICTIONS, ids=[m for _, m in CONTRADICTIONS])
def test_contradictory_values_fail_with_a_message_naming_the_fix(
    chart: Any, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        chart.render(values, name="demo", namespace="ml")


# ---------- values.yaml and its schema ----------


def value_lines() -> list[tuple[int, tuple[str, ...], str]]:
    """(line number, key path, comment above) for every key of values.yaml outside list items."""
    out, stack, comment, list_indent = [], [], [], None
    for number, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        if not text:
            comment = []
        elif text.startswith("#"):
            comment.append(text.lstrip("#").strip())
        elif text.startswith("- "):
            list_indent, comment = indent, []
        elif list_indent is not None and indent > list_indent:
            continue  # inside a list item: described by its list's comment
        elif m := re.match(r"([\w./-]+):", text):
            list_indent = None
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(1)))
            out.append((number, tuple(k for _, k in stack), " ".join(comment)))
            comment = []
    return out


def test_every_value_has_a_comment() -> None:
    lines = value_lines()
    assert len(lines) > 100
    undocumented = [f"values.yaml:{n} {'.'.join(path)}" for n, path, comment in lines if not comment]
    assert undocumented == []


def test_schema_describes_every_value_and_allows_no_other(chart: Any) -> None:
    schema = chart.schema
    for _, path, comment in value_lines():
        node, dotted = schema, ".".join(path)
        for key in path:
            if "properties" not in node and isinstance(node.get("additionalProperties"), dict):
                break  # a free-form map (labels, node selectors): its keys are the user's
            assert key in node.get("properties", {}), f"values.schema.json has no entry for {dotted}"
            node = node["properties"][key]
        else:
            assert node.get("description") == comment, (
                f"{dotted}: schema description differs from values.yaml"
            )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["config"]["additionalProperties"] is False


def test_config_block_maps_one_to_one_onto_the_service_settings(chart: Any) -> None:
    config = chart.values["config"]
    as_env = {
        "SPARSECODES_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper(): value for key, value in config.items()
    }
    assert set(as_env) == set(SETTINGS) - SECRET_SETTINGS
    for name, value in as_env.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        assert text == SETTINGS[name], f"{name}: chart default {text!r}, service default {SETTINGS[name]!r}"


def test_chart_config_matches_the_service_settings_class(chart: Any) -> None:
    """The same mapping checked against the service's own pydantic-settings class."""
    from pydantic_settings import BaseSettings

    import sparsecodes.serve.settings as module

    classes = [
        c
        for c in vars(module).values()
        if isinstance(c, type)
        and issubclass(c, BaseSettings)
        and c is not BaseSettings
        and c.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"expected one settings class in sparsecodes.serve.settings, found {classes}"
    settings = classes[0]
    prefix = settings.model_config.get("env_prefix", "")
    service_env = {(prefix + name).upper(): field for name, field in settings.model_fields.items()}
    assert set(service_env) == set(SETTINGS), (
        f"only in the service: {set(service_env) - set(SETTINGS)}; "
        f"only in the chart: {set(SETTINGS) - set(service_env)}"
    )
    # Same defaults, but where a container needs its own: bind every interface, bundles at /models.
    container_overrides = {"SPARSECODES_HOST", "SPARSECODES_MODEL_DIR"}
    for name, field in service_env.items():
        if name in container_overrides or name in SECRET_SETTINGS:
            continue
        default, ours = field.get_default(call_default_factory=True), SETTINGS[name]
        if isinstance(default, bool):
            assert str(default).lower() == ours, name
        elif isinstance(default, int | float):
            assert float(default) == float(ours), f"{name}: service default {default}, chart default {ours}"
        else:
            assert str(default) == ours, f"{name}: service default {default!r}, chart default {ours!r}"


# ---------- the default release ----------


def test_configmap_carries_every_setting_from_config(render: Render) -> None:
    data = only(render(), "ConfigMap")["data"]
    assert data == {**{k: v for k, v in SETTINGS.items() if k != "SPARSECODES_API_KEYS"}}
    changed = only(render({"config": {"maxRows": 100, "maxBodyBytes": 1073741824}}), "ConfigMap")["data"]
    assert changed["SPARSECODES_MAX_ROWS"] == "100"
    assert changed["SPARSECODES_MAX_BODY_BYTES"] == "1073741824"  # no float exponent


def test_api_keys_never_land_in_the_configmap(render: Render) -> None:
    docs = render(values_of("redis-bundled"))
    assert "SPARSECODES_API_KEYS" not in only(docs, "ConfigMap")["data"]
    secret = only(docs, "Secret")
    assert secret["stringData"]["SPARSECODES_API_KEYS"] == "key-one,key-two"
    ref = env_of(api_container(docs))["SPARSECODES_API_KEYS"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "SPARSECODES_API_KEYS"}


def test_pods_are_hardened(render: Render) -> None:
    for name in sorted(VALUE_SETS):
        docs = render(values_of(name))
        pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
        pods += [d["spec"] for d in docs if d["kind"] == "Pod"]
        for pod in pods:
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] > 0, name
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
            assert pod["automountServiceAccountToken"] is False, name
            for container in pod["containers"] + pod.get("initContainers", []):
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
                assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
                assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
                assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), (
                    name,
                    container["name"],
                )
                assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), (name, container["name"])


def test_api_pod_has_scratch_space_and_no_service_links(render: Render) -> None:
    spec = pod_spec(render())
    assert spec["enableServiceLinks"] is False  # else SPARSECODES_PORT=tcp://... could be injected
    mounts = {m["mountPath"]: m["name"] for m in api_container(render())["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_probes_use_the_health_endpoints(render: Render) -> None:
    api = api_container(render())
    assert api["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = api["startupProbe"]
    # Session creation and warm-up get minutes, not the liveness probe's seconds.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert [p["containerPort"] for p in api["ports"] if p["name"] == "http"] == [8000]
    assert [p["containerPort"] for p in api["ports"] if p["name"] == "grpc"] == [8001]
    no_grpc = api_container(render({"config": {"grpcPort": 0}}))
    assert [p["name"] for p in no_grpc["ports"]] == ["http"]


def test_graceful_shutdown_outlasts_the_drain(render: Render) -> None:
    docs = render()
    spec, api = pod_spec(docs), api_container(docs)
    sleep = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = int(only(docs, "ConfigMap")["data"]["SPARSECODES_GRACEFUL_TIMEOUT_S"])
    assert sleep > 0
    assert spec["terminationGracePeriodSeconds"] >= sleep + drain
    longer = render({"config": {"gracefulTimeoutS": 60}, "shutdown": {"terminationGracePeriodSeconds": 70}})
    assert pod_spec(longer)["terminationGracePeriodSeconds"] == 70


def test_settings_changes_roll_the_pods(render: Render) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        annotations = only(render(values), "Deployment", FULLNAME)["spec"]["template"]["metadata"][
            "annotations"
        ]
        return {k: v for k, v in annotations.items() if k.startswith("checksum/")}

    base = checksums({})
    assert checksums({"config": {"logLevel": "debug"}})["checksum/config"] != base["checksum/config"]
    assert checksums({"auth": {"apiKeys": ["k"]}})["checksum/secret"] != base["checksum/secret"]


def test_service_and_pdb_select_the_api_pods(render: Render) -> None:
    docs = render()
    pod_labels = only(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    service = only(docs, "Service", FULLNAME)
    assert selects(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
    ]
    pdb = only(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert only(docs, "Deployment", FULLNAME)["spec"]["replicas"] == 2


def test_notes_warn_when_authentication_is_off(chart: Any) -> None:
    def notes(values: dict[str, Any]) -> str:
        return chart.render(values, name="demo", namespace="ml")["sparsecodes/templates/NOTES.txt"]

    assert "authentication is off" in notes({})
    with_keys = notes({"auth": {"existingSecret": "api-keys"}})
    assert "authentication is off" not in with_keys and "api-keys" in with_keys


# ---------- models: image, PVC, init container, baked ----------


def models_mount(docs: list[Manifest]) -> dict[str, Any] | None:
    mounts = [m for m in api_container(docs)["volumeMounts"] if m["mountPath"] == "/models"]
    return mounts[0] if mounts else None


def test_models_from_an_image_are_copied_by_an_init_container(render: Render) -> None:
    docs = render()
    (init,) = pod_spec(docs)["initContainers"]
    assert init["image"] == "sparsecodes-models:0.1.0"
    assert init["command"] == ["cp", "-R", "/models/.", "/mnt/models/"]
    assert {"name": "models", "mountPath": "/mnt/models"} in init["volumeMounts"]
    assert models_mount(docs) == {"name": "models", "mountPath": "/models", "readOnly": True}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["models"]["emptyDir"] == {"sizeLimit": "2Gi"}


def test_models_from_a_pvc_are_mounted_read_only(render: Render) -> None:
    docs = render(values_of("pvc-models"))
    assert "initContainers" not in pod_spec(docs)
    assert models_mount(docs) == {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "v1"}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {
        "claimName": "sparsecodes-bundles",
        "readOnly": True,
    }


def test_models_from_your_init_container(render: Render) -> None:
    docs = render(values_of("init-container-models"))
    (init,) = pod_spec(docs)["initContainers"]
    assert init["image"] == "amazon/aws-cli:2.17.0"
    assert init["args"][-1] == "/models/"
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    assert env_of(init)["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "bundle-reader"
    assert models_mount(docs)["readOnly"] is True


def test_baked_models_need_no_volume(render: Render) -> None:
    docs = render(values_of("baked-models"))
    assert "initContainers" not in pod_spec(docs) and models_mount(docs) is None
    assert api_container(docs)["image"] == "registry.example.com/sparsecodes-with-models:2024-06-01"
    (spread,) = pod_spec(docs)["topologySpreadConstraints"]
    pod_labels = only(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    assert selects(spread["labelSelector"]["matchLabels"], pod_labels)
    assert env_of(api_container(docs))["OMP_NUM_THREADS"] == "2"


# ---------- GPU, autoscaling, monitoring ----------


def test_gpu_values_request_a_gpu_on_gpu_nodes(render: Render) -> None:
    docs = render(values_of("gpu"))
    spec, api = pod_spec(docs), api_container(docs)
    assert api["image"] == "sparsecodes-gpu:0.1.0"
    assert api["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["runtimeClassName"] == "nvidia"
    cpu = render()
    assert "nvidia.com/gpu" not in api_container(cpu)["resources"]["limits"]
    assert "nodeSelector" not in pod_spec(cpu) and "tolerations" not in pod_spec(cpu)


def test_hpa_scales_the_deployment(render: Render) -> None:
    docs = render(values_of("hpa"))
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    assert metrics["Pods"]["pods"]["metric"]["name"] == "sparsecodes_requests_in_flight"
    # The autoscaler owns the replica count; a fixed one would fight it on every upgrade.
    assert "replicas" not in only(docs, "Deployment", FULLNAME)["spec"]
    assert not [d for d in render() if d["kind"] == "HorizontalPodAutoscaler"]


def test_servicemonitor_scrapes_the_api_service(render: Render) -> None:
    docs = render(values_of("servicemonitor"))
    monitor, service = only(docs, "ServiceMonitor"), only(docs, "Service", FULLNAME)
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == ("/metrics", "10s", "5s")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]


def test_servicemonitor_schema_catches_a_misplaced_field(render: Render) -> None:
    monitor = only(render(values_of("servicemonitor")), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["metricsPath"] = "/metrics"
    with pytest.raises(jsonschema.ValidationError, match="metricsPath"):
        jsonschema.validate(monitor, SERVICEMONITOR_SCHEMA)


# ---------- Redis: none, bundled, external ----------


def test_no_redis_means_the_in_process_cache(render: Render) -> None:
    docs = render()
    assert only(docs, "ConfigMap")["data"]["SPARSECODES_REDIS_URL"] == ""
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"] == [FULLNAME]


def test_bundled_redis_is_reachable_only_from_the_api(render: Render) -> None:
    docs = render(values_of("redis-bundled"))
    redis_deployment = only(docs, "Deployment", "demo-sparsecodes-redis")
    redis_service = only(docs, "Service", "demo-sparsecodes-redis")
    redis_labels = redis_deployment["spec"]["template"]["metadata"]["labels"]
    api_labels = only(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["labels"]
    url = only(docs, "ConfigMap")["data"]["SPARSECODES_REDIS_URL"]
    assert url == f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"
    assert selects(redis_service["spec"]["selector"], redis_labels)
    # The API Service must not send traffic to the Redis pod, nor the Redis Service to API pods.
    assert not selects(only(docs, "Service", FULLNAME)["spec"]["selector"], redis_labels)
    assert not selects(redis_service["spec"]["selector"], api_labels)
    policy = only(docs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], redis_labels)
    (rule,) = policy["spec"]["ingress"]
    assert selects(rule["from"][0]["podSelector"]["matchLabels"], api_labels)
    redis_args = redis_deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "allkeys-lru"


def test_external_redis_url_comes_from_a_secret(render: Render) -> None:
    docs = render(values_of("redis-external"))
    assert "SPARSECODES_REDIS_URL" not in only(docs, "ConfigMap")["data"]
    env = env_of(api_container(docs))
    assert env["SPARSECODES_REDIS_URL"] == {"secretKeyRef": {"name": "sparsecodes-redis", "key": "url"}}
    assert env["SPARSECODES_API_KEYS"] == {"secretKeyRef": {"name": "sparsecodes-api-keys", "key": "keys"}}
    assert not [d for d in docs if d["kind"] == "Secret"]  # both Secrets are the user's

    by_url = render(values_of("redis-external-url"))
    secret = only(by_url, "Secret")
    assert secret["stringData"] == {"SPARSECODES_REDIS_URL": "redis://:s3cret@redis.cache.svc:6379/0"}
    assert (
        env_of(api_container(by_url))["SPARSECODES_REDIS_URL"]["secretKeyRef"]["name"]
        == secret["metadata"]["name"]
    )
    assert "s3cret" not in json.dumps(only(by_url, "ConfigMap"))
