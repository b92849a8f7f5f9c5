"""The workers under test: `nightshift worker` processes on the demo model, each pinned to
a core of its own with an explicit KV cache, each the leader of its own process group so
that a kill takes its engine core with it (an orphaned engine core keeps a core busy).

The fleet is its workers' supervisor: a worker that exited (killed, or handing its chunks
back with exit 70) is started again under the same name, with a new lease owner.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

NIGHTSHIFT = str(Path(sys.executable).with_name("nightshift"))
START_TIMEOUT = 400.0
# Each engine's KV cache in GiB: some 22,000 tokens of the demo model, plenty here, and the
# same on every machine (a memory share depends on the size of a memory node).
KV_CACHE_GIB = 1.0


@dataclass
class Options:
    """How every worker of the fleet runs."""

    lease_seconds: float
    stall_seconds: float | None = None
    slots: int = 4


@dataclass
class Worker:
    name: str
    core: int
    workdir: Path
    env: dict[str, str]
    options: Options
    proc: subprocess.Popen[bytes] | None = None
    # The exit codes of this worker's earlier processes, in order.
    exits: list[int] = field(default_factory=list)
    starts: int = 0
    _reaped: bool = False

    @property
    def log(self) -> Path:
        return self.workdir / f"worker-{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self._reaped = False
        args = [NIGHTSHIFT, "worker", "--name", self.name, "--kv-cache-memory",
                str(KV_CACHE_GIB), "--max-model-len", "2048", "--slots",
                str(self.options.slots), "--loglevel", "INFO"]
        if self.options.stall_seconds is not None:
            args += ["--stall-seconds", str(self.options.stall_seconds)]
        env = {**self.env, "NIGHTSHIFT_LEASE_SECONDS": str(self.options.lease_seconds),
               "VLLM_CPU_OMP_THREADS_BIND": str(self.core)}
        self.proc = subprocess.Popen(args, env=env, cwd=self.workdir, start_new_session=True,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return " ready." in self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            if not self.alive():
                break
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"worker {self.name} did not become ready "
                           f"(exit {self.proc and self.proc.poll()}):\n{tail}")

    def owner(self, timeout: float = 30.0) -> str:
        """The lease owner this process writes as (`name:pid:random`, named in its log)."""
        pattern = re.compile(rf"\b({re.escape(self.name)}:{self.pid}:[0-9a-f]+)\b")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.log.read_text(errors="replace"))
            if found:
                return found.group(1)
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.name}'s log names no lease owner")

    def engine_core(self) -> psutil.Process:
        """The engine core: the worker's child process that runs vLLM's engine."""
        children = psutil.Process(self.pid).children(recursive=True)
        cores = [p for p in children if "EngineCore" in p.name() + " ".join(p.cmdline())]
        if not cores:
            raise RuntimeError(f"worker {self.name} has no engine core process: {children}")
        return cores[0]

    def signal_group(self, sig: signal.Signals) -> None:
        os.killpg(self.pid, sig)

    def reap(self) -> int | None:
        """The exit code once the process has exited (recorded in `exits` once), else None."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None and not self._reaped:
            self._reaped = True
            self.exits.append(code)
            self._group_gone()
        return code

    def kill(self) -> int:
        """SIGKILL to the whole process group; returns the exit code."""
        self.signal_group(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()
        return int(self.reap())  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.alive():
            self.signal_group(signal.SIGCONT)
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.proc.wait()  # type: ignore[union-attr]
        self._group_gone()

    def _group_gone(self) -> None:
        """What is left of the process group (an engine core whose parent died) is killed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


class Fleet:
    """Two workers (by default) on one database and broker, started together."""

    def __init__(self, workdir: Path, env: dict[str, str], options: Options,
                 size: int = 2) -> None:
        cores = itertools.cycle(range(os.cpu_count() or 1))
        self.workers = [Worker(f"chaos-{i}", next(cores), workdir, env, options)
                        for i in range(size)]

    def start(self) -> None:
        for w in self.workers:
            w.start()
        for w in self.workers:
            w.wait_ready()

    def supervise(self) -> list[tuple[str, int]]:
        """Start again every worker that exited; returns (name, exit code) for each."""
        restarted = []
        for w in self.workers:
            code = w.reap()
            if code is not None:
                restarted.append((w.name, code))
                w.start()
        return restarted

    def ensure_ready(self) -> None:
        self.supervise()
        for w in self.workers:
            w.wait_ready()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
