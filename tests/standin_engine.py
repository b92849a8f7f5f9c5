"""A stand-in for vLLM's `LLM` and its engine, for fast tests of the engine host's own
logic (refusals, stalls, aborts, solo runs). It behaves as vLLM 0.32 does where the
host depends on it: `add_request` raises VLLMValidationError (not a ValueError) for a
grammar it cannot compile, `step` blocks while the engine core is stopped,
`abort_request` drops requests, and each output counts its prompt's tokens found in
the prefix cache. The real engine is in tests/e2e."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from vllm.exceptions import VLLMValidationError

BLOCK = 16  # tokens of a KV-cache block (vLLM's default on GPUs; 128 on the CPU)


class StandInEngine:
    def __init__(self, step_seconds: float = 0.01, steps: int = 1) -> None:
        self.step_seconds = step_seconds
        # Steps each request takes to finish (its tokens, one a step).
        self.steps = steps
        self.running: dict[str, int] = {}
        self.aborted: list[str] = []
        self.added: list[str] = []
        # Each request's prompt and its tokens found in the prefix cache; the cached blocks.
        self.prompts: dict[str, tuple[list[int], int]] = {}
        self.blocks: set[tuple[int, ...]] = set()
        # Cleared: the engine core is stopped (SIGSTOP) and `step` waits for it forever.
        self.core_running = threading.Event()
        self.core_running.set()
        self.model_config = SimpleNamespace(max_model_len=2048)
        self.vllm_config = SimpleNamespace(
            lora_config=None, scheduler_config=SimpleNamespace(max_num_seqs=8))

    def add_request(self, request_id: str, prompt: Any, params: Any,
                    lora_request: Any = None) -> str:
        regex = getattr(getattr(params, "structured_outputs", None), "regex", None) or ""
        if "(?=" in regex:
            raise VLLMValidationError("Grammar error: look-around, including look-ahead and "
                                      "look-behind, is not supported")
        self.running[request_id] = self.steps
        self.added.append(request_id)
        ids = list(prompt["prompt_token_ids"])
        self.prompts[request_id] = (ids, self._cached(ids))
        self.blocks.update(tuple(ids[:end]) for end in range(BLOCK, len(ids) + 1, BLOCK))
        return request_id

    def _cached(self, ids: list[int]) -> int:
        """As vLLM's prefix cache counts: the whole blocks of the prompt's beginning that
        an earlier prompt computed (never the whole prompt: its last token is computed)."""
        cached = 0
        for end in range(BLOCK, len(ids), BLOCK):
            if tuple(ids[:end]) not in self.blocks:
                break
            cached = end
        return cached

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def step(self) -> list[Any]:
        self.core_running.wait()
        time.sleep(self.step_seconds)
        self.running = {rid: left - 1 for rid, left in self.running.items()}
        done = [rid for rid, left in self.running.items() if left <= 0]
        for rid in done:
            del self.running[rid]
        return [SimpleNamespace(
            request_id=rid, finished=True, prompt_token_ids=self.prompts[rid][0],
            num_cached_tokens=self.prompts[rid][1], outputs=[
                SimpleNamespace(text="ok", token_ids=[1], finish_reason="stop", logprobs=None)])
            for rid in done]

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        for rid in request_ids:
            self.running.pop(rid, None)
            self.aborted.append(rid)


class StandInLLM:
    def __init__(self, engine: StandInEngine | None = None) -> None:
        self.llm_engine = engine or StandInEngine()

    def get_tokenizer(self) -> Any:
        return None
