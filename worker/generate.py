"""Turn a chunk's items into outcomes on the engine host, checking every answer.

Every item's first request goes in at once (the engine batches them with other chunks'
items). As each answer comes back it is checked; one that falls short is asked again at
once, one step further along the ladder, so a retry joins the running batch and never
holds up the chunk's other items. A bad item fails alone. An engine that dies raises out
of here: the chunk is handed back and runs again elsewhere, and those lost answers are
not attempts (infrastructure retries never spend the quality budget).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

from vllm.exceptions import VLLMClientError

from quality import checks, ladder, semantic
from quality.checks import Answer, Verdict
from quality.ladder import Plan
from schemas.spec import JobSpec
from schemas.tables import ItemStatus
from worker.attempts import ItemRun, Outcome, Try
from worker.documents import DocumentRun, needs_split
from worker.engine import EngineHost
from worker.labels import label_probabilities
from worker.prompts import (
    Prompt,
    PromptTooLong,
    build,
    chat,
    encode_many,
    item_seed,
    messages_for,
    question,
    sampling_for,
)

LABEL_LOGPROBS = 20
# What an item's own request can be refused for: the item fails, its chunk goes on.
REFUSED = (PromptTooLong, KeyError, ValueError, TypeError, VLLMClientError)
# Sampling fields an attempt may carry into vLLM's SamplingParams.
GENERATE_FIELDS = ("temperature", "top_p", "max_tokens", "seed", "n", "stop",
                   "presence_penalty", "frequency_penalty", "repetition_penalty")


@dataclass
class Chunk:
    """What every item of one run shares."""

    host: EngineHost
    spec: JobSpec
    tag: str
    embedder: semantic.Embedder
    label_tokens: int

    @property
    def budget(self) -> int:
        """Answers per item: the first, and retries only when the job states a bar."""
        return self.spec.max_attempts if self.spec.checks else 1


def run_items(host: EngineHost, spec: JobSpec, items: list[tuple[int, str, dict[str, Any]]],
              tag: str, embedder: semantic.Embedder | None = None,
              timings: dict[str, float] | None = None) -> list[Outcome]:
    """With `timings`, adds the seconds spent outside the engine: preparing requests
    ("prepare"), and checking answers and asking again ("checks")."""
    started = time.perf_counter()
    waited = 0.0
    # Sampled decoding may spell a label in smaller pieces than its usual tokens, down to
    # one byte each: room for the longest spelling, the stop token ends it sooner.
    label_tokens = max((len(label.encode()) for label in spec.labels), default=0)
    chunk = Chunk(host, spec, tag, embedder or semantic.Embedder(), label_tokens)
    outcomes: list[Outcome] = []
    waiting: dict[Future[Any], tuple[ItemRun, str]] = {}

    def ask(run: ItemRun) -> Future[Any]:
        return _ask(chunk, run, None)

    def settle(run: ItemRun, outcome: Outcome) -> None:
        """An item is decided; a document's piece may lead to the next step instead."""
        run.settled = True
        if run.parent is None:
            outcomes.append(outcome)
            return
        more, whole = run.parent.done(run, outcome, ask)
        waiting.update({future: (part, "answer") for future, part in more})
        if whole is not None:
            outcomes.append(whole)

    encoded = encode_many(host.tokenizer, spec, [payload for _, _, payload in items])
    for (seq, key, payload), item_encoded in zip(items, encoded, strict=True):
        try:
            chosen = sampling_for(spec, payload)
            try:
                prompt: Prompt | None = build(host.tokenizer, spec, payload,
                                              host.max_model_len, chosen.max_tokens,
                                              item_encoded)
            except PromptTooLong:
                if "document" not in payload:
                    raise
                prompt = None
            if needs_split(payload, prompt, chosen.max_tokens, host.max_model_len):
                document = DocumentRun(seq, key, payload, chosen, spec, host)
                waiting.update({f: (part, "answer") for f, part in document.start(ask)})
            elif prompt is not None:
                run = ItemRun(seq, key, payload, chosen, prompt)
                waiting[ask(run)] = (run, "answer")
        except REFUSED as exc:
            outcomes.append(Outcome(seq, ItemStatus.FAILED, error=_reason(exc)))
    prepared = time.perf_counter()
    while waiting:
        before = time.perf_counter()
        done, _ = wait(waiting, return_when=FIRST_COMPLETED)
        waited += time.perf_counter() - before
        for future in done:
            run, purpose = waiting.pop(future)
            if run.settled:
                continue  # a sibling request (another judge criterion) already decided it
            refused = future.exception()
            if refused is not None:
                if not isinstance(refused, REFUSED):
                    raise refused
                settle(run, Outcome(run.seq, ItemStatus.FAILED,
                                    error=f"engine refused: {refused}", tries=run.tries))
                continue
            try:
                follow = _advance(chunk, run, purpose, future.result())
            except REFUSED as exc:  # a retry's request was refused
                settle(run, Outcome(run.seq, ItemStatus.FAILED, error=_reason(exc),
                                    tries=run.tries))
                continue
            if follow is None:
                settle(run, run.outcome(spec))
            else:
                waiting.update({f: (run, p) for f, p in follow})
    if timings is not None:
        timings["prepare"] = prepared - started
        timings["checks"] = time.perf_counter() - prepared - waited
    return sorted(outcomes, key=lambda o: o.item_seq)


def _advance(chunk: Chunk, run: ItemRun, purpose: str, result: Any
             ) -> list[tuple[Future[Any], str]] | None:
    """The item's next requests after `result` (none while it waits for others), or None
    when it is decided."""
    spec = chunk.spec
    if purpose.startswith("judge:"):
        output = result.outputs[0]
        run.judge_tokens += len(output.token_ids)
        step = output.logprobs[0] if output.logprobs else {}
        p_yes = label_probabilities(step, semantic.JUDGE_CHOICES,
                                    lambda t: chunk.host.tokenizer.decode([t]),
                                    chosen=output.text.strip())["Yes"]
        run.judge_scores[purpose.removeprefix("judge:")] = semantic.judge_score(p_yes)
        if len(run.judge_scores) < run.judge_asked:
            return []
        run.last.verdicts.append(semantic.judge_verdict(run.judge_scores,
                                                        spec.check("judge") or {}))
        return _retry_or_stop(chunk, run)
    attempt = run.last
    _fill(chunk, run, result)
    answer = Answer(attempt.output, attempt.finish_reason, attempt.completion_tokens,
                    attempt.samples or [], question(run.payload), attempt.label,
                    attempt.probabilities, spec.labels,
                    run.payload.get("json_schema") or spec.json_schema)
    declared = spec.check_list()
    if spec.kind == "classify" and spec.check("label") is None:
        declared = [("label", {}), *declared]  # a classification's answer is always a label
    attempt.verdicts = checks.run(declared, answer)
    if attempt.failed:
        return _retry_or_stop(chunk, run)
    relevance = spec.check("relevance")
    if relevance is not None:
        attempt.verdicts.append(semantic.relevance(chunk.embedder, answer.question,
                                                   attempt.output, relevance))
        if attempt.failed:
            return _retry_or_stop(chunk, run)
    if spec.check("judge") is not None:
        judged = _ask_judge(chunk, run)
        if judged:
            return judged
    return _retry_or_stop(chunk, run)


def _retry_or_stop(chunk: Chunk, run: ItemRun) -> list[tuple[Future[Any], str]] | None:
    last = run.last
    if not last.failed or len(run.tries) >= chunk.budget:
        return None
    room = chunk.host.max_model_len - len(run.prompt.token_ids)
    plan = ladder.next_attempt(chunk.spec, last.attempt, last.failed, last.sampling, room)
    last.next_reason = plan.reason
    return [(_ask(chunk, run, plan), "answer")]


def _ask(chunk: Chunk, run: ItemRun, plan: Plan | None) -> Future[Any]:
    """Submit the item's next attempt: the first when `plan` is None."""
    number = len(run.tries) + 1
    prompt = run.prompt
    if plan is not None and (plan.feedback or plan.instruction):
        prompt = _reworded(chunk, run, plan) or prompt
    sampling = _sampling(chunk, run, plan, number, prompt)
    # An OpenAI row's response_format is its own JSON Schema (schemas.rows), else the job's.
    params, recorded = _params(chunk, sampling, plan, run.payload.get("json_schema"))
    if chunk.spec.lora:
        recorded["lora"] = chunk.spec.lora  # results.sampling names the adapter that answered
    run.tries.append(Try(number, plan.step if plan else "first", prompt.text, recorded,
                         len(prompt.token_ids), piece=run.piece))
    request_id = f"{chunk.tag}:{run.seq}:{number}:{uuid.uuid4().hex[:8]}"
    if chunk.spec.lora:
        return chunk.host.submit(request_id, prompt.token_ids, params, lora=chunk.spec.lora)
    return chunk.host.submit(request_id, prompt.token_ids, params)


def _sampling(chunk: Chunk, run: ItemRun, plan: Plan | None, number: int, prompt: Prompt
              ) -> dict[str, Any]:
    """The attempt's sampling: the item's own for the first, then the last one's as the
    plan changes it, always with the attempt's own seed (reproducible run to run)."""
    if plan is None:
        sampling = run.chosen.model_dump(exclude_none=True)
    else:
        sampling = {k: v for k, v in run.last.sampling.items() if k in GENERATE_FIELDS}
        sampling["n"] = run.chosen.n
        sampling.update(plan.sampling)
        if plan.step == "replace_duplicates":
            limit = (chunk.spec.check("distinct") or {}).get("max_similarity", 0.9)
            sampling["n"] = max(len(checks.duplicates(run.last.samples or [], limit)), 1)
    sampling["seed"] = item_seed(run.chosen.seed, run.key, number - 1)
    room = chunk.host.max_model_len - len(prompt.token_ids)
    wanted = int(sampling.get("max_tokens", run.chosen.max_tokens))
    sampling["max_tokens"] = max(1, min(wanted, room))
    return sampling


def _params(chunk: Chunk, sampling: dict[str, Any], plan: Plan | None,
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


def _reworded(chunk: Chunk, run: ItemRun, plan: Plan) -> Prompt | None:
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
        messages += [{"role": "assistant", "content": ladder.quote(run.last.output)},
                     {"role": "user", "content": plan.feedback
                      + (" " + plan.instruction if plan.instruction else "")
                      + (f"\n\nThe request: {request}" if request else "")}]
    try:
        return chat(host.tokenizer, messages, host.max_model_len, run.chosen.max_tokens)
    except PromptTooLong:
        return None


def _ask_judge(chunk: Chunk, run: ItemRun) -> list[tuple[Future[Any], str]]:
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
             f"judge:{criterion}") for criterion, prompt in asked]


def _fill(chunk: Chunk, run: ItemRun, result: Any) -> None:
    spec, host, attempt = chunk.spec, chunk.host, run.last
    outputs = result.outputs
    attempt.completion_tokens = sum(len(o.token_ids) for o in outputs)
    attempt.finish_reason = outputs[0].finish_reason
    texts = [o.text for o in outputs]
    if attempt.step == "replace_duplicates":
        # The earlier samples that were distinct stay; the new ones take the others' place.
        earlier = run.tries[-2].samples or []
        limit = (spec.check("distinct") or {}).get("max_similarity", 0.9)
        dups = set(checks.duplicates(earlier, limit))
        texts = [s for i, s in enumerate(earlier) if i not in dups] + texts
    attempt.output = texts[0]
    if len(texts) > 1:
        attempt.samples = texts
    if spec.kind != "classify":
        return
    if attempt.step == "self_consistency":
        votes = Counter(t.strip() for t in texts if t.strip() in spec.labels)
        top = max(votes.values(), default=0)
        tied = [label for label in spec.labels if votes[label] == top and top]
        # A tie goes to the greedy answer's label when it is among the leaders.
        first = run.tries[0].label
        attempt.label = first if first in tied else (tied[0] if tied else None)
        attempt.probabilities = {label: round(votes[label] / len(texts), 6)
                                 for label in spec.labels}
        attempt.output = attempt.label or texts[0]
        return
    label = texts[0].strip()
    attempt.label = label if label in spec.labels else None
    step = outputs[0].logprobs[0] if outputs[0].logprobs else {}
    attempt.probabilities = label_probabilities(
        step, spec.labels, lambda t: host.tokenizer.decode([t]), chosen=label)
    # Greedy decoding takes the likeliest first token, but a label may begin with several
    # ("neg", "negative"), whose mass together can outweigh it: the answer is the label
    # the probabilities put first (measured: "positive" chosen at P 0.497 of two labels).
    best = max(spec.labels, key=attempt.probabilities.__getitem__)
    if attempt.label is not None and attempt.probabilities[best] > attempt.probabilities[
            attempt.label]:
        attempt.label = attempt.output = best


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"payload is missing {exc}"
    return str(exc)
