"""The raw runner: `EmbeddingRunner.run` over the texts a saturation run sends, in consecutive
batches of the sidecar's max batch size, with no HTTP, no queue and no tokenizer. It is the model
work the sidecar's saturated throughput is compared with (issue 6: "at least 85 % of the raw
runner's at the same batch size").

Two ways to run it, both in a process of their own (the OpenMP wait policy must be in the
environment before torch starts, and the service benchmark's servers get the same environment):

- `python -m bench.raw_runner ... --repeats N` times N passes and prints one JSON object.
- `--serve` loads the model once, prints a JSON line when ready, then times one pass per `pass`
  line it reads on stdin and answers with a JSON line. The service benchmark keeps one such
  process next to the running sidecar and alternates a saturated load run with a raw pass: on a
  shared machine whose speed drifts by tens of % within a minute, only measurements seconds
  apart compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from bench.loadgen import texts_sent
from tests.server_process import ROOT

MODES = ("NONE", "PIECEWISE", "FULL")
DTYPES = ("float32", "float16", "bfloat16")


class RawRunner:
    """The runner built as the sidecar builds it, its texts tokenized and cut into batches, each
    batch run once (first sight captures its graphs; mocks on a CPU) before anything is timed."""

    def __init__(
        self,
        *,
        mode: str,
        batch_size: int,
        threads: int,
        model: str | None,
        texts: Sequence[str],
        device: str = "cpu",
        dtype: str = "float32",
    ) -> None:
        import torch

        from app.cudagraph import CacheConfig, CUDAGraphMode
        from app.engine.runner import EmbeddingRunner, RunnerConfig
        from models import load_sentence_encoder, make_toy_encoder

        if not texts:
            raise ValueError("no texts to run")
        torch.set_num_threads(threads)
        torch_dtype = getattr(torch, dtype)
        encoder = (
            make_toy_encoder(device, torch_dtype)
            if model == "toy"
            else load_sentence_encoder(model, device=device, dtype=torch_dtype)
        )
        config = RunnerConfig(
            mode=CUDAGraphMode[mode],
            max_batch_size=batch_size,
            cache=CacheConfig(capture_threshold=1, idle_prewarm_top_k=0),
        )
        self._runner = EmbeddingRunner(encoder, config)
        t0 = time.perf_counter()
        ids = encoder.tokenizer.encode(list(texts))
        tokenize_s = time.perf_counter() - t0
        self._batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
        for batch in self._batches:  # first sight and its capture, not timed
            self._runner.run(batch)
            while self._runner.idle_work_due(True):
                self._runner.idle_capture()
        self.texts = len(ids)
        self.info: dict[str, Any] = {
            "batch_size": batch_size,
            "batches": len(self._batches),
            "texts": self.texts,
            "mean_tokens_per_text": sum(map(len, ids)) / len(ids),
            "threads": threads,
            "tokenize_ms_per_text": 1000.0 * tokenize_s / len(ids),
            "mode": mode,
            "device": device,
            "dtype": dtype,
            "descriptors": sorted({str(d) for d in self._runner.run(self._batches[0]).descriptors}),
        }

    def timed_pass(self) -> float:
        """Seconds for one pass over every batch. run() hands back CPU rows (copied out of graph
        memory), so on CUDA each pass ends synchronised, as each sidecar batch does."""
        t0 = time.perf_counter()
        for batch in self._batches:
            self._runner.run(batch)
        return time.perf_counter() - t0


def measure_raw_runner(
    *,
    mode: str,
    batch_size: int,
    threads: int,
    model: str | None,
    texts: Sequence[str],
    repeats: int,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Texts/s of the raw runner over `texts` (the last batch may be short), `repeats` passes.
    Pass exactly the texts a measured level sends, so the fraction compares the same work (a
    sample of the mix with a few more long texts costs several %)."""
    raw = RawRunner(
        mode=mode,
        batch_size=batch_size,
        threads=threads,
        model=model,
        texts=texts,
        device=device,
        dtype=dtype,
    )
    cpu0 = time.process_time()  # every thread of this process: the model's CPU cost
    passes = [raw.timed_pass() for _ in range(repeats)]
    cpu_s = time.process_time() - cpu0
    return {
        "cpu_us_per_text": 1e6 * cpu_s / (raw.texts * repeats),
        **raw.info,
        "repeats": repeats,
        "texts_per_s_median": raw.texts / statistics.median(passes),
        "texts_per_s_best": raw.texts / min(passes),
        "ms_per_batch_median": 1000.0 * statistics.median(passes) / raw.info["batches"],
    }


class RawRunnerProcess:
    """A `--serve` raw runner in its own process: `info` once loaded, `texts_per_s()` per pass."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str]) -> None:
        # stderr to a file, not a pipe: nobody reads a pipe until the process fails, and a full
        # one (torch warnings, say) would block it.
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.raw_runner", *args, "--serve"],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        try:
            self.info: dict[str, Any] = self._read()
        except BaseException:
            self.close()
            raise

    def texts_per_s(self) -> float:
        """Time one pass now."""
        stdin = self._proc.stdin
        assert stdin is not None
        stdin.write("pass\n")
        stdin.flush()
        return float(self._read()["texts_per_s"])

    def _read(self) -> dict[str, Any]:
        stdout = self._proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self._proc.wait(timeout=30)
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", errors="replace")
            raise RuntimeError(f"raw runner exited with {self._proc.returncode}:\n{err[-2000:]}")
        data: dict[str, Any] = json.loads(line)
        return data

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()  # end of input: the process exits
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> RawRunnerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(raw: RawRunner, lines: IO[str], out: IO[str]) -> None:
    """The `--serve` loop: the info line, then one timed pass per `pass` line until EOF."""

    def emit(data: dict[str, Any]) -> None:
        out.write(json.dumps(data) + "\n")
        out.flush()

    emit(raw.info)
    for line in lines:
        command = line.strip()
        if command == "pass":
            emit({"texts_per_s": raw.texts / raw.timed_pass()})
        elif command:
            emit({"error": f"unknown command {command!r}; send 'pass'"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.raw_runner",
        description="EmbeddingRunner.run in batches, no HTTP: texts/s as JSON.",
    )
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--texts-file", type=Path, required=True, help="JSON list of texts")
    parser.add_argument(
        "--count",
        type=int,
        required=True,
        help="time the COUNT texts a measured level sends (the file's, in order, wrapping)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="passes (without --serve)")
    parser.add_argument("--model", default=None, help="model dir, or 'toy' (default: MiniLM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument(
        "--serve", action="store_true", help="time one pass per 'pass' line on stdin"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common: dict[str, Any] = {
        "mode": args.mode,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "model": args.model,
        "texts": texts_sent(json.loads(args.texts_file.read_text()), args.count),
        "device": args.device,
        "dtype": args.dtype,
    }
    if args.serve:
        serve(RawRunner(**common), sys.stdin, sys.stdout)
        return 0
    json.dump(measure_raw_runner(**common, repeats=args.repeats), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
