"""A poison item (one that kills its worker every time) fails alone, after bounded tries.

The engine here is a stand-in whose "crash" is an exception the chunk runner cannot
catch usefully, as a real worker death cannot be; the leases, tries and results are
the real SQL ones.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from conftest import Stack

from producer.submit import submit
from schemas.settings import load
from schemas.spec import JobSpec
from worker import leases
from worker.chunks import Runtime, run_chunk
from worker.leases import ISOLATE_FROM_DELIVERY, MAX_ITEM_DEATHS


class WorkerDied(BaseException):
    """Stands for the process dying: nothing after it in the worker runs."""


class CrashingHost:
    """Answers every prompt, except that any prompt containing POISON kills the 'worker'."""

    max_model_len = 2048

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.started: list[str] = []

    def solo(self, tag: str) -> contextlib.AbstractContextManager[None]:
        """Requests here run one at a time anyway."""
        return contextlib.nullcontext()

    def together(self) -> contextlib.AbstractContextManager[None]:
        """One thread submits here."""
        return contextlib.nullcontext()

    def submit(self, request_id: str, token_ids: list[int], params: Any, *,
               lora: str | None = None) -> Future[Any]:
        text = self.tokenizer.decode(token_ids)
        self.started.append(text)
        if "POISON" in text:
            raise WorkerDied
        done: Future[Any] = Future()
        done.set_result(SimpleNamespace(outputs=[SimpleNamespace(
            text="fine", finish_reason="stop", token_ids=[1, 2], logprobs=None)]))
        return done


def test_a_poison_item_fails_after_bounded_tries_and_its_neighbours_succeed(
        stack: Stack, tmp_path: Path, tokenizer: Any) -> None:
    prompts = ["one", "two POISON", "three", "four"]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"i{k}", "prompt": p}) + "\n"
                            for k, p in enumerate(prompts)))
    settings = load(database_url=stack.db_url, broker_url=stack.broker_url)
    job = submit(settings, JobSpec(chunk_size=4), path).job_id
    host = CrashingHost(tokenizer)
    beat = leases.Heartbeat(stack.db_url, "w", ttl=60)
    rt = Runtime(host, stack.db_url, "w", beat)  # type: ignore[arg-type]
    try:
        outcomes = []
        for _ in range(ISOLATE_FROM_DELIVERY + MAX_ITEM_DEATHS):  # batch runs, then isolated
            try:
                outcomes.append(run_chunk(rt, job, 0))
                break
            except WorkerDied:
                outcomes.append("died")
    finally:
        beat.stop()

    # Deaths in the batch runs (no item to blame yet), then one per isolated try.
    deaths = ISOLATE_FROM_DELIVERY - 1 + MAX_ITEM_DEATHS
    assert outcomes == ["died"] * deaths + ["isolated"]
    results = {r["id"]: r for r in map(json.loads, _results(stack, job))}
    assert results["i1"]["status"] == "failed"
    assert results["i1"]["error"] == (
        f"poison item: a worker died while running it {MAX_ITEM_DEATHS} times")
    assert all(results[k]["status"] == "succeeded" for k in ("i0", "i2", "i3"))
    assert sum("POISON" in p for p in host.started) == deaths
    status = json.loads(_cli(stack, "status", job, "--json"))
    assert (status["state"], status["succeeded"], status["failed"]) == ("completed", 3, 1)


def _cli(stack: Stack, *args: str) -> str:
    from click.testing import CliRunner

    from producer.cli import cli

    result = CliRunner().invoke(cli, [*args, "--database-url", stack.db_url])
    assert result.exit_code == 0, result.output
    return result.output


def _results(stack: Stack, job: str) -> list[str]:
    return _cli(stack, "results", job).splitlines()
