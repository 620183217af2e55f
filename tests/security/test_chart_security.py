"""The chart's side of issue 15 (rendered with the real Helm, as tests/test_chart.py does): the
router's metrics never on its public Service; TLS mounted from a Secret everywhere, with probes on
the plaintext health-only port; the initial admin key is the one `helm test` uses."""

from __future__ import annotations

import subprocess

from test_chart import CHART, SETTINGS, _helm, component, container_env, find, render


def test_metrics_are_never_on_the_routers_public_service() -> None:
    """Every tenant's spend is in /metrics: the router's public Service (maybe a LoadBalancer) has
    no metrics port; a ClusterIP Service of its own has, with the job name the alert rules use."""
    docs = render("full", "router.service.type=LoadBalancer")
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    public, scraped = services["xrouter-router"], services["xrouter-router-metrics"]
    assert {p["name"] for p in public["spec"]["ports"]} == {"grpc", "http"} and public["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in scraped["spec"]["ports"]] == ["metrics"] and scraped["spec"]["type"] == "ClusterIP"
    assert scraped["metadata"]["labels"]["xrouter.io/metrics-job"] == "xrouter-router"
    (monitor,) = find(docs, "ServiceMonitor")
    assert monitor["spec"]["jobLabel"] == "xrouter.io/metrics-job"
    for service in find(docs, "Service"):
        if "metrics" in {p["name"] for p in service["spec"]["ports"]} and component(service) != "postgresql":
            assert service["metadata"]["labels"]["xrouter.io/metrics-job"] == f"xrouter-{component(service)}"


def test_tls_mounts_the_secret_everywhere_and_probes_use_the_health_port() -> None:
    docs = render("full")
    for deployment in find(docs, "Deployment"):
        name = component(deployment)
        if name not in SETTINGS:
            continue
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = container_env(deployment, docs)
        prefix = f"XROUTER_{name.upper()}"
        assert {env[f"{prefix}_TLS_{k}_FILE"] for k in ("CERT", "KEY", "CA")} == {
            "/etc/xrouter/tls/tls.crt", "/etc/xrouter/tls/tls.key", "/etc/xrouter/tls/ca.crt"}
        assert env[f"{prefix}_HEALTH_PORT"] == "8086"
        assert {"name": "tls", "mountPath": "/etc/xrouter/tls", "readOnly": True} in container["volumeMounts"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "xrouter-tls"
        assert {container[p]["grpc"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {8086}
    # Off (the default): plaintext, probes on the service port.
    for deployment in find(render("default"), "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert not any(e["name"].endswith("_TLS_CERT_FILE") for e in container.get("env", []))
        assert container["livenessProbe"]["grpc"]["port"] != 8086
    done = subprocess.run([_helm(), "template", "x", str(CHART), "--set", "tls.enabled=true"], capture_output=True, text=True)
    assert done.returncode != 0 and "tls.existingSecret" in done.stderr
