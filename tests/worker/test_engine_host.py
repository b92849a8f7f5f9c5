"""The engine host's own logic on a stand-in engine: a refused request fails alone, a
stalled engine fails what it holds, a lost chunk's requests are aborted, and an isolated
item has the engine to itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from standin_engine import StandInEngine, StandInLLM

from worker.engine import Aborted, EngineDead, EngineHost, EngineStalled, RequestRefused

LOOKAHEAD = SimpleNamespace(structured_outputs=SimpleNamespace(regex=r"^(?=.*\d).*$"))


@pytest.fixture
def engine() -> StandInEngine:
    return StandInEngine()


@pytest.fixture
def host(engine: StandInEngine) -> Iterator[EngineHost]:
    running = EngineHost(StandInLLM(engine), stall_seconds=0.5)
    yield running
    engine.core_running.set()
    running.stop()


def _params() -> Any:
    return SimpleNamespace()


def test_a_request_the_engine_refuses_fails_alone_and_the_engine_serves_on(
        host: EngineHost) -> None:
    refused = host.submit("job:0:1:1", [1, 2], LOOKAHEAD)
    with pytest.raises(RequestRefused, match="look-around"):
        refused.result(timeout=5)
    assert host.submit("job:0:2:1", [1, 2], _params()).result(timeout=5).finished
    assert host.alive


def test_a_stalled_engine_fails_what_it_holds_and_stops_progressing(
        host: EngineHost, engine: StandInEngine) -> None:
    assert host.submit("job:0:1:1", [1], _params()).result(timeout=5).finished
    engine.core_running.clear()  # the engine core is stopped: the next step never returns
    held = host.submit("job:0:2:1", [1], _params())
    with pytest.raises(EngineStalled, match="did not finish"):
        held.result(timeout=10)
    assert not host.alive and not host.progressing()
    with pytest.raises(EngineDead):
        host.submit("job:0:3:1", [1], _params()).result(timeout=1)


def test_a_busy_engine_is_progressing_however_long_its_requests_wait(
        engine: StandInEngine) -> None:
    engine.step_seconds = 0.2
    host = EngineHost(StandInLLM(engine), stall_seconds=0.5)
    try:
        futures = [host.submit(f"job:0:{i}:1", [1], _params()) for i in range(8)]
        for future in futures:
            assert future.result(timeout=10).finished
            assert host.progressing()
    finally:
        host.stop()


def test_aborting_a_chunk_drops_its_requests_and_fails_their_futures(
        host: EngineHost, engine: StandInEngine) -> None:
    engine.steps = 50  # half a second a request
    mine = host.submit("job:3.1:1:1", [1], _params())
    other = host.submit("job:4.1:1:1", [1], _params())
    time.sleep(0.1)  # both in the engine
    host.abort("job:3.1", "lost the lease")
    with pytest.raises(Aborted, match="lost the lease"):
        mine.result(timeout=5)
    assert other.result(timeout=5).finished
    assert engine.aborted == ["job:3.1:1:1"]
    late = host.submit("job:3.1:2:1", [1], _params())  # the lost lease's thread asks again
    with pytest.raises(Aborted):
        late.result(timeout=5)
    engine.steps = 1  # the chunk's next delivery, here again, is not the lost one
    assert host.submit("job:3.2:1:1", [1], _params()).result(timeout=5).finished


def test_an_isolated_chunk_starts_once_others_drain_and_holds_their_new_requests_back(
        host: EngineHost, engine: StandInEngine) -> None:
    engine.step_seconds = 0.2
    first = host.submit("job:1:1:1", [1], _params())
    held_back: list[Future[Any]] = []
    with host.solo("job:2"):
        assert first.done()  # the other chunk's request in flight finished first
        asking = threading.Thread(
            target=lambda: held_back.append(host.submit("job:1:2:1", [1], _params())))
        asking.start()
        alone = host.submit("job:2:1:1", [1], _params()).result(timeout=5)
        assert alone.finished and not held_back
        assert engine.added[-1] == "job:2:1:1"
    asking.join(timeout=5)
    assert held_back and held_back[0].result(timeout=5).finished


def test_a_chunk_submitting_together_reaches_the_engine_with_no_other_chunk_between(
        host: EngineHost, engine: StandInEngine) -> None:
    """Another slot's requests wait for the turn: a chunk's prompts that share a prefix
    enter the engine one after another."""
    inside = threading.Event()
    others: list[Future[Any]] = []

    def other_slot() -> None:
        inside.wait(5)
        others.extend(host.submit(f"job:8:{i}:1", [1], _params()) for i in range(3))

    asking = threading.Thread(target=other_slot)
    asking.start()
    with host.together():
        mine = [host.submit("job:7:0:1", [1], _params())]
        inside.set()
        time.sleep(0.2)  # the other slot is submitting meanwhile
        mine += [host.submit(f"job:7:{i}:1", [1], _params()) for i in (1, 2)]
    asking.join(timeout=5)
    for future in mine + others:
        assert future.result(timeout=5).finished
    assert [r for r in engine.added if r.startswith("job:7:")] == engine.added[
        engine.added.index("job:7:0:1"):engine.added.index("job:7:0:1") + 3]


def test_a_chunk_submitting_together_waits_for_an_isolated_chunk_without_blocking_it(
        host: EngineHost) -> None:
    finished: list[bool] = []
    with host.solo("job:2"):
        asking = threading.Thread(target=lambda: finished.append(
            _together(host, "job:1").result(timeout=5).finished))
        asking.start()
        time.sleep(0.2)  # the other chunk waits for the solo one, holding its turn
        assert host.submit("job:2:1:1", [1], _params()).result(timeout=5).finished
        assert not finished
    asking.join(timeout=5)
    assert finished == [True]


def _together(host: EngineHost, tag: str) -> Future[Any]:
    with host.together():
        return host.submit(f"{tag}:1:1", [1], _params())


def test_the_host_counts_the_prompt_tokens_the_engine_found_in_its_prefix_cache(
        host: EngineHost) -> None:
    shared = list(range(40))  # two whole blocks of 16 shared, then each its own
    assert host.submit("job:0:1:1", [*shared, 100], _params()).result(timeout=5).finished
    assert host.submit("job:0:2:1", [*shared, 200], _params()).result(timeout=5).finished
    assert (host.prefix_cache.prompt_tokens, host.prefix_cache.cached_tokens) == (82, 32)
    assert host.prefix_cache.hit_rate == pytest.approx(32 / 82)
    assert "hit rate 0.390 (32 of 82 prompt tokens cached)" in str(host.prefix_cache)


def test_an_isolated_chunk_does_not_start_on_a_dead_engine(host: EngineHost) -> None:
    host._die(RuntimeError("engine core process gone"))
    with pytest.raises(EngineDead), host.solo("job:5.3"):
        pass


def test_a_worker_paused_longer_than_the_stall_limit_does_not_take_its_engine_for_stalled(
        tmp_path: Path) -> None:
    """A whole process stopped (SIGSTOP) and resumed: its engine step is timed from the
    resume, so an engine core that is fine is not killed."""
    script = tmp_path / "paused.py"
    script.write_text(PAUSED)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "stepping"
        proc.send_signal(signal.SIGSTOP)
        time.sleep(4.5)  # past the 1 s stall limit, and the watchdog's late-tick bound
        proc.send_signal(signal.SIGCONT)
        out, _ = proc.communicate("go\n", timeout=30)
    finally:
        proc.kill()
    assert out.split() == ["alive", "finished"]


PAUSED = """
import time
from types import SimpleNamespace
from standin_engine import StandInEngine, StandInLLM
from worker.engine import EngineHost

host = EngineHost(StandInLLM(StandInEngine(step_seconds=0.05, steps=100)), stall_seconds=1)
future = host.submit("job:0.1:1:1", [1], SimpleNamespace())
time.sleep(0.3)
print("stepping", flush=True)
input()
print("alive" if host.alive else "dead", flush=True)
print("finished" if future.result(timeout=20).finished else "?", flush=True)
host.stop()
"""
