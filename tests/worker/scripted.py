"""A stand-in engine host for fast tests of the logic around the engine: it answers each
request with what a script says, after a delay, from another thread (as the engine's
step thread does). The real engine is in tests/e2e."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

Script = Callable[[str, int], tuple[str, str, float]]


class ScriptedHost:
    """Answers each request with `script(prompt text, attempt)` -> (text, finish, delay)."""

    max_model_len = 2048

    def __init__(self, tokenizer: Any, script: Script) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.events: list[str] = []
        self.params: list[Any] = []
        self._lock = threading.Lock()
        self._turn = threading.RLock()

    @contextmanager
    def together(self) -> Iterator[None]:
        """As the real host: another thread's requests wait for this one's turn."""
        with self._turn:
            yield

    def submit(self, request_id: str, token_ids: list[int], params: Any, *,
               lora: str | None = None) -> Future[Any]:
        attempt = int(request_id.split(":")[3]) if ":judge:" not in request_id else 0
        text, finish, delay = self.script(self.tokenizer.decode(token_ids), attempt)
        with self._turn, self._lock:
            self.events.append(f"submit {request_id.split(':')[2]}#{attempt}")
            self.params.append(params)
        future: Future[Any] = Future()

        def deliver() -> None:
            time.sleep(delay)
            with self._lock:
                self.events.append(f"answer {request_id.split(':')[2]}#{attempt}")
            n = getattr(params, "n", 1) or 1
            future.set_result(SimpleNamespace(outputs=[SimpleNamespace(
                text=text, finish_reason=finish, token_ids=list(range(len(text.split()))),
                logprobs=None) for _ in range(n)]))

        threading.Thread(target=deliver, daemon=True).start()
        return future


