"""One item's attempts: what each answer was, how it measured, which one the item keeps.

The final result points at its chosen attempt: the first that passed the bar, else the
best (`Try.rank`), marked as failing quality with its reasons. Every attempt becomes a
row of the `attempts` ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quality.checks import Verdict
from quality.metrics import reference_metrics
from quality.retries import Step, reasons
from schemas.spec import JobSpec, Sampling
from schemas.tables import ItemStatus, Quality
from worker.prompts import Prompt


@dataclass
class Try:
    """One answer the engine gave for the item (a row of `attempts`)."""

    attempt: int
    step: Step
    prompt: str
    sampling: dict[str, Any]
    prompt_tokens: int
    output: str = ""
    samples: list[str] | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    next_reason: str | None = None
    # 0: the item's own answer; n > 0: an answer for the document's part n.
    piece: int = 0

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.passed is False]

    def rank(self) -> tuple[bool, int, float, int]:
        """An answer before a request the engine refused (it has none); then fewest failed
        checks; among those, the judge's highest score (an answer it scored passed every
        check before it), then the later attempt. A retry is not always better: in
        bench.quality's ledger (256 prompts, the demo model) the judge scored retries 2.4
        on average and first answers 2.9."""
        judged = next((v.score for v in self.verdicts if v.name == "judge"
                       and v.score is not None), 0.0)
        answered = not any(v.name == "engine" for v in self.verdicts)
        return answered, -len(self.failed), judged, self.attempt

    def ledger_row(self, job_id: str, item_seq: int, worker: str) -> dict[str, Any]:
        return {"job_id": job_id, "item_seq": item_seq, "piece": self.piece,
                "attempt": self.attempt,
                "step": self.step, "prompt": self.prompt, "sampling": self.sampling,
                "output": self.output, "samples": self.samples, "label": self.label,
                "probabilities": self.probabilities, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "checks": [v.as_dict() for v in self.verdicts],
                "passed": not self.failed, "next_reason": self.next_reason, "worker": worker}


@dataclass
class Outcome:
    """What becomes one row of `results` (and the item's rows of `attempts`)."""

    item_seq: int
    status: str
    output: str | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    samples: list[str] | None = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1
    attempt: int | None = None
    quality: str | None = None
    checks: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    pieces: int | None = None
    tries: list[Try] = field(default_factory=list)
    # A long document's rows of `pieces` (map pieces and reduce steps).
    parts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ItemRun:
    """An item between its first request and its outcome."""

    seq: int
    key: str
    payload: dict[str, Any]
    chosen: Sampling
    prompt: Prompt
    tries: list[Try] = field(default_factory=list)
    # Tokens the judge generated about this item's answers (cost, not answer).
    judge_tokens: int = 0
    # The last answer's judge: criteria asked, and the 1-5 scores that came back so far.
    judge_asked: int = 0
    judge_scores: dict[str, float] = field(default_factory=dict)
    # Decided: requests of its still in flight (other judge criteria) are ignored.
    settled: bool = False
    # A part of a long document: the document it belongs to and its part number.
    parent: Any = None
    piece: int = 0
    # The attempts earlier runs of the item made (nightshift retry): its own come after.
    earlier: int = 0

    @property
    def last(self) -> Try:
        return self.tries[-1]

    def outcome(self, spec: JobSpec) -> Outcome:
        chosen = next((t for t in self.tries if not t.failed), None) or max(
            self.tries, key=Try.rank)
        quality, status, error = judgement(spec, chosen)
        if error and len(self.tries) > 1:
            earlier = f" (and {self.earlier} before)" if self.earlier else ""
            error = f"failed quality after {len(self.tries)} attempts{earlier}: {error}"
            refused = [t for t in self.tries if t is not chosen and not t.rank()[0]]
            if refused:
                error += (f"; the engine refused {len(refused)} of them: "
                          f"{reasons(refused[-1].failed)}")
        return Outcome(
            self.seq, status, output=chosen.output, label=chosen.label,
            probabilities=chosen.probabilities, samples=chosen.samples, error=error,
            finish_reason=chosen.finish_reason,
            prompt_tokens=sum(t.prompt_tokens for t in self.tries),
            completion_tokens=sum(t.completion_tokens for t in self.tries) + self.judge_tokens,
            prompt=chosen.prompt, sampling=chosen.sampling,
            attempts=self.earlier + len(self.tries),
            attempt=chosen.attempt, quality=quality,
            checks=[v.as_dict() for v in chosen.verdicts] if spec.checks else None,
            metrics=reference_metrics(spec.kind, chosen.output, chosen.label,
                                      self.payload.get("reference")),
            tries=self.tries)


def judgement(spec: JobSpec, chosen: Try) -> tuple[str | None, str, str | None]:
    """(quality, item status, error). An answer below the bar fails with its reasons; a
    label that is only unconfident is kept, for review."""
    failed = chosen.failed
    if not spec.checks:
        return None, (ItemStatus.FAILED if failed else ItemStatus.SUCCEEDED), (
            reasons(failed) if failed else None)
    if not failed:
        return Quality.PASSED, ItemStatus.SUCCEEDED, None
    if {v.name for v in failed} == {"confidence"}:
        return Quality.NEEDS_REVIEW, ItemStatus.SUCCEEDED, None
    return Quality.FAILED, ItemStatus.FAILED, reasons(failed)
