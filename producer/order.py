"""Prefix-aware order: a job's items are cut into chunks so that prompts sharing a leading
part (a document asked several questions, a long instruction with examples) run together,
and the engine's prefix cache computes that part once instead of once per scattered row.

At submit each row is keyed by hashes of its prompt's leading bytes at growing lengths
(`LEVELS`): bytes stand in for tokens, so the producer needs no tokenizer. Sorted by those
hashes level by level, rows that share a longer beginning land closer together, and rows
with equal keys keep their input order. The order is used only where it pays: a file
already grouped, or whose rows share nothing, keeps its own.
"""

from __future__ import annotations

import zlib
from array import array
from typing import Any

import numpy as np

# The leading bytes hashed, each level twice the one before: about 64 tokens to 16,384.
# A document after a shared instruction is told apart at the first level inside it,
# which it reaches if it is at least as long as what comes before it.
LEVELS = tuple(256 << k for k in range(9))
# How much closer (in levels shared with the row before, per row) the order must bring
# rows for the job to run in it instead of the input's own.
GAIN = 0.01


class Keys:
    """The rows' hashes, level by level, in input order (a million rows take 36 MB)."""

    def __init__(self) -> None:
        self.hashes = array("I")  # row after row, a hash a level

    def __len__(self) -> int:
        return len(self.hashes) // len(LEVELS)

    def add(self, payload: dict[str, Any]) -> None:
        data = leading_text(payload).encode()
        crc = zlib.crc32(data[:LEVELS[0]])
        if len(data) <= LEVELS[0]:  # most prompts: every level is the whole prompt
            self.hashes.extend((crc,) * len(LEVELS))
            return
        row = [crc]
        for start, end in zip(LEVELS, LEVELS[1:], strict=False):
            if start < len(data):
                crc = zlib.crc32(data[start:end], crc)  # running: the hash of data[:end]
            row.append(crc)
        self.hashes.extend(row)

    def chunks(self, size: int) -> np.ndarray | None:
        """Each row's chunk (by input position) in the prefix-grouped order, or None when
        the input's own order shares as much."""
        table = np.frombuffer(self.hashes, dtype=np.uint32).reshape(-1, len(LEVELS))
        levels = list(table.T)
        order = np.lexsort(levels[::-1])  # the first level first; stable: ties by input
        if _shared(levels, order) <= _shared(levels, None) + GAIN * len(self):
            return None
        chunk = np.empty(len(self), dtype=np.int64)
        chunk[order] = np.arange(len(self)) // size
        return chunk


def _shared(levels: list[np.ndarray], order: np.ndarray | None) -> int:
    """Over `order` (None: the input's), how many leading levels each row shares with the
    row before it, summed."""
    total, still = 0, None
    for hashes in levels:
        column = hashes if order is None else hashes[order]
        same = column[1:] == column[:-1]
        still = same if still is None else still & same
        total += int(still.sum())
    return total


def leading_text(payload: dict[str, Any]) -> str:
    """What the engine's prompt begins with, as far as a row decides it: its messages in
    order (the job's own system prompt and examples are the same for every row), its
    prompt, or a document's text."""
    if "messages" in payload:
        return "".join(f"\x1e{m['role']}\x1f{m['content']}" for m in payload["messages"])
    return str(payload.get("prompt") or payload.get("text") or "")
