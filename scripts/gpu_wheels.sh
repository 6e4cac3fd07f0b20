#!/usr/bin/env bash
# The wheels the lent GPU machine lacks for the HTTP side (the service benchmark and the front-end
# sweep of scripts/gpu_check.sh): the web stack, pyzmq and msgspec at this venv's versions, for
# that machine's Python (3.12, x86-64 manylinux), without their dependencies (the machine has
# the rest: anyio, click, h11, httpx, numpy, uvloop, ...). About 9 MB.
#
#   scripts/gpu_wheels.sh DIR [PYTHON_VERSION]      # e.g. scripts/gpu_wheels.sh .whl 3.12
#
# Then carry DIR and start the device command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DIR/*.whl &&
#   export PYTHONPATH=/tmp/site:$PYTHONPATH
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == -* ]]; then
    echo "usage: $0 DIR [PYTHON_VERSION]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
DIR=$1
PY_VERSION=${2:-3.12}
PYTHON=${PYTHON:-.venv/bin/python}
PACKAGES=(fastapi starlette pydantic pydantic-core pydantic-settings uvicorn httptools orjson
    pyzmq msgspec annotated-types typing-inspection python-dotenv opentelemetry-api)

pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$PYTHON" -c 'import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))' "$name")
    pins+=("$name==$version")
done
mkdir -p "$DIR"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version "$PY_VERSION" "${platforms[@]}" -d "$DIR" "${pins[@]}"
ls "$DIR"
du -sh "$DIR"
