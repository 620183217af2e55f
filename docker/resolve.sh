#!/usr/bin/env bash
# Check, without Docker, that the training image's two environments resolve: pip --dry-run of the
# same installs docker/Dockerfile.training makes (xrouter under the lock; vLLM on its own), in a
# throwaway venv. Needs PyPI. Usage: bash docker/resolve.sh [python]
set -euo pipefail
python=${1:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
vllm_version=$(sed -nE 's/^ARG VLLM_VERSION=(.*)$/\1/p' "$root/docker/Dockerfile.training")
"$python" -m venv "$work/venv"
pip=("$work/venv/bin/pip" install --quiet --dry-run --ignore-installed --disable-pip-version-check)
sed -E 's/\+cpu$//' "$root/requirements/lock.txt" > "$work/constraints.txt"
"${pip[@]}" -c "$work/constraints.txt" "$root" --report "$work/xrouter.json"
"${pip[@]}" --no-deps -r "$root/requirements/no-deps.txt"
"${pip[@]}" "vllm==$vllm_version" "torch==2.13.0" --report "$work/vllm.json"
"$work/venv/bin/python" - "$work" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
for name in ("xrouter", "vllm"):
    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                 for i in json.loads((work / f"{name}.json").read_text())["install"]}
    shown = ", ".join(f"{k} {installed[k]}" for k in ("torch", "protobuf", "grpcio", "transformers", "vllm") if k in installed)
    print(f"ok  /opt/{name}: {len(installed)} packages resolve ({shown})")
PY
