"""Real services for the tests: Redis, SQLite, PostgreSQL, and `nightshift worker`
processes hosting the real vLLM engine on the demo model.

Each backend gets a Redis database of its own, flushed around the session, so a
worker never sees another backend's messages. Engine-hosting workers are started
once per session (both at once, each with a small KV cache) and shared.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from click.testing import CliRunner, Result

from schemas import db

REDIS = os.environ.get("NIGHTSHIFT_TEST_REDIS", "redis://127.0.0.1:6379")
PG_ADMIN = os.environ.get("NIGHTSHIFT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
NIGHTSHIFT = str(Path(sys.executable).with_name("nightshift"))
# Three Redis databases; set NIGHTSHIFT_TEST_REDIS_DBS="1,2,3" to run a second session beside.
# The shared workers (engine_stacks) listen on the first two; a test that starts a worker of
# its own uses the third, else a shared worker takes its messages and drops them (its own
# database has no such job).
REDIS_DBS = dict(zip(("sqlite", "postgres", "unit"),
                     map(int, os.environ.get("NIGHTSHIFT_TEST_REDIS_DBS", "11,12,13").split(",")),
                     strict=True))
WORKER_START_TIMEOUT = 400.0
# The operator's checks of the test workers (and of `registered`): importable from the
# repository's root, which the workers get on PYTHONPATH.
CHECK_MODULES = "tests.quality.custom"
ROOT = Path(__file__).resolve().parent.parent
# Each test worker's KV cache, in GiB: some 22,000 tokens of the demo model in float32
# (twice that in bf16), plenty for these tests, so several workers (two shared, a victim,
# a test's own) fit beside each other. A size, not a memory share: vLLM's CPU backend takes
# its share of one memory node, whose size differs from machine to machine (23.5 GiB on
# one, 12.2 on another).
WORKER_KV_GIB = 1.0
# vLLM's CPU backend binds every engine's OpenMP threads to the same core by default (CPU
# 0 here, CPU 1 "reserved"): test workers take the cores in turn instead.
_CORES = itertools.cycle(range(os.cpu_count() or 1))


@dataclass
class Stack:
    """One database and one broker (and, for engine tests, a worker) that belong together."""

    name: str
    db_url: str
    broker_url: str
    workdir: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "NIGHTSHIFT_DATABASE_URL": self.db_url,
                "NIGHTSHIFT_BROKER_URL": self.broker_url}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([NIGHTSHIFT, *args], env=self.env(), cwd=self.workdir,
                              capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"nightshift {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stderr}")
        return done

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args).stdout)

    def wait_final(self, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.cli_json("status", job_id, "--json")
            if status["state"] in ("completed", "cancelled", "failed"):
                return status
            time.sleep(1.0)
        raise AssertionError(f"job {job_id} did not finish in {timeout}s: {status}")


def lease(db_url: str, job_id: str, seq: int, owner: str = "w") -> Any:
    """A live lease on a chunk, as a worker holds one before it writes (worker.leases)."""
    from worker import leases

    taken = leases.claim(db_url, job_id, seq, owner, ttl=60)
    assert taken is not None, f"chunk {job_id}:{seq} could not be leased"
    return taken


Invoke = Callable[..., Result]


@pytest.fixture
def run(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    """`nightshift ARGS` in-process on the test's stack, found through the environment as a
    user's shell gives it; the exit code must be `code`."""
    from producer.cli import cli

    monkeypatch.setenv("NIGHTSHIFT_DATABASE_URL", stack.db_url)
    monkeypatch.setenv("NIGHTSHIFT_BROKER_URL", stack.broker_url)

    def invoke(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def free_port() -> int:
    """A TCP port nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e starts `nightshift worker` processes: `-m "not engine"`
    leaves them out for a fast run."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.engine)


def _flush(broker_url: str) -> None:
    redis.Redis.from_url(broker_url).flushdb()


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The checks of tests/quality/custom.py, registered as an operator does for quick use
    (NIGHTSHIFT_CHECK_MODULES); the registry is loaded again before and after."""
    from quality import registry

    monkeypatch.setenv("NIGHTSHIFT_CHECK_MODULES", CHECK_MODULES)
    registry.forget()
    yield
    monkeypatch.delenv("NIGHTSHIFT_CHECK_MODULES")
    registry.forget()


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The demo model's tokenizer (built first if missing), without starting an engine."""
    from transformers import PreTrainedTokenizerFast

    from schemas.settings import load
    from worker.models import materialize_demo

    # The fast tokenizer AutoTokenizer resolves to, without its ~6 s torch import.
    return PreTrainedTokenizerFast.from_pretrained(str(materialize_demo(load().model_dir)))


def _pg_database() -> Iterator[str]:
    name = f"nightshift_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    yield url
    db.engine_for(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The shared workers' database (engine_stacks)."""
    yield from _pg_database()


@pytest.fixture(scope="session")
def unit_pg_url() -> Iterator[str]:
    """The `stack` fixture's database, apart from the shared workers': a worker reconciles
    its database and would take a test's pending chunks through its own broker."""
    yield from _pg_database()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nightshift")


def _stack(name: str, session_dir: Path, pg_url: str) -> Stack:
    workdir = session_dir / name
    workdir.mkdir(exist_ok=True)
    url = pg_url if name == "postgres" else f"sqlite:///{workdir / 'nightshift.db'}"
    return Stack(name, url, f"{REDIS}/{REDIS_DBS[name]}", workdir)


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, session_dir: Path, unit_pg_url: str
          ) -> Iterator[Stack]:
    """A database (schema applied) and a flushed broker; no worker."""
    unit_dir = session_dir / "unit"
    unit_dir.mkdir(exist_ok=True)
    sqlite_url = f"sqlite:///{unit_dir / uuid.uuid4().hex}.db"
    db_url = unit_pg_url if request.param == "postgres" else sqlite_url
    s = Stack(request.param, db_url, f"{REDIS}/{REDIS_DBS['unit']}", unit_dir)
    db.upgrade(s.db_url)
    _flush(s.broker_url)
    yield s
    _flush(s.broker_url)


class Worker:
    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.log = stack.workdir / f"worker-{name}.log"
        args = [NIGHTSHIFT, "worker", "--name", name, "--kv-cache-memory", str(WORKER_KV_GIB),
                "--max-model-len", "2048", "--loglevel", "INFO"]
        env = {**stack.env(), "NIGHTSHIFT_LEASE_SECONDS": "6",
               "VLLM_CPU_OMP_THREADS_BIND": str(next(_CORES)),
               "NIGHTSHIFT_CHECK_MODULES": CHECK_MODULES,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                            os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(args, env=env, cwd=stack.workdir, start_new_session=True,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = WORKER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(1.0)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"worker did not become ready (exit {self.proc.poll()}):\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def engine_stacks(session_dir: Path, pg_url: str) -> Iterator[dict[str, Stack]]:
    """One engine-hosting worker per backend, started together and shared by all tests."""
    stacks = {name: _stack(name, session_dir, pg_url) for name in ("sqlite", "postgres")}
    workers = []
    for s in stacks.values():
        db.upgrade(s.db_url)
        _flush(s.broker_url)
        workers.append(Worker(s, f"test-{s.name}"))
    try:
        for w in workers:
            w.wait_ready()
        yield stacks
    finally:
        for w in workers:
            w.stop()
        for s in stacks.values():
            _flush(s.broker_url)


@pytest.fixture(params=["sqlite", "postgres"])
def engine_stack(request: pytest.FixtureRequest, engine_stacks: dict[str, Stack]) -> Stack:
    return engine_stacks[request.param]


class Server:
    """`nightshift serve`'s app on a free port, in this process (a uvicorn thread), with
    its files in the stack's folder; `client(key)` is the real `openai` SDK pointed at it."""

    def __init__(self, stack: Stack, **settings: Any) -> None:
        import threading

        import uvicorn

        from producer.server.app import create_app
        from schemas.settings import load

        self.stack = stack
        self.files_dir = stack.workdir / f"files-{uuid.uuid4().hex[:8]}"
        config = load(database_url=stack.db_url, broker_url=stack.broker_url,
                      files_dir=self.files_dir, **settings)
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1",
                                                    port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def key(self, name: str, *, admin: bool = False) -> str:
        from producer.server import keys

        return keys.create(self.stack.db_url, f"{name}-{uuid.uuid4().hex[:6]}", admin=admin)

    def client(self, key: str) -> Any:
        import openai

        return openai.OpenAI(api_key=key, base_url=f"{self.url}/v1", max_retries=0)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def server(stack: Stack) -> Iterator[Server]:
    s = Server(stack)
    yield s
    s.stop()
