"""Front-end processes sweep: the sidecar with `SIDECAR_WORKERS` = each value, default settings
otherwise, one text per request from 32 clients, and what each request costs in CPU.

Method (also in docs/benchmarks.md): per worker count, a real `python -m app serve` process tree
is started alone on the machine and warmed up; then one load run (its own process) is measured
while the CPU time (user + system) of every thread of every process of the server is read from
/proc before and after.
- service CPU per request: every thread of every process, over the requests;
- model forward CPU per text: the threads of the process holding the model (the engine process,
  or the one process with one front end) other than its main thread and zmq's: the worker thread
  that runs the runner and torch's intra-op threads;
- serving overhead = service CPU per request - model forward CPU per text;
- engine outside the forward (with an engine process): its main thread (event loop, batcher,
  messages) and zmq's I/O thread, per text;
- front ends busy: each front end's CPU over the run's wall time, mean and max (near 100 %: the
  front ends are the limit; a max far above the mean: connections spread unevenly);
- load generator busy: its own CPU over its processes' wall time (near 100 % it may be what
  limits the requests/s; more than 32 clients are split over processes, `load_processes`).
For reference the raw runner (`bench.raw_runner`: the runner alone, no HTTP, queue or tokenizer)
runs the same texts at the mean batch size the service formed, alone on the machine: on this
2-core machine a forward next to a busy event loop costs more CPU than alone, and the service's
batches vary in size around that mean, so it is lower than the forward measured in the service.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import make_texts
from bench.service import run_loadgen
from tests.server_process import ROOT, SidecarProcess, child_pids

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each live thread of `pid`: tid -> (name, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)
    return out


def _delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[int, tuple[str, float]]:
    return {t: (n, s - before.get(t, (n, 0.0))[1]) for t, (n, s) in after.items()}


def measure(
    workers: int, model: str, clients: int, requests: int, texts_file: Path, log: Path
) -> dict[str, Any]:
    token = secrets.token_hex(8)
    env = {"SIDECAR_MODEL": model, "SIDECAR_WORKERS": str(workers), "SIDECAR_ADMIN_TOKEN": token}
    auth = {"Authorization": f"Bearer {token}"}
    server = SidecarProcess(env, log)
    with server:
        server.wait_ready(300)
        url = server.url + "/infer"
        run_loadgen(url, texts_file, clients, requests // 2)  # captures, first sight
        pids = [server.pid, *child_pids(server.pid)]
        model_pid = server.children().get("engine", [server.pid])[0]
        front_ends = server.children().get("front-end", [])
        stats0 = httpx.get(server.url + "/admin/stats", headers=auth).json()
        cpu0 = {pid: thread_cpu(pid) for pid in pids}
        load = run_loadgen(url, texts_file, clients, requests)
        cpu1 = {pid: thread_cpu(pid) for pid in pids}
        stats1 = httpx.get(server.url + "/admin/stats", headers=auth).json()
    texts = stats1["texts"] - stats0["texts"]
    batches = stats1["batches"] - stats0["batches"]
    used = {pid: _delta(cpu0[pid], cpu1[pid]) for pid in pids}
    service = sum(s for threads in used.values() for _, s in threads.values())
    model_threads = used[model_pid]
    forward = sum(
        s for tid, (name, s) in model_threads.items() if tid != model_pid and "ZMQ" not in name
    )
    serving_engine = sum(s for _, s in model_threads.values()) - forward
    # How busy the front ends were (CPU over the run's wall time): near 1.0 they were the limit;
    # a max far above the mean says the connections were not spread evenly.
    front_busy = [
        sum(s for _, s in used[pid].values()) / load["wall_seconds"] for pid in front_ends
    ]
    return {
        "workers": workers,
        "requests_per_s": load["throughput_rps"],
        "p50_ms": load["p50_ms"],
        "errors": load["errors"],
        "mean_batch": texts / max(1, batches),
        "service_cpu_us_per_request": 1e6 * service / load["ok"],
        "forward_cpu_us_per_text": 1e6 * forward / texts,
        "serving_overhead_us": 1e6 * (service / load["ok"] - forward / texts),
        "engine_outside_forward_us": 1e6 * serving_engine / texts if workers > 1 else None,
        "loadgen_busy": load["client_busy"],
        "front_end_busy_mean": sum(front_busy) / len(front_busy) if front_busy else None,
        "front_end_busy_max": max(front_busy, default=None),
    }


def raw_cpu_per_text(model: str, batch: int, texts_file: Path, count: int) -> float:
    """The raw runner alone on the machine, as the sidecar's defaults resolve here (device,
    dtype, graph mode): its process CPU per text."""
    from app.devices import resolve_device, resolve_dtype, resolve_graph_mode

    device = resolve_device("auto")
    dtype = str(resolve_dtype("auto", device)).removeprefix("torch.")
    command = [sys.executable, "-m", "bench.raw_runner", "--repeats", "3"]
    command += ["--mode", resolve_graph_mode("auto", device), "--device", device]
    command += ["--dtype", dtype, "--batch-size", str(batch)]
    command += ["--threads", str(os.cpu_count() or 1), "--count", str(count)]
    command += ["--texts-file", str(texts_file)]
    if model != "default":
        command += ["--model", model]
    out = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},  # as `serve` sets it
        capture_output=True,
        check=True,
        text=True,
    )
    return float(json.loads(out.stdout)["cpu_us_per_text"])


def run_workers_bench(
    sweep: list[int], model: str = "toy", clients: int = 32, requests: int = 3000
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(make_texts(1024)))
        rows = []
        for workers in sweep:
            log = Path(tmp) / f"sidecar-{workers}.log"
            row = measure(workers, model, clients, requests, texts_file, log)
            batch = max(1, round(row["mean_batch"]))
            row["raw_cpu_us_per_text"] = raw_cpu_per_text(model, batch, texts_file, requests)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], model: str, clients: int = 32) -> str:
    def f(x: float | None, digits: int = 0) -> str:
        return "-" if x is None else f"{x:,.{digits}f}"

    def busy(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f} %"

    lines = [
        f"Front ends sweep, {model} model, {clients} clients, one text per request, default "
        "settings otherwise",
        "",
        "| workers | req/s | p50 ms | errors | mean batch | service CPU µs/req | forward CPU "
        "µs/text | serving overhead µs/req | engine outside forward µs/text | raw runner CPU "
        "µs/text (alone, mean batch) | front ends busy, mean / max | load generator busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {f(r['requests_per_s'])} | {f(r['p50_ms'], 1)} | {r['errors']} "
            f"| {f(r['mean_batch'], 1)} | {f(r['service_cpu_us_per_request'])} "
            f"| {f(r['forward_cpu_us_per_text'])} | {f(r['serving_overhead_us'])} "
            f"| {f(r['engine_outside_forward_us'])} | {f(r['raw_cpu_us_per_text'])} "
            f"| {busy(r['front_end_busy_mean'])} / {busy(r['front_end_busy_max'])} "
            f"| {busy(r['loadgen_busy'])} |"
        )
    return "\n".join(lines) + "\n"
