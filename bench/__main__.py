"""`python -m bench ...`: the benchmark command. It imports no web package, so the GPU check
runs the engine, adaptive and overhead benchmarks through it. See bench/cli.py."""

from __future__ import annotations

from bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m bench"))
