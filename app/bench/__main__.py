"""`python -m app.bench ...`: the benchmark command without the service's entry point (which
the GPU check uses, as it imports no web package). See app/bench/cli.py."""

from __future__ import annotations

from app.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m app.bench"))
