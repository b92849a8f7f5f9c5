"""The retry policy: whether an answer that fell short is asked for again, and how.

An item gets `max_answers` answers at most. Each retry is one step further along the
job's ladder, and every step is shaped by what failed: a loop gets a repetition penalty,
a cut-off answer a larger budget and an explicit length instruction, anything gets a new
seed and a little more temperature (a greedy job would otherwise give the same answer
again). Two failures have their own remedy whatever the ladder says: an unconfident label
is asked for k times and decided by majority (self-consistency), and near-duplicate
samples are replaced one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from quality.checks import Verdict

if TYPE_CHECKING:
    from schemas.spec import JobSpec


class Step(StrEnum):
    """What produced an answer; its value is what `attempts.step` stores."""

    FIRST = "first"
    # The job's ladder (schemas.spec.Step names these three).
    RESAMPLE = "resample"
    FEEDBACK = "feedback"
    CONSTRAIN = "constrain"
    # Remedies for one failure, whatever the ladder says.
    REPLACE_DUPLICATES = "replace_duplicates"
    SELF_CONSISTENCY = "self_consistency"
    # A long document's label, its pieces' labels weighed together (worker.documents).
    AGGREGATE = "aggregate"


# A retry of a greedy answer samples at this temperature: enough to break determinism.
RETRY_TEMPERATURE = 0.3
# Each further retry samples this much warmer (see `warmer` for the measurement)...
TEMPERATURE_STEP = 0.1
# ...up to this, past which answers wander off the request.
MAX_TEMPERATURE = 1.0
# The sampling's own default (schemas.spec.Sampling), for a last sampling that names none.
DEFAULT_TEMPERATURE = 0.7
# A loop's retry penalizes repeats more each time, up to where answers stay fluent.
REPETITION_PENALTY_STEP, MAX_REPETITION_PENALTY = 0.15, 1.6
FREQUENCY_PENALTY_STEP, MAX_FREQUENCY_PENALTY = 0.3, 2.0
# A cut-off answer's retry gets this many times its token budget (the context allowing).
TRUNCATED_BUDGET_FACTOR = 2
# The length instruction asks for this many words per token of the last budget, so the
# answer ends within it; never fewer words than MIN_INSTRUCTED_WORDS.
WORDS_PER_TOKEN = 0.6
MIN_INSTRUCTED_WORDS = 10
# Self-consistency's samples when the confidence check names none, and their temperature
# (warm enough that k samples can disagree).
SELF_CONSISTENCY_SAMPLES = 5
RERUN = "run again (nightshift retry)"
SELF_CONSISTENCY_TEMPERATURE = 0.7
# Of the failed answer, at most this much is quoted back in a feedback turn.
QUOTE_CHARS = 1200


class Answered(Protocol):
    """What the policy reads of the last answer (worker.attempts.Try)."""

    attempt: int
    sampling: dict[str, Any]

    @property
    def failed(self) -> list[Verdict]: ...


@dataclass
class Plan:
    step: Step
    # Changes to the item's sampling (temperature, max_tokens, penalties, n).
    sampling: dict[str, Any] = field(default_factory=dict)
    # Appended to the item's last user turn: a length instruction after truncation.
    instruction: str | None = None
    # The conversation continues with the failed answer and this user turn.
    feedback: str | None = None
    # Structured output the engine must follow: {"json": schema} / {"json_object": True} /
    # {"regex": pattern} / {"choice": labels}.
    constrain: dict[str, Any] | None = None
    reason: str = ""


def max_answers(spec: JobSpec) -> int:
    """Answers per item: the first, and retries only when the job states a bar."""
    return spec.max_attempts if spec.checks else 1


def decide(spec: JobSpec, last: Answered, *, answered: int, room: int) -> Plan | None:
    """The plan for the item's next answer, or None when it stops: `last` passed, the
    item had `answered` all it may, or a check failed that no answer could pass. `room`
    is the most new tokens its prompt leaves."""
    if (not last.failed or answered >= max_answers(spec)
            or not all(v.retryable for v in last.failed)):
        return None
    return next_attempt(spec, last.attempt, last.failed, last.sampling, room)


def reasons(failed: list[Verdict]) -> str:
    return "; ".join(f"{v.name}: {v.reason}" if v.reason else v.name for v in failed)


def reopened(spec: JobSpec, sampling: dict[str, Any]) -> Plan:
    """The plan for the first answer of an item run again (`nightshift retry`): asked as a
    retry is, since asking as before would give the same answer: a little warmer, or for a
    label, self-consistency votes."""
    if spec.kind == "classify":
        samples = (spec.check("confidence") or {}).get("samples", SELF_CONSISTENCY_SAMPLES)
        return Plan(Step.SELF_CONSISTENCY,
                    {"n": samples, "temperature": SELF_CONSISTENCY_TEMPERATURE}, reason=RERUN)
    return Plan(Step.RESAMPLE, warmer(sampling), reason=RERUN)


def next_attempt(spec: JobSpec, failed_attempt: int, failed: list[Verdict],
                 last: dict[str, Any], budget: int) -> Plan:
    """The plan for attempt `failed_attempt + 1`. `last` is the sampling that failed and
    `budget` the most new tokens the item's prompt leaves room for."""
    names = {v.name for v in failed}
    why = reasons(failed)
    if spec.kind == "classify":
        samples = (spec.check("confidence") or {}).get("samples", SELF_CONSISTENCY_SAMPLES)
        # Self-consistency: k constrained samples, decided by majority.
        return Plan(Step.SELF_CONSISTENCY,
                    {"n": samples, "temperature": SELF_CONSISTENCY_TEMPERATURE}, reason=why)
    if names == {"distinct"}:
        return Plan(Step.REPLACE_DUPLICATES, warmer(last), reason=why)

    step = Step(spec.ladder[min(failed_attempt - 1, len(spec.ladder) - 1)])
    sampling = warmer(last)
    plan = Plan(step, sampling, reason=why)
    if "no_repetition" in names:
        sampling["repetition_penalty"] = min(
            last.get("repetition_penalty", 1.0) + REPETITION_PENALTY_STEP, MAX_REPETITION_PENALTY)
        sampling["frequency_penalty"] = min(
            last.get("frequency_penalty", 0.0) + FREQUENCY_PENALTY_STEP, MAX_FREQUENCY_PENALTY)
    if "not_truncated" in names or _too_long(spec, failed):
        tokens = int(last.get("max_tokens", budget))
        if "not_truncated" in names:
            sampling["max_tokens"] = min(tokens * TRUNCATED_BUDGET_FACTOR, budget)
        words = max(int(tokens * WORDS_PER_TOKEN), MIN_INSTRUCTED_WORDS)
        plan.instruction = f"Answer completely in at most {words} words."
    if step == Step.FEEDBACK:
        plan.feedback = ("Your previous answer fell short of the bar: " + why +
                         ". Answer the request again, fixing that.")
    elif step == Step.CONSTRAIN:
        plan.constrain = _constraint(spec, names)
    return plan


def warmer(last: dict[str, Any]) -> dict[str, Any]:
    """A new seed comes with the attempt number; a little more temperature breaks a greedy
    answer's determinism without wandering off. Little: on the demo model, retries of a
    greedy job at 0.3 (then +0.1) rather than 0.6 (then +0.2) left 13 of 100 items failing
    a structural or relevance check after three attempts instead of 27 (bench.quality)."""
    t = float(last.get("temperature", DEFAULT_TEMPERATURE))
    if t < RETRY_TEMPERATURE:
        return {"temperature": RETRY_TEMPERATURE}
    return {"temperature": min(t + TEMPERATURE_STEP, MAX_TEMPERATURE)}


def _too_long(spec: JobSpec, failed: list[Verdict]) -> bool:
    bound = (spec.check("length") or {}).get("max")
    return bound is not None and any(v.name == "length" and (v.score or 0) > bound
                                     for v in failed)


def _constraint(spec: JobSpec, names: set[str]) -> dict[str, Any] | None:
    if spec.json_schema is not None:
        return {"json": spec.json_schema}
    if "json" in names:
        return {"json_object": True}
    regex = spec.check("regex")
    if "regex" in names and regex is not None:
        return {"regex": regex["pattern"]}
    return None


def quote(text: str) -> str:
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + " ..."
