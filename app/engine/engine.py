"""The engine: model + runner + batcher + ONE worker thread, readiness, and the hot-shape profile.

Every piece of torch work (loading, forwards, captures, prewarm, clearing the cache) runs on the
single worker thread, in submission order; the event loop only tokenizes, queues and answers.

Life cycle (`state`):
  starting  -> model loaded and runner built on the worker (start() awaits this; errors raise)
  warming   -> in the background: restore the hot-shape profile, prewarm its top shapes and the
               configured ones, logging progress; inference is refused (503 not_ready)
  ready     -> serving, whatever the prewarm's outcome: a shape that failed to capture is served
               eagerly, and the failure is in the log, `startup_report` (GET /admin/stats) and
               cudagraph_capture_failures_total. Between batches, when nothing is waiting (or a
               deferred capture has waited too long), the worker captures one due shape.
  draining  -> begin_drain(): /readyz says 503 at once, queued and new requests still served
               until stop() closes the queue, finishes every queued request and saves the profile
  stopped
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from app.cudagraph import BatchDescriptor, GraphCache, PrewarmProgress, PrewarmReport
from app.engine.admission import EngineState, NotReady, admit
from app.engine.batcher import Batcher, BatchObserver
from app.engine.config import TOY_MODEL, EngineConfig, EngineConfigError
from app.engine.operations import OPERATIONS
from app.engine.runner import EmbeddingRunner
from models import SentenceEncoder, load_sentence_encoder, make_toy_encoder

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EngineObserver(BatchObserver, Protocol):
    def on_padding(self, real_tokens: int, padded_tokens: int) -> None: ...

    def on_request(self, items: int) -> None: ...


class _NullObserver:
    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass

    def on_padding(self, real_tokens: int, padded_tokens: int) -> None:
        pass

    def on_request(self, items: int) -> None:
        pass


class Engine:
    def __init__(self, config: EngineConfig, observer: EngineObserver | None = None) -> None:
        self.config = config
        self._observer: EngineObserver = observer or _NullObserver()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-worker")
        self._state = EngineState.STARTING
        self._encoder: SentenceEncoder | None = None
        self._runner: EmbeddingRunner | None = None
        self._batcher: Batcher[np.ndarray] | None = None
        self._warmup: asyncio.Task[None] | None = None
        self._froze_heap = False  # gc.freeze() after warm-up; undone by stop()
        self._startup_descriptors: list[BatchDescriptor] = []
        self.prewarm_done = 0
        self.prewarm_total = 0
        self.startup_report = PrewarmReport()

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is EngineState.READY

    @property
    def alive(self) -> bool:
        """The engine can answer (always, in this process)."""
        return True

    @property
    def mode_name(self) -> str:
        """The graph mode in use (FULL, PIECEWISE or NONE)."""
        return self.config.runner.mode.name

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    @property
    def encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            raise NotReady("the model is not loaded yet")
        return self._encoder

    @property
    def runner(self) -> EmbeddingRunner:
        if self._runner is None:
            raise NotReady("the model is not loaded yet")
        return self._runner

    @property
    def graphs(self) -> GraphCache | None:
        """The model's graph cache (thread-safe reads), None before the model is loaded."""
        return None if self._runner is None else self._runner.graphs

    @property
    def queue_depth(self) -> int:
        return 0 if self._batcher is None else self._batcher.depth

    @property
    def batches(self) -> int:
        """Model calls made for inference (one per batch)."""
        return 0 if self._batcher is None else self._batcher.batches

    @property
    def texts(self) -> int:
        return 0 if self._batcher is None else self._batcher.items_done

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Load the model and build the runner (raises on failure), then warm up in the
        background; `ready` turns True once the start-up prewarm is done."""
        loop = asyncio.get_running_loop()
        encoder, runner = await loop.run_in_executor(self._executor, self._load)
        self._encoder, self._runner = encoder, runner
        self._startup_descriptors = self._configured_descriptors(runner)
        cfg = self.config
        self._batcher = Batcher(
            self._run_batch,
            executor=self._executor,
            max_batch_size=cfg.runner.max_batch_size,
            max_batch_tokens=cfg.runner.max_num_tokens,
            max_batch_wait_s=cfg.max_batch_wait_s,
            max_queue=cfg.max_queue,
            timeout_s=cfg.request_timeout_s,
            observer=self._observer,
            background=self,
        )
        self._batcher.start()
        self._state = EngineState.WARMING
        self._warmup = loop.create_task(self._warm_up(), name="sidecar-warmup")

    async def wait_ready(self) -> None:
        if self._warmup is not None:
            await asyncio.shield(self._warmup)

    def begin_drain(self) -> None:
        """Report not ready at once (load balancers stop sending); requests still served."""
        if self._state in (EngineState.STARTING, EngineState.WARMING, EngineState.READY):
            self._state = EngineState.DRAINING

    async def stop(self) -> None:
        """Stop admitting, answer every queued request, save the profile, free the worker."""
        if self._state is EngineState.STOPPED:
            return
        logger.info("draining %d queued texts", self.queue_depth)
        self._state = EngineState.DRAINING
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()
            try:
                await self._warmup
            except asyncio.CancelledError:
                pass
        if self._batcher is not None:
            await self._batcher.drain()
        if self._runner is not None and self.config.profile_path is not None:
            try:
                await self._on_worker(self._save_profile, self.config.profile_path)
            except Exception:
                logger.exception("could not save the hot-shape profile")
        await self._on_worker(lambda: None)  # everything submitted before has finished
        self._executor.shutdown(wait=False)
        if self._froze_heap:  # give the heap back (several apps start and stop in one test run)
            gc.unfreeze()
            self._froze_heap = False
        self._state = EngineState.STOPPED

    # ---------------------------------------------------------------- serving
    def check_ready(self, texts: int = 0) -> None:
        """Raise unless inference is admitted (`admit`) and `texts` more texts fit in the queue.
        Cheap: routes call it before tokenizing."""
        queue_open = self._batcher is not None and not self._batcher.closed
        admit(self._state, queue_open, self._observer.on_reject)
        if texts and self._state is EngineState.READY and self._batcher is not None:
            self._batcher.check_room(texts)

    async def embed(self, token_ids: list[list[int]]) -> np.ndarray:
        """The (n, dimensions) float32 rows of the texts, in order, batched with other
        requests."""
        self.check_ready()
        self._observer.on_request(len(token_ids))
        assert self._batcher is not None
        rows = await self._batcher.enqueue(token_ids)
        if len(rows) == 1:
            return rows[0].reshape(1, -1)
        return np.stack(rows) if rows else np.empty((0, self.encoder.dimensions), np.float32)

    def enqueue(self, token_ids: list[list[int]]) -> asyncio.Future[list[np.ndarray]]:
        """Queue the texts (raises at once when refused): the future of one row per text.
        Cancelling it drops what is still queued."""
        self.check_ready()
        assert self._batcher is not None
        return self._batcher.enqueue(token_ids)

    def _run_batch(self, batch: list[list[int]]) -> Sequence[np.ndarray]:
        # Worker thread. (n, dim) float32 on CPU, copied out of graph memory by the runner.
        result = self.runner.run(batch)
        self._observer.on_padding(result.real_tokens, result.padded_tokens)
        emb = result.embeddings
        if not bool(torch.isfinite(emb).all()):
            raise FloatingPointError("the model produced non-finite embeddings")
        return list(emb.numpy())

    # ------------------------------------------------------- between batches
    def background_due(self, idle: bool) -> bool:
        """Event loop, between batches: is a graph capture due? (`Batcher` background work)."""
        runner = self._runner
        ready = self._state is EngineState.READY
        return ready and runner is not None and runner.idle_work_due(idle)

    def run_background(self, idle: bool) -> None:
        """Worker thread: capture one due shape (a deferred capture or a predicted shape); the
        cache logs what it captured, refused or failed."""
        self.runner.idle_capture(idle)

    # ------------------------------------------------------------------ admin
    async def operate(self, method: str, args: dict[str, Any]) -> Any:
        """An admin operation by name (`app.engine.operations`)."""
        return await OPERATIONS[method](self, args)

    async def prewarm(self, descriptors: list[BatchDescriptor]) -> PrewarmReport:
        return await self._on_worker(self._prewarm_all, descriptors)

    async def clear_graphs(self) -> int:
        runner = self.runner
        return await self._on_worker(runner.graphs.clear)

    def descriptor_for_shape(self, batch_size: int, seq_len: int) -> BatchDescriptor:
        return self.runner.descriptor_for_shape(batch_size, seq_len)

    def ladder_descriptors(self) -> list[BatchDescriptor]:
        return self.runner.ladder_descriptors()

    # --------------------------------------------------------------- internals
    async def _on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _load(self) -> tuple[SentenceEncoder, EmbeddingRunner]:
        cfg = self.config
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        t0 = time.perf_counter()
        if cfg.model == TOY_MODEL:
            encoder = make_toy_encoder(cfg.device, cfg.dtype)
        else:
            encoder = load_sentence_encoder(
                cfg.model,
                revision=cfg.model_revision,
                task=cfg.task,
                device=cfg.device,
                dtype=cfg.dtype,
                float16_fallback=cfg.float16_fallback,
                max_seq_len=cfg.max_seq_len,
                longest_forward=cfg.runner.max_num_tokens,
            )
        if cfg.runner.max_num_tokens < encoder.max_seq_len:
            raise EngineConfigError(
                f"max_batch_tokens ({cfg.runner.max_num_tokens}) must be at least the model's "
                f"max sequence length ({encoder.max_seq_len}): one long text must fit a batch",
                "max_batch_tokens",
            )
        try:
            runner = EmbeddingRunner(encoder, cfg.runner)
        except ValueError as exc:
            raise EngineConfigError(
                f"the batch ladders do not fit together ({exc})",
                "max_batch_size",
                "max_batch_tokens",
                "capture_sizes",
                "seq_buckets",
                "token_buckets",
            ) from exc
        cache = cfg.runner.cache
        logger.info(
            "loaded %s (%s %s, %s pooling%s, %d dims, max %d tokens) on %s/%s in %.2f s; "
            "graph mode %s (up to %d graphs, captured after %d lookups)",
            encoder.name,
            encoder.family,
            encoder.task,
            encoder.pooling,
            ", normalised" if encoder.normalized else "",
            encoder.dimensions,
            encoder.max_seq_len,
            encoder.device,
            str(encoder.dtype).removeprefix("torch."),
            time.perf_counter() - t0,
            cfg.runner.mode.name,
            cache.max_cached_graphs,
            cache.capture_threshold,
        )
        return encoder, runner

    def _configured_descriptors(self, runner: EmbeddingRunner) -> list[BatchDescriptor]:
        """The configured prewarm shapes (+ the ladder): a bad shape refuses to start."""
        out: list[BatchDescriptor] = []
        for batch_size, seq_len in self.config.prewarm_shapes:
            try:
                out.append(runner.descriptor_for_shape(batch_size, seq_len))
            except ValueError as exc:
                raise EngineConfigError(
                    f"prewarm shape {batch_size}x{seq_len} cannot be prewarmed: {exc}",
                    "prewarm_shapes",
                ) from exc
        if self.config.prewarm_ladder:
            out.extend(runner.ladder_descriptors())
        return out

    async def _warm_up(self) -> None:
        try:
            restored: list[BatchDescriptor] = []
            if self.config.profile_path is not None:
                restored = await self._on_worker(self._restore_profile, self.config.profile_path)
            wanted = _unique(restored + self._startup_descriptors)
            self.prewarm_total = len(wanted)
            if wanted:
                logger.info("prewarm: %d shapes to capture", len(wanted))
                self.startup_report = await self._on_worker(
                    self.runner.prewarm, wanted, self._log_prewarm_step
                )
                report = self.startup_report
                logger.info(
                    "prewarm done: %d captured, %d skipped, %d failed in %.2f s",
                    len(report.captured),
                    len(report.skipped),
                    len(report.failed),
                    report.seconds,
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            # A failed prewarm is not an outage: shapes run eagerly (or are captured later).
            logger.exception("start-up prewarm failed; serving without it")
        if self._state is EngineState.WARMING:
            self._freeze_startup_heap()
            self._state = EngineState.READY
            logger.info("ready")

    def _log_prewarm_step(self, step: PrewarmProgress) -> None:
        """Worker thread, once per shape of the start-up prewarm."""
        self.prewarm_done = step.index
        logger.info(
            "prewarm %d/%d %s: %s in %.3f s%s",
            step.index,
            step.total,
            step.descriptor.label(),
            step.outcome,
            step.seconds,
            f" ({step.reason})" if step.reason else "",
        )

    def _freeze_startup_heap(self) -> None:
        """Move what start-up allocated (model, tokenizer, web framework, graphs: it lives as
        long as the process) out of the cyclic collector's reach, as vLLM and SGLang do after
        start-up: otherwise every full collection walks that heap for nothing and stalls the
        event loop and the worker (see docs/benchmarks.md)."""
        gc.collect()
        gc.freeze()
        self._froze_heap = True
        logger.info("froze %d start-up objects out of the collector's reach", gc.get_freeze_count())

    def _restore_profile(self, path: Path) -> list[BatchDescriptor]:
        """Worker thread. Import the saved hot-shape counts; the shapes to prewarm from them."""
        if not path.is_file():
            logger.info("no hot-shape profile at %s yet (it is written at shutdown)", path)
            return []
        graphs = self.runner.graphs
        try:
            restored = graphs.load_profile(path)
        except (OSError, ValueError) as exc:  # ProfileError is a ValueError
            logger.warning("ignoring the hot-shape profile %s: %s", path, exc)
            return []
        top_k = self.config.profile_prewarm_top_k
        predicted = graphs.predict_shapes(top_k) if top_k > 0 else []
        logger.info(
            "restored %d hot shapes from %s; prewarming the top %d", restored, path, len(predicted)
        )
        return predicted

    def _save_profile(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.runner.graphs.save_profile(path)  # atomic: temp file, fsync, rename
        logger.info("saved the hot-shape profile to %s", path)

    def _prewarm_all(self, descriptors: list[BatchDescriptor]) -> PrewarmReport:
        return self.runner.prewarm(_unique(descriptors))


def _unique(descriptors: list[BatchDescriptor]) -> list[BatchDescriptor]:
    return list(dict.fromkeys(descriptors))
