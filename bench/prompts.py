"""The benchmark's prompt file: OpenAI batch chat requests, greedy, bounded length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUBJECTS = ["the ocean", "a bicycle", "the moon", "coffee", "a library", "volcanoes",
            "honey bees", "the internet", "a lighthouse", "winter", "chess", "bread",
            "electric cars", "a rainforest", "the piano", "recycling"]
ASKS = ["Explain {s} to a child.", "Write a short poem about {s}.",
        "Give three facts about {s}.", "Describe {s} in a paragraph.",
        "What is the history of {s}?", "List pros and cons of {s}.",
        "Write a short story that involves {s}.", "Why do people like {s}?"]


def make_batch_file(path: Path, n: int = 256, max_tokens: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            ask = ASKS[i % len(ASKS)].format(s=SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
            body = {"model": "smollm2-135m-instruct", "max_tokens": max_tokens,
                    "temperature": 0, "messages": [{"role": "user", "content": ask}]}
            fh.write(json.dumps({"custom_id": f"bench-{i}", "method": "POST",
                                 "url": "/v1/chat/completions", "body": body}) + "\n")
    return path


def read_chat_requests(path: str | Path) -> tuple[list[list[dict[str, Any]]], int]:
    conversations, max_tokens = [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            body = json.loads(line)["body"]
            conversations.append(body["messages"])
            max_tokens = max(max_tokens, body.get("max_tokens") or
                             body.get("max_completion_tokens") or 128)
    return conversations, max_tokens
