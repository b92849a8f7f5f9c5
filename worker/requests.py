"""What an attempt asks of the engine: its prompt (reworded for a retry), its sampling
(seeded, shaped by the retry policy's plan), structured output where a format is required; and
the judge's questions about an answer. Each request joins the engine's running batch and
comes back as a future; worker.generate decides what each answer leads to.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from quality import checks, retries, semantic
from quality.checks import Verdict
from quality.retries import Plan, Step
from schemas.spec import JobSpec
from worker.attempts import ItemRun, Try
from worker.engine import EngineHost
from worker.prompts import Prompt, PromptTooLong, chat, item_seed, messages_for, question

LABEL_LOGPROBS = 20
# Sampling fields an attempt may carry into vLLM's SamplingParams.
GENERATE_FIELDS = ("temperature", "top_p", "max_tokens", "seed", "n", "stop",
                   "presence_penalty", "frequency_penalty", "repetition_penalty")


@dataclass
class ChunkRun:
    """What every item of one run of a chunk shares."""

    host: EngineHost
    spec: JobSpec
    tag: str
    embedder: semantic.Embedder
    label_tokens: int
    # By item seq, the attempts earlier runs made (nightshift retry); most items: none.
    earlier: dict[int, int]


@dataclass(frozen=True)
class Purpose:
    """What a request in flight asks: the item's answer, or the judge's score on one
    criterion of it."""

    criterion: str | None = None

    @property
    def judging(self) -> bool:
        return self.criterion is not None


ANSWER = Purpose()


def ask(chunk: ChunkRun, run: ItemRun, plan: Plan | None) -> Future[Any]:
    """Submit the item's next attempt: the first when `plan` is None (for an item run
    again, the plan of `retries.reopened`)."""
    number = run.earlier + len(run.tries) + 1
    if plan is None and run.earlier:
        plan = retries.reopened(chunk.spec, run.chosen.model_dump(exclude_none=True))
    prompt = run.prompt
    if plan is not None and (plan.feedback or plan.instruction):
        prompt = _reworded(chunk, run, plan) or prompt
    sampling = _sampling(chunk, run, plan, number, prompt)
    # An OpenAI row's response_format is its own JSON Schema (schemas.rows), else the job's.
    params, recorded = _params(chunk, sampling, plan, item_schema=run.payload.get("json_schema"))
    if chunk.spec.lora:
        recorded["lora"] = chunk.spec.lora  # results.sampling names the adapter that answered
    run.tries.append(Try(number, plan.step if plan else Step.FIRST, prompt.text, recorded,
                         len(prompt.token_ids), piece=run.piece))
    request_id = f"{chunk.tag}:{run.seq}:{number}:{uuid.uuid4().hex[:8]}"
    return chunk.host.submit(request_id, prompt.token_ids, params, lora=chunk.spec.lora)


def _sampling(chunk: ChunkRun, run: ItemRun, plan: Plan | None, number: int, prompt: Prompt
              ) -> dict[str, Any]:
    """The attempt's sampling: the item's own for the first, then the last one's as the
    plan changes it, always with the attempt's own seed (reproducible run to run)."""
    own = run.chosen.model_dump(exclude_none=True)
    if plan is None:
        sampling = own
    else:  # after the last answer, or the item's own when this run has none yet (retried)
        base = run.last.sampling if run.tries else own
        sampling = {k: v for k, v in base.items() if k in GENERATE_FIELDS}
        sampling["n"] = run.chosen.n
        sampling.update(plan.sampling)
        if plan.step == Step.REPLACE_DUPLICATES:
            limit = (chunk.spec.check("distinct") or {}).get("max_similarity", 0.9)
            sampling["n"] = max(len(checks.duplicates(run.last.samples or [], limit)), 1)
    sampling["seed"] = item_seed(run.chosen.seed, run.key, attempt=number - 1)
    room = chunk.host.max_model_len - len(prompt.token_ids)
    wanted = int(sampling.get("max_tokens", run.chosen.max_tokens))
    sampling["max_tokens"] = max(1, min(wanted, room))
    return sampling


def _params(chunk: ChunkRun, sampling: dict[str, Any], plan: Plan | None, *,
            item_schema: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """vLLM parameters for one attempt, and what of them the ledger records."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    spec = chunk.spec
    if spec.kind == "classify":
        # Greedy over the constrained label set, its probabilities from the first step; a
        # self-consistency attempt samples k labels instead.
        n = int(sampling.get("n", 1)) if plan is not None else 1
        temperature = float(sampling.get("temperature", 0.7)) if n > 1 else 0.0
        recorded: dict[str, Any] = {"temperature": temperature, "seed": sampling["seed"],
                                    "n": n, "labels": spec.labels}
        return SamplingParams(
            temperature=temperature, n=n, max_tokens=chunk.label_tokens + 2,
            seed=sampling["seed"], logprobs=LABEL_LOGPROBS,
            structured_outputs=StructuredOutputsParams(choice=spec.labels)), recorded
    kwargs = {k: v for k, v in sampling.items() if k in GENERATE_FIELDS and v is not None}
    recorded = dict(kwargs)
    constrain = plan.constrain if plan is not None else None
    schema = item_schema or spec.json_schema
    if constrain is None and schema is not None:
        constrain = {"json": schema}
    if constrain is not None:
        kwargs["structured_outputs"] = StructuredOutputsParams(**constrain)
        recorded["constrained"] = next(iter(constrain))
    return SamplingParams(**kwargs), recorded


def _reworded(chunk: ChunkRun, run: ItemRun, plan: Plan) -> Prompt | None:
    """The item's conversation with a length instruction and/or the failed answer and the
    reasons it fell short; None when that no longer fits the context."""
    spec, host = chunk.spec, chunk.host
    if "prompt" in run.payload and run.payload.get("raw"):
        return None  # a raw completion prompt has no turns to add to
    messages = [dict(m) for m in messages_for(spec, run.payload)]
    if plan.instruction:
        messages[-1]["content"] += "\n\n" + plan.instruction
    if plan.feedback:
        # The request is said again last: a small model loses it behind its own answer and
        # answers the feedback instead (measured: 19 of 42 such retries went off-topic).
        request = question(run.payload)
        messages += [{"role": "assistant", "content": retries.quote(run.last.output)},
                     {"role": "user", "content": plan.feedback
                      + (" " + plan.instruction if plan.instruction else "")
                      + (f"\n\nThe request: {request}" if request else "")}]
    try:
        return chat(host.tokenizer, messages, host.max_model_len, run.chosen.max_tokens)
    except PromptTooLong:
        return None


def ask_judge(chunk: ChunkRun, run: ItemRun) -> list[tuple[Future[Any], Purpose]]:
    """One yes/no request per criterion (quality.semantic); none when they do not fit."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    attempt, host = run.last, chunk.host
    answers = attempt.samples or [attempt.output]
    criteria = semantic.judge_criteria(chunk.spec.check("judge") or {}, len(answers))
    asked = []
    for criterion in criteria:
        messages = semantic.judge_messages(question(run.payload), answers, criterion)
        try:
            prompt = chat(host.tokenizer, messages, host.max_model_len, 2)
        except PromptTooLong:
            attempt.verdicts.append(Verdict("judge", None, None,
                                            "not judged: request and answer exceed the context"))
            return []
        asked.append((criterion, prompt))
    run.judge_scores, run.judge_asked = {}, len(asked)
    params = SamplingParams(temperature=0.0, max_tokens=2, logprobs=LABEL_LOGPROBS,
                            structured_outputs=StructuredOutputsParams(
                                choice=semantic.JUDGE_CHOICES))
    tag = f"{chunk.tag}:{run.seq}:{attempt.attempt}:judge"
    return [(host.submit(f"{tag}:{criterion}:{uuid.uuid4().hex[:8]}", prompt.token_ids, params),
             Purpose(criterion)) for criterion, prompt in asked]
