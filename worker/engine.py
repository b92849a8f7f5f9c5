"""The engine host: one vLLM engine per worker process, kept full.

Every chunk the worker runs hands its requests to the same host, which feeds them
into one running batch and steps the engine from a single thread. A chunk never
waits for another chunk to drain: while one chunk's long answers finish, the next
chunk's requests are already decoding beside them (continuous batching).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psutil
from pydantic import BaseModel, Field
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.exceptions import EngineDeadError

log = logging.getLogger(__name__)


class EngineOptions(BaseModel):
    """vLLM engine arguments a worker exposes; None means "the platform's default"."""

    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    # An explicit KV-cache size overrides the share above: on the CPU the share is of one
    # memory node, whose size and the process's own footprint vary from machine to machine.
    kv_cache_memory_bytes: int | None = Field(None, gt=0)
    enforce_eager: bool | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    # Per-job LoRA adapters (JobSpec.lora): off unless asked, as vLLM reserves room for them.
    enable_lora: bool = False
    max_lora_rank: int | None = None
    max_loras: int | None = None

    def for_platform(self, on_cpu: bool) -> dict[str, Any]:
        """Engine kwargs: on the CPU build, eager mode, half the memory and whole prefills;
        on a GPU, vLLM's own defaults unless overridden."""
        chosen = self.model_dump(exclude_none=True)
        if on_cpu:
            chosen.setdefault("enforce_eager", True)
            chosen.setdefault("gpu_memory_utilization", 0.5)
            # vLLM 0.32's CPU runner dies ("CPU Generator does not use offset") when a
            # seeded sampled request's prompt is prefilled over several steps: whole
            # prefills only. Every sampled attempt here is seeded (reproducible retries).
            chosen.setdefault("enable_chunked_prefill", False)
            if chosen["dtype"] == "auto" and not cpu_has_bf16():
                chosen["dtype"] = "float32"  # bf16 is emulated without AVX512-BF16/AMX: ~5x slower
        return chosen


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: Any  # vllm.SamplingParams
    future: Future[Any]
    lora: Any = None  # vllm.lora.request.LoRARequest


@dataclass
class PrefixCache:
    """The engine's prefix-cache hits over the requests it finished, as it counts them
    (each output's `num_cached_tokens`): prompt tokens read from the cache, not computed."""

    prompt_tokens: int = 0
    cached_tokens: int = 0

    def add(self, output: Any) -> None:
        self.prompt_tokens += len(output.prompt_token_ids or ())
        self.cached_tokens += output.num_cached_tokens or 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def __str__(self) -> str:
        return (f"prefix cache hit rate {self.hit_rate:.3f} ({self.cached_tokens} of "
                f"{self.prompt_tokens} prompt tokens cached)")


class EngineDead(RuntimeError):
    """The engine (or its core process) is gone; the worker must restart."""


class EngineStalled(EngineDead):
    """The engine held requests but finished no step within the stall limit."""


class Aborted(Exception):
    """The request's chunk was taken from this worker (its lease was lost)."""


class RequestRefused(Exception):
    """The engine refused one request (validation, a grammar it cannot compile, an
    adapter): that attempt fails with the engine's reason and the engine serves on."""


class EngineHost:
    """Steps one engine (vLLM's `LLM`) from a thread of its own, for every chunk thread.

    Every request ends: with its output, its refusal, its chunk's abort, or the engine's
    death (a dead core, or a step that does not return within the stall limit)."""

    def __init__(self, llm: Any, *, stall_seconds: float = 300.0) -> None:
        self.engine = llm.llm_engine
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len: int = self.engine.model_config.max_model_len
        self.stall_seconds = stall_seconds
        self._inbox: queue.Queue[Request] = queue.Queue()
        # Requests in the engine, and the death that ends them all; both under `_lock`, so
        # no request joins either after the engine died.
        self._pending: dict[str, Future[Any]] = {}
        self._dead: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # When the engine step under way began (None between steps), and when this process
        # last resumed from a pause (SIGSTOP, a frozen VM): a step is timed from the later.
        self._step_began: float | None = None
        self._resumed = 0.0
        # Leases whose requests are dropped (worker.leases), newest last.
        self._aborts: queue.Queue[tuple[str, str]] = queue.Queue()
        self._aborted: dict[str, str] = {}
        # The one chunk that has the engine to itself (see `solo`); turns under `_gate`.
        self._gate = threading.Condition()
        self._solo: str | None = None
        self._children = psutil.Process().children(recursive=True)
        self.prefix_cache = PrefixCache()
        self._thread = threading.Thread(target=self._run, name="engine-host", daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name="engine-watchdog", daemon=True).start()

    @classmethod
    def start(cls, model: str, options: EngineOptions, *, seed: int = 0,
              stall_seconds: float = 300.0) -> EngineHost:
        """The engine for `model`, started (its core in a child process)."""
        from vllm import LLM
        from vllm.platforms import current_platform

        llm = LLM(model=model, seed=seed, **options.for_platform(current_platform.is_cpu()))
        return cls(llm, stall_seconds=stall_seconds)

    def submit(self, request_id: str, prompt_token_ids: list[int], params: Any, *,
               lora: str | None = None) -> Future[Any]:
        """Queue one request, with the job's LoRA adapter if it has one; its future
        resolves to the finished vLLM RequestOutput."""
        future: Future[Any] = Future()
        try:
            adapter = self._adapter(lora)
        except ValueError as exc:  # this job's items fail; the worker serves other jobs
            future.set_exception(exc)
            return future
        with self._gate:  # a solo chunk cannot begin between this turn and this put
            self._gate.wait_for(lambda: self._solo is None or request_id.startswith(self._solo)
                                or self._dead is not None)
            with self._lock:
                if self._dead is not None:
                    future.set_exception(EngineDead(str(self._dead)))
                else:
                    self._inbox.put(Request(request_id, prompt_token_ids, params, future,
                                            adapter))
        return future

    @contextmanager
    def together(self) -> Iterator[None]:
        """What this thread submits within reaches the engine in one run, with no other
        chunk's requests between (they wait for the turn; a solo chunk still gets its
        turn while this one waits for it)."""
        with self._gate:
            yield

    def _adapter(self, lora: str | None) -> Any:
        """The LoRARequest for an adapter, refused here (not in the engine core, where a
        missing adapter would stop the engine) when this worker cannot load it."""
        if lora is None:
            return None
        if self.engine.vllm_config.lora_config is None:
            raise ValueError(f"the job asks for LoRA adapter {lora} but this worker was "
                             "started without --enable-lora; restart it with --enable-lora")
        if lora.startswith("/") and not os.path.isfile(os.path.join(lora, "adapter_config.json")):
            raise ValueError(f"LoRA adapter {lora}: no adapter_config.json on this worker")
        from vllm.lora.request import LoRARequest

        # The name is the whole path: vLLM compares adapters by name.
        return LoRARequest(lora, lora_id(lora), lora)

    @property
    def alive(self) -> bool:
        return self._dead is None and self._thread.is_alive()

    def progressing(self) -> bool:
        """Alive, and no engine step has run longer than the stall limit."""
        return self.alive and not self._stalled_for()

    def _stalled_for(self) -> float:
        """The seconds the step under way has run, once past the stall limit; else 0.0."""
        began = self._step_began
        if began is None:
            return 0.0
        running = time.monotonic() - max(began, self._resumed)
        return running if running > self.stall_seconds else 0.0

    def abort(self, tag: str, reason: str) -> None:
        """Drop every request of lease `tag` (worker.leases): their futures fail with
        Aborted(reason), and the engine stops computing them."""
        self._aborts.put((f"{tag}:", reason))

    @contextmanager
    def solo(self, tag: str) -> Iterator[None]:
        """The engine to lease `tag` alone: other chunks' new requests wait, and it starts
        once their requests in flight are done. A worker death while an isolated item runs
        so is that item's doing, not a neighbour's from another slot (worker.chunks)."""
        with self._gate:
            self._gate.wait_for(lambda: self._solo is None)
            self._solo = f"{tag}:"
        try:
            while self._pending or not self._inbox.empty():
                time.sleep(0.05)
            if self._dead is not None:
                raise EngineDead(str(self._dead))
            yield
        finally:
            with self._gate:
                self._solo = None
                self._gate.notify_all()

    def load(self) -> tuple[int, int, int]:
        """(requests in the engine, requests not yet handed to it, max_num_seqs): read
        without the engine core, cheap enough for every metrics scrape."""
        seqs = self.engine.vllm_config.scheduler_config.max_num_seqs
        return len(self._pending), self._inbox.qsize(), int(seqs)

    def stop(self) -> None:
        """Stop stepping and shut the engine core down: its process is not a daemon, and
        the interpreter would wait for it forever at exit."""
        log.info("engine: %s", self.prefix_cache)
        self._stop.set()
        self._thread.join(timeout=10)
        core = getattr(self.engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._abort_lost()
                self._admit(block=not self.engine.has_unfinished_requests())
                if self.engine.has_unfinished_requests():
                    self._step()
        except BaseException as exc:  # the engine is unusable: fail everything in flight
            log.exception("engine died")
            self._die(exc)

    def _watch(self) -> None:
        """A dead engine core does not always wake a thread blocked in `step()` (vLLM sets
        a flag and moves on), and a stopped one never does: both are watched from outside
        the step loop."""
        tick = time.monotonic()
        while not self._stop.wait(1.0) and self._dead is None:
            tick, last = time.monotonic(), tick
            if tick - last > 3.0:  # this process was stopped, not just its engine core
                self._resumed = tick
                continue
            core = getattr(self.engine, "engine_core", None)
            flagged = getattr(getattr(core, "resources", None), "engine_dead", False)
            gone = [p.pid for p in self._children if not _running(p)]
            if flagged or gone:
                log.error("engine core process gone (%s); failing in-flight requests",
                          gone or "flagged dead")
                self._die(EngineDead(f"engine core process gone: {gone or 'flagged dead'}"))
            elif stalled := self._stalled_for():
                self._stalled(stalled)

    def _stalled(self, seconds: float) -> None:
        """A step that never returns (a hung or stopped engine core) will not come back:
        the core is killed, and what it held fails as a dead engine's would."""
        log.error("an engine step has run for %.0f s (stall limit %g s) with %d requests "
                  "in the engine: killing its core process", seconds, self.stall_seconds,
                  len(self._pending))
        for child in self._children:
            with suppress(psutil.NoSuchProcess):
                child.kill()
        self._die(EngineStalled(f"an engine step did not finish in {seconds:.0f} s"))

    def _die(self, exc: BaseException) -> None:
        reason = exc if isinstance(exc, EngineDead) else EngineDead(f"engine died: {exc!r}")
        with self._lock:
            if self._dead is None:
                self._dead = reason
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(reason)
        while True:  # nothing joins the inbox now; the step thread may be emptying it too
            try:
                self._inbox.get_nowait().future.set_exception(reason)
            except queue.Empty:
                break
        with self._gate:
            self._gate.notify_all()  # submitters waiting for a solo chunk see the death

    def _admit(self, block: bool) -> None:
        try:
            request = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._add(request)
            try:
                request = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _add(self, request: Request) -> None:
        if request.future.cancelled():
            return
        lost = next((why for tag, why in self._aborted.items()
                     if request.request_id.startswith(tag)), None)
        if lost is not None:
            request.future.set_exception(Aborted(lost))
            return
        try:
            prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
            # Only finished outputs are read; FINAL_ONLY also makes vLLM gather all n samples
            # into the one final output (by default it carries the last sample alone).
            request.params.output_kind = RequestOutputKind.FINAL_ONLY
            self.engine.add_request(request.request_id, prompt, request.params,
                                    lora_request=request.lora)
        except EngineDeadError as exc:
            request.future.set_exception(EngineDead(f"engine died: {exc!r}"))
            raise
        except Exception as exc:  # this request only: its length, params, grammar, adapter
            self._forget(request.request_id)
            request.future.set_exception(RequestRefused(str(exc) or type(exc).__name__))
            return
        except BaseException as exc:  # the step loop dies of it: this request with the rest
            request.future.set_exception(EngineDead(f"engine died: {exc!r}"))
            raise
        with self._lock:
            if self._dead is None:
                self._pending[request.request_id] = request.future
                return
        request.future.set_exception(EngineDead(str(self._dead)))

    def _forget(self, request_id: str) -> None:
        """Whatever a refused add left behind in the engine's bookkeeping goes."""
        try:
            self.engine.abort_request([request_id])
        except Exception:
            log.debug("nothing to abort for refused request %s", request_id, exc_info=True)

    def _abort_lost(self) -> None:
        while not self._aborts.empty():
            tag, why = self._aborts.get_nowait()
            self._aborted[tag] = why
            if len(self._aborted) > 256:  # that lease's chunk thread stopped asking long ago
                del self._aborted[next(iter(self._aborted))]
            with self._lock:
                ids = [rid for rid in self._pending if rid.startswith(tag)]
                futures = [self._pending.pop(rid) for rid in ids]
            for future in futures:
                future.set_exception(Aborted(why))
            if ids:
                self.engine.abort_request(ids)

    def _step(self) -> None:
        self._step_began = time.monotonic()
        outputs = self.engine.step()
        self._step_began = None
        for output in outputs:
            if output.finished:
                self.prefix_cache.add(output)
                with self._lock:
                    future = self._pending.pop(output.request_id, None)
                if future is not None and not future.done():
                    future.set_result(output)


def lora_id(lora: str) -> int:
    """vLLM tells adapters apart by a positive int: the same adapter gets the same id in
    every worker and every run (hash() of a str changes from process to process)."""
    return int.from_bytes(hashlib.blake2b(lora.encode(), digest_size=4).digest()) % (2**31 - 1) + 1


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
